"""The local Batch API in Anthropic's dialect, driven by the official `anthropic` SDK."""

from __future__ import annotations

import time
from typing import Any

import anthropic
import httpx2
import pytest
from anthropic.types.messages import MessageBatch
from openai import OpenAI

from batch_pipeline_tests.local_api_tests.conftest import StartApi
from batch_pipeline_tests.local_api_tests.helpers import submit

pytestmark = pytest.mark.slow

KEY = "anthropic-test-key"
MODEL = "claude-haiku-4-5"
VERSION = {"anthropic-version": "2023-06-01"}


def _client(url: str, **options: Any) -> anthropic.Anthropic:
    return anthropic.Anthropic(
        base_url=url.removesuffix("/v1"), api_key=KEY, max_retries=0, **options
    )


def _request(custom_id: str, text: str, **params: Any) -> dict[str, Any]:
    params.setdefault("max_tokens", 64)
    if params["max_tokens"] is None:
        del params["max_tokens"]
    return {
        "custom_id": custom_id,
        "params": {"model": MODEL, "messages": [{"role": "user", "content": text}], **params},
    }


def _wait_ended(client: anthropic.Anthropic, batch_id: str, timeout: float = 20.0) -> MessageBatch:
    deadline = time.monotonic() + timeout
    while True:
        batch = client.messages.batches.retrieve(batch_id)
        if batch.processing_status == "ended":
            return batch
        assert time.monotonic() < deadline, f"{batch_id} still {batch.processing_status}"
        time.sleep(0.05)


def _results(client: anthropic.Anthropic, batch_id: str) -> dict[str, Any]:
    return {line.custom_id: line.result for line in client.messages.batches.results(batch_id)}


def test_a_message_batch_runs_to_its_results(start_api: StartApi) -> None:
    client = _client(start_api(api_key=KEY))
    created = client.messages.batches.create(
        requests=[
            _request("first", "hello there"),
            _request("cut", "one two three four five six seven", max_tokens=2),
            _request("with_system", "hi", system="You echo."),
        ]
    )
    assert created.id.startswith("msgbatch_") and created.processing_status == "in_progress"
    assert created._request_id.startswith("req_")  # the request-id header, as Anthropic's
    assert created.request_counts.processing == 3 and created.results_url is None
    batch = _wait_ended(client, created.id)
    assert batch.request_counts.succeeded == 3 and batch.request_counts.processing == 0
    assert batch.ended_at is not None and batch.results_url.endswith(f"{batch.id}/results")
    results = _results(client, batch.id)
    assert {kind.type for kind in results.values()} == {"succeeded"}
    first = results["first"].message
    assert first.content[0].text == "hello there" and first.model == MODEL
    assert first.stop_reason == "end_turn" and first.usage.output_tokens > 0
    cut = results["cut"].message
    assert cut.stop_reason == "max_tokens" and cut.usage.output_tokens == 2
    # The system text counts as input tokens too.
    assert results["with_system"].message.usage.input_tokens > first.usage.input_tokens - 2


def test_faults_come_back_as_errored_expired_and_canceled(start_api: StartApi) -> None:
    client = _client(start_api(api_key=KEY, completion_window_seconds=1.5))
    batch = client.messages.batches.create(
        requests=[
            _request("ok", "fine"),
            _request("overloaded", "x <<fail:529>>"),
            _request("limited", "x <<fail:429>>"),
            _request("refused", "x <<fail:400>>"),
            _request("no_max_tokens", "fine", max_tokens=None),
            _request("slow", "x <<slow:0.2>>"),
            _request("hangs", "x <<hang>>"),
        ]
    )
    ended = _wait_ended(client, batch.id)
    counts = ended.request_counts
    assert (counts.succeeded, counts.errored, counts.expired, counts.canceled) == (2, 4, 1, 0)
    results = _results(client, batch.id)
    assert results["slow"].type == "succeeded" and results["hangs"].type == "expired"
    errors = {
        key: results[key].error.error.type for key in results if results[key].type == "errored"
    }
    assert errors == {
        "overloaded": "overloaded_error",
        "limited": "rate_limit_error",
        "refused": "invalid_request_error",
        "no_max_tokens": "invalid_request_error",
    }
    assert "max_tokens" in results["no_max_tokens"].error.error.message


def test_cancel_keeps_the_finished_results_and_cancels_the_rest(start_api: StartApi) -> None:
    client = _client(start_api(api_key=KEY))
    batch = client.messages.batches.create(
        requests=[_request("done", "quick"), _request("stuck", "<<hang>>")]
    )
    time.sleep(0.3)
    canceling = client.messages.batches.cancel(batch.id)
    assert canceling.processing_status == "canceling" and canceling.cancel_initiated_at
    ended = _wait_ended(client, batch.id)
    assert (ended.request_counts.succeeded, ended.request_counts.canceled) == (1, 1)
    assert {k: r.type for k, r in _results(client, batch.id).items()} == {
        "done": "succeeded",
        "stuck": "canceled",
    }
    assert client.messages.batches.cancel(batch.id).processing_status == "ended"
    finished = client.messages.batches.create(requests=[_request("a", "x")])
    _wait_ended(client, finished.id)
    with pytest.raises(anthropic.BadRequestError):  # ended, not by a cancel
        client.messages.batches.cancel(finished.id)


