"""The in-memory Batch API plays each outcome the local service can, on a manual clock."""

from __future__ import annotations

import io
from pathlib import Path

import orjson
import pytest

from batch_pipeline.core.backends.base import (
    BackendError,
    NotFound,
    ServiceUnreachable,
    TransientBackendError,
    is_transient_batch_failure,
)
from batch_pipeline.core.backends.memory import InMemoryBatchBackend, ManualClock
from batch_pipeline.core.types import BatchInfo, BatchStatus
from batch_pipeline.local_api.errors import fault_error_body
from batch_pipeline.local_api.responders import EchoResponder

CHAT = "/v1/chat/completions"
BODIES = {
    CHAT: lambda text: {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}]},
    "/v1/responses": lambda text: {"model": "gpt-4o-mini", "input": text},
    "/v1/embeddings": lambda text: {"model": "text-embedding-3-small", "input": text},
    "/v1/completions": lambda text: {"model": "gpt-3.5-turbo-instruct", "prompt": text},
    "/v1/moderations": lambda text: {"model": "omni-moderation-latest", "input": text},
}


def request(custom_id: str, text: str, endpoint: str = CHAT, **changes: object) -> dict:
    line = {"custom_id": custom_id, "method": "POST", "url": endpoint}
    return {**line, "body": BODIES[endpoint](text), **changes}


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def backend(clock: ManualClock) -> InMemoryBatchBackend:
    return InMemoryBatchBackend(clock=clock, completion_window_seconds=60)


def create(
    backend: InMemoryBatchBackend, tmp_path: Path, lines: list[dict], endpoint: str = CHAT
) -> BatchInfo:
    content = io.BytesIO(b"".join(orjson.dumps(line) + b"\n" for line in lines))
    uploaded = backend.upload_file(content, "input.jsonl")
    return backend.create_batch(input_file_id=uploaded.id, endpoint=endpoint, metadata={})


def result_lines(backend: InMemoryBatchBackend, batch: BatchInfo) -> dict[str, tuple[str, dict]]:
    """custom_id -> (the file it is in, its line)."""
    found = {}
    for kind, file_id in (("output", batch.output_file_id), ("error", batch.error_file_id)):
        if file_id:
            buffer = io.BytesIO()
            backend.download_file(file_id, buffer)
            for line in buffer.getvalue().splitlines():
                parsed = orjson.loads(line)
                found[parsed["custom_id"]] = (kind, parsed)
    return found


@pytest.mark.parametrize("endpoint", list(BODIES))
def test_each_endpoint_is_answered_as_the_local_services_echo_answers(
    backend, tmp_path, endpoint
) -> None:
    batch = create(backend, tmp_path, [request("a", "hello there", endpoint)], endpoint)
    assert batch.status is BatchStatus.VALIDATING
    done = backend.retrieve_batch(batch.id)
    assert done.status is BatchStatus.COMPLETED and done.error_file_id is None
    kind, line = result_lines(backend, done)["a"]
    assert kind == "output" and line["response"]["status_code"] == 200
    key = line["id"].removeprefix("batch_req_")  # the responder's ids are made from it
    status, expected = EchoResponder().respond(endpoint, BODIES[endpoint]("hello there"), key)
    assert status == 200

    def timeless(body: dict) -> dict:
        return {k: v for k, v in body.items() if k not in ("created", "created_at")}

    assert timeless(line["response"]["body"]) == timeless(expected)
    usage = expected.get("usage", {})
    assert done.input_tokens == usage.get("prompt_tokens", usage.get("input_tokens", 0))


