"""Lifecycle: counts moving, concurrency, cancel and expiry with partial results."""

from __future__ import annotations

import time

import pytest
from openai import OpenAI

from batch_pipeline_tests.local_api_tests.conftest import StartApi
from batch_pipeline_tests.local_api_tests.helpers import (
    by_custom_id,
    chat_line,
    read_lines,
    submit,
    wait_for,
    wait_for_completed,
    wait_until,
)

pytestmark = pytest.mark.slow

EXPIRED_MESSAGE = "This request could not be executed before the completion window expired."

LONG_VALIDATION_LINES = 200_000


def test_request_counts_move_while_running(client: OpenAI) -> None:
    lines = [chat_line(f"fast-{i}", "hi") for i in range(5)]
    lines += [chat_line(f"slow-{i}", "<<slow:1>> take your time") for i in range(3)]
    batch = submit(client, lines)

    running = wait_until(
        lambda: (
            (b := client.batches.retrieve(batch.id)).request_counts
            and b.request_counts.completed == 5
            and b
        )
    )
    assert running.status == "in_progress" and running.in_progress_at is not None
    assert running.request_counts.total == 8
    assert running.usage is None and running.output_file_id is None

    done = wait_for(client, batch.id)
    assert done.status == "completed"
    assert done.request_counts is not None and done.request_counts.completed == 8


def test_batches_run_concurrently(client: OpenAI) -> None:
    started = time.monotonic()
    ids = [
        submit(client, [chat_line("s", "<<slow:1>>"), chat_line("f", "hi")]).id for _ in range(5)
    ]
    for batch_id in ids:
        assert wait_for(client, batch_id).status == "completed"
    assert time.monotonic() - started < 4.0  # five 1 s waits overlapped, not queued


def test_cancel_keeps_finished_requests(client: OpenAI) -> None:
    lines = [chat_line(f"done-{i}", f"answer {i}") for i in range(20)]
    lines += [chat_line(f"hang-{i}", "<<hang>>") for i in range(3)]
    batch = submit(client, lines)
    wait_for_completed(client, batch.id, 20)

    cancelling = client.batches.cancel(batch.id)
    assert cancelling.status == "cancelling" and cancelling.cancelling_at is not None

    cancelled = wait_for(client, batch.id)
    assert cancelled.status == "cancelled"
    assert cancelled.cancelled_at is not None and cancelled.cancelled_at >= cancelled.cancelling_at
    assert cancelled.completed_at is None and cancelled.expired_at is None
    assert cancelled.request_counts is not None
    assert (
        cancelled.request_counts.total,
        cancelled.request_counts.completed,
        cancelled.request_counts.failed,
    ) == (23, 20, 3)
    output = by_custom_id(read_lines(client, cancelled.output_file_id))
    assert set(output) == {f"done-{i}" for i in range(20)}
    assert output["done-7"]["response"]["body"]["choices"][0]["message"]["content"] == "answer 7"
    errors = by_custom_id(read_lines(client, cancelled.error_file_id))
    assert set(errors) == {"hang-0", "hang-1", "hang-2"}
    for line in errors.values():
        assert line["response"] is None and line["id"].startswith("batch_req_")
        assert line["error"]["code"] == "batch_cancelled" and line["error"]["message"]
    assert client.batches.cancel(batch.id).status == "cancelled"  # idempotent


def test_cancel_while_validating_or_right_after_create(client: OpenAI) -> None:
    batch = submit(client, [chat_line(f"r{i}", "<<hang>>") for i in range(3)])
    client.batches.cancel(batch.id)
    cancelled = wait_for(client, batch.id)
    assert cancelled.status == "cancelled" and cancelled.output_file_id is None
    assert len(read_lines(client, cancelled.error_file_id)) == 3


def test_deleting_a_running_batchs_input_takes_none_of_its_requests(client: OpenAI) -> None:
    lines = [chat_line(f"done-{i}", "hi") for i in range(5)]
    lines += [chat_line(f"hang-{i}", "<<hang>>") for i in range(3)]
    batch = submit(client, lines)
    wait_for_completed(client, batch.id, 5)

    assert client.files.delete(batch.input_file_id).deleted
    client.batches.cancel(batch.id)
    cancelled = wait_for(client, batch.id)

    assert cancelled.status == "cancelled"
    output = read_lines(client, cancelled.output_file_id)
    errors = read_lines(client, cancelled.error_file_id)
    assert sorted(line["custom_id"] for line in output + errors) == sorted(
        line["custom_id"] for line in lines
    )
    assert {line["error"]["code"] for line in errors} == {"batch_cancelled"}


def test_a_cancel_during_validation_of_a_bad_input_ends_cancelled(start_api: StartApi) -> None:
    # A file four times OpenAI's limit takes long enough to validate that the cancel, sent
    # right after the create, lands during validation even on a loaded machine.
    url = start_api(max_requests_per_batch=LONG_VALIDATION_LINES)
    client = OpenAI(base_url=url, api_key="sk-local-test", max_retries=0)
    lines = [chat_line(f"r{i}", "hi") for i in range(LONG_VALIDATION_LINES - 1)]
    batch = submit(client, [*lines, chat_line("r0", "again")])  # a duplicate on the last line
    assert client.batches.cancel(batch.id).status == "cancelling"

    ended = wait_for(client, batch.id, timeout=60)
    assert ended.status == "cancelled"
    assert ended.cancelled_at is not None and ended.failed_at is None
    assert ended.errors is not None
    assert [error.code for error in ended.errors.data] == ["duplicate_custom_id"]


def test_expiry_keeps_finished_requests(start_api: StartApi) -> None:
    client = OpenAI(base_url=start_api(completion_window_seconds=1.5), api_key="k", max_retries=0)
    lines = [chat_line(f"done-{i}", "hi") for i in range(10)]
    lines += [chat_line("hang-a", "<<hang>>"), chat_line("hang-b", "please <<hang>>")]
    created = submit(client, lines)
    assert created.completion_window == "24h"
    assert created.expires_at is not None and created.expires_at - created.created_at in (1, 2)

    batch = wait_for(client, created.id, timeout=10)
    assert batch.status == "expired"
    assert batch.expired_at is not None and batch.expired_at >= batch.expires_at  # type: ignore[operator]
    assert batch.completed_at is None and batch.cancelled_at is None
    assert batch.request_counts is not None
    assert (batch.request_counts.completed, batch.request_counts.failed) == (10, 2)
    assert set(by_custom_id(read_lines(client, batch.output_file_id))) == {
        f"done-{i}" for i in range(10)
    }
    errors = by_custom_id(read_lines(client, batch.error_file_id))
    assert set(errors) == {"hang-a", "hang-b"}
    for line in errors.values():
        assert line["response"] is None
        assert line["error"] == {"code": "batch_expired", "message": EXPIRED_MESSAGE}
    assert batch.usage is not None and batch.usage.input_tokens > 0


def test_expiry_with_nothing_finished_has_no_output_file(start_api: StartApi) -> None:
    client = OpenAI(base_url=start_api(completion_window_seconds=1.0), api_key="k", max_retries=0)
    batch = wait_for(client, submit(client, [chat_line("h", "<<hang>>")]).id, timeout=10)
    assert batch.status == "expired"
    assert batch.output_file_id is None
    assert [line["custom_id"] for line in read_lines(client, batch.error_file_id)] == ["h"]