def test_delete_needs_an_ended_batch_and_removes_it(start_api: StartApi) -> None:
    client = _client(start_api(api_key=KEY))
    running = client.messages.batches.create(requests=[_request("a", "<<hang>>")])
    with pytest.raises(anthropic.BadRequestError) as refused:
        client.messages.batches.delete(running.id)
    assert refused.value.body["error"]["type"] == "invalid_request_error"
    client.messages.batches.cancel(running.id)
    _wait_ended(client, running.id)
    deleted = client.messages.batches.delete(running.id)
    assert (deleted.id, deleted.type) == (running.id, "message_batch_deleted")
    with pytest.raises(anthropic.NotFoundError) as gone:
        client.messages.batches.retrieve(running.id)
    assert gone.value.body["type"] == "error"
    assert gone.value.body["error"]["type"] == "not_found_error"
    assert gone.value.request_id == gone.value.body["request_id"]  # header and body agree


def test_the_list_pages_both_ways_and_keeps_to_its_dialect(start_api: StartApi) -> None:
    url = start_api(api_key=KEY)
    client = _client(url)
    ids = [client.messages.batches.create(requests=[_request("a", "hi")]).id for _ in range(5)]
    openai_batch = submit(OpenAI(base_url=url, api_key=KEY, max_retries=0), [
        {"custom_id": "o", "method": "POST", "url": "/v1/chat/completions",
         "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}]}}
    ])  # fmt: skip
    newest_first = ids[::-1]
    assert [b.id for b in client.messages.batches.list(limit=2)] == newest_first  # auto-paging
    first = client.messages.batches.list(limit=2)
    assert [b.id for b in first.data] == newest_first[:2] and first.has_more
    older = client.messages.batches.list(limit=2, after_id=first.last_id)
    assert [b.id for b in older.data] == newest_first[2:4]
    newer = client.messages.batches.list(limit=1, before_id=older.first_id)
    assert [b.id for b in newer.data] == [newest_first[1]] and newer.has_more
    assert [b.id for b in client.messages.batches.list(before_id=ids[0])] == newest_first[:-1]
    assert openai_batch.id not in {b.id for b in client.messages.batches.list()}
    listed = OpenAI(base_url=url, api_key=KEY, max_retries=0).batches.list()
    assert [b.id for b in listed] == [openai_batch.id]


@pytest.mark.parametrize(
    ("requests", "says"),
    [
        ([_request("has:colon", "x")], "custom_id: String should match pattern"),
        ([_request("x" * 65, "x")], "custom_id: String should match pattern"),
        ([_request("same", "x"), _request("same", "y")], "Duplicate custom_id 'same'"),
        ([], "requests"),
        ([_request(f"r{i}", "x") for i in range(4)], "at most 3 items"),
    ],
)
def test_bad_requests_are_refused_at_create(
    start_api: StartApi, requests: list[Any], says: str
) -> None:
    client = _client(start_api(api_key=KEY, anthropic_max_requests_per_batch=3))
    with pytest.raises(anthropic.BadRequestError) as refused:
        client.messages.batches.create(requests=requests)
    assert refused.value.body["type"] == "error"
    assert refused.value.body["error"]["type"] == "invalid_request_error"
    assert says in refused.value.body["error"]["message"]
    assert list(client.messages.batches.list()) == []


def test_a_body_over_the_size_limit_is_413(start_api: StartApi) -> None:
    client = _client(start_api(api_key=KEY, anthropic_max_batch_bytes=2000))
    with pytest.raises(anthropic.APIStatusError) as refused:
        client.messages.batches.create(requests=[_request("big", "x" * 3000)])
    assert refused.value.status_code == 413
    assert refused.value.body["error"]["type"] == "request_too_large"


def test_key_and_version_headers_are_checked_in_anthropics_words(start_api: StartApi) -> None:
    url = start_api(api_key=KEY)
    root = url.removesuffix("/v1")
    with pytest.raises(anthropic.AuthenticationError) as wrong:
        anthropic.Anthropic(base_url=root, api_key="nope", max_retries=0).messages.batches.list()
    assert wrong.value.body["error"]["type"] == "authentication_error"
    assert wrong.value.request_id == wrong.value.body["request_id"]
    assert "nope" not in str(wrong.value.body)
    no_version = httpx2.get(f"{root}/v1/messages/batches", headers={"x-api-key": KEY})
    assert no_version.status_code == 400
    assert "anthropic-version" in no_version.json()["error"]["message"]
    ok = httpx2.get(f"{root}/v1/messages/batches", headers={"x-api-key": KEY, **VERSION})
    assert ok.status_code == 200 and ok.json()["data"] == []
    # The x-api-key header is Anthropic's alone; OpenAI's paths do not take it.
    assert httpx2.get(f"{url}/files", headers={"x-api-key": KEY}).status_code == 401
    with pytest.raises(anthropic.NotFoundError):
        _client(url).messages.batches.retrieve("msgbatch_nope")


def test_results_of_a_running_batch_are_refused(start_api: StartApi) -> None:
    url = start_api(api_key=KEY)
    batch = _client(url).messages.batches.create(requests=[_request("a", "<<hang>>")])
    response = httpx2.get(
        f"{url.removesuffix('/v1')}/v1/messages/batches/{batch.id}/results",
        headers={"x-api-key": KEY, **VERSION},
    )
    assert response.status_code == 400 and response.json()["type"] == "error"


def test_create_429_fault_is_anthropics_rate_limit(start_api: StartApi) -> None:
    client = _client(start_api(api_key=KEY, fault_create_429_every=1))
    with pytest.raises(anthropic.RateLimitError) as limited:
        client.messages.batches.create(requests=[_request("a", "x")])
    assert limited.value.body["error"]["type"] == "rate_limit_error"
    assert limited.value.response.headers["retry-after"] == "1"