def test_fail_triggers_answer_4xx_and_5xx_in_the_error_file(backend, tmp_path) -> None:
    lines = [request("ok", "fine"), request("bad", "<<fail:400>>"), request("down", "<<fail:503>>")]
    done = backend.retrieve_batch(create(backend, tmp_path, lines).id)
    assert done.status is BatchStatus.COMPLETED
    assert (done.request_counts.completed, done.request_counts.failed) == (1, 2)
    found = result_lines(backend, done)
    assert found["ok"][0] == "output"
    for custom_id, status in (("bad", 400), ("down", 503)):
        kind, line = found[custom_id]
        assert kind == "error" and line["response"]["status_code"] == status
        assert line["response"]["body"] == fault_error_body(status)


def test_a_hanging_request_expires_at_the_end_of_the_window_and_not_before(
    backend, clock, tmp_path
) -> None:
    batch = create(backend, tmp_path, [request("ok", "fine"), request("stuck", "<<hang>>")])
    clock.advance(59)
    running = backend.retrieve_batch(batch.id)
    assert running.status is BatchStatus.IN_PROGRESS
    assert (running.request_counts.completed, running.output_file_id) == (1, None)
    clock.advance(1)
    expired = backend.retrieve_batch(batch.id)
    assert expired.status is BatchStatus.EXPIRED
    found = result_lines(backend, expired)
    assert found["ok"][0] == "output"
    assert found["stuck"][0] == "error" and found["stuck"][1]["error"]["code"] == "batch_expired"


def test_a_slow_request_is_answered_after_its_seconds(backend, clock, tmp_path) -> None:
    batch = create(backend, tmp_path, [request("later", "<<slow:5>>")])
    clock.advance(4.9)
    assert backend.retrieve_batch(batch.id).status is BatchStatus.IN_PROGRESS
    clock.advance(0.1)
    assert backend.retrieve_batch(batch.id).status is BatchStatus.COMPLETED


def test_steps_take_the_time_they_are_given(clock, tmp_path) -> None:
    backend = InMemoryBatchBackend(
        clock=clock, validation_seconds=10, processing_seconds=20, finalizing_seconds=5
    )
    batch = create(backend, tmp_path, [request("a", "hi")])
    for seconds, status in ((9, "validating"), (1, "in_progress"), (20, "finalizing")):
        clock.advance(seconds)
        assert backend.retrieve_batch(batch.id).status == status
    clock.advance(5)
    assert backend.retrieve_batch(batch.id).status is BatchStatus.COMPLETED


def test_cancel_keeps_the_answers_given_and_lists_the_rest_as_cancelled(backend, tmp_path) -> None:
    batch = create(backend, tmp_path, [request("ok", "fine"), request("stuck", "<<hang>>")])
    assert backend.retrieve_batch(batch.id).status is BatchStatus.IN_PROGRESS
    assert backend.cancel_batch(batch.id).status is BatchStatus.CANCELLING
    cancelled = backend.retrieve_batch(batch.id)
    assert cancelled.status is BatchStatus.CANCELLED
    found = result_lines(backend, cancelled)
    assert found["ok"][0] == "output"
    assert found["stuck"][1]["error"]["code"] == "batch_cancelled"
    assert backend.cancel_batch(batch.id).status is BatchStatus.CANCELLED  # again: no error


def test_a_finished_batch_cannot_be_cancelled(backend, tmp_path) -> None:
    batch = create(backend, tmp_path, [request("ok", "fine")])
    with pytest.raises(BackendError) as raised:
        backend.cancel_batch(batch.id)
    assert raised.value.status_code == 409
    assert not isinstance(raised.value, TransientBackendError)


@pytest.mark.parametrize(
    ("lines", "code"),
    [
        ([request("a", "x"), request("a", "y")], "duplicate_custom_id"),
        ([request("a", "x", url="/v1/embeddings")], "mismatched_url"),
        ([request("a", "x", method="GET")], "invalid_method"),
        ([], "empty_file"),
    ],
)
def test_a_file_that_fails_validation_fails_the_batch_with_its_errors(
    backend, tmp_path, lines, code
) -> None:
    failed = backend.retrieve_batch(create(backend, tmp_path, lines).id)
    assert failed.status is BatchStatus.FAILED
    assert [error.code for error in failed.errors] == [code]
    assert (failed.output_file_id, failed.error_file_id) == (None, None)
    assert not is_transient_batch_failure(failed)


def test_batches_fail_on_the_token_limit_by_knob_or_by_count(clock, tmp_path) -> None:
    backend = InMemoryBatchBackend(clock=clock, enqueued_token_limit=30)
    backend.fail_batches(1)
    forced = backend.retrieve_batch(create(backend, tmp_path, [request("a", "hi")]).id)
    assert [error.code for error in forced.errors] == ["token_limit_exceeded"]
    assert is_transient_batch_failure(forced)
    assert backend.retrieve_batch(create(backend, tmp_path, [request("b", "hi")]).id).status == (
        BatchStatus.COMPLETED
    )
    too_big = create(backend, tmp_path, [request("c", "many words " * 40)])
    assert backend.retrieve_batch(too_big.id).errors[0].code == "token_limit_exceeded"


def test_a_refused_create_raises_429_and_makes_no_batch(backend, tmp_path) -> None:
    backend.refuse_creates(1)
    with pytest.raises(TransientBackendError) as raised:
        create(backend, tmp_path, [request("a", "hi")])
    assert (raised.value.status_code, raised.value.code) == (429, "rate_limit_exceeded")
    assert list(backend.iter_batches()) == []
    assert create(backend, tmp_path, [request("a", "hi")]).status is BatchStatus.VALIDATING


def test_a_lost_or_deleted_file_is_not_found(backend, tmp_path) -> None:
    done = backend.retrieve_batch(create(backend, tmp_path, [request("a", "hi")]).id)
    backend.lose_file(done.output_file_id)
    with pytest.raises(NotFound):
        backend.download_file(done.output_file_id, io.BytesIO())
    backend.delete_file(done.input_file_id)
    with pytest.raises(NotFound):
        backend.delete_file(done.input_file_id)
    with pytest.raises(NotFound):
        backend.create_batch(input_file_id=done.input_file_id, endpoint=CHAT, metadata={})


def test_a_service_that_goes_away_is_unreachable_once_past_the_bound(clock, tmp_path) -> None:
    backend = InMemoryBatchBackend(clock=clock, unreachable_after=30)
    batch = create(backend, tmp_path, [request("a", "hi")])
    backend.reachable = False
    with pytest.raises(TransientBackendError) as brief:
        backend.retrieve_batch(batch.id)
    assert not isinstance(brief.value, ServiceUnreachable) and backend.unreachable() is None
    clock.advance(31)
    with pytest.raises(ServiceUnreachable, match="memory://batch-api"):
        backend.retrieve_batch(batch.id)
    assert backend.unreachable() is not None
    backend.reachable = True
    assert backend.retrieve_batch(batch.id).status is BatchStatus.COMPLETED
    assert backend.unreachable() is None


def test_files_and_batches_are_found_by_name_or_metadata_since_a_time(
    backend, clock, tmp_path
) -> None:
    first = backend.upload_file(io.BytesIO(orjson.dumps(request("a", "hi")) + b"\n"), "shard.jsonl")
    batch = backend.create_batch(input_file_id=first.id, endpoint=CHAT, metadata={"k": "v"})
    clock.advance(100)
    assert backend.find_file("shard.jsonl", created_after=int(clock()) - 200) == first
    assert backend.find_file("shard.jsonl", created_after=int(clock())) is None
    found = backend.find_batch(metadata_key="k", metadata_value="v", created_after=0)
    assert found is not None and found.id == batch.id
    assert (
        backend.find_batch(metadata_key="k", metadata_value="v", created_after=int(clock())) is None
    )


def test_a_manual_clock_moves_only_forward_when_told(clock) -> None:
    start = clock()
    clock.sleep(2.5)
    assert clock() == start + 2.5
    with pytest.raises(ValueError, match="cannot go back"):
        clock.advance(-1)
