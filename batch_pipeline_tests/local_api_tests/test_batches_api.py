"""The Batches API and the echo responder: shapes, token counts, pagination, create errors."""

from __future__ import annotations

import math
from typing import Any

import httpx2
import openai
import pytest
from openai import OpenAI

from batch_pipeline.core.tokens import count_tokens, encoding_for_model
from batch_pipeline_tests.local_api_tests.helpers import (
    CHAT,
    EMPTY_PAGE,
    MODEL,
    assert_empty_list,
    by_custom_id,
    chat_line,
    read_lines,
    submit,
    upload,
    wait_for,
)

pytestmark = pytest.mark.slow

BATCH_FIELDS = {
    "id",
    "object",
    "endpoint",
    "model",
    "errors",
    "input_file_id",
    "completion_window",
    "status",
    "output_file_id",
    "error_file_id",
    "created_at",
    "in_progress_at",
    "expires_at",
    "finalizing_at",
    "completed_at",
    "failed_at",
    "expired_at",
    "cancelling_at",
    "cancelled_at",
    "request_counts",
    "usage",
    "metadata",
}


def test_chat_batch_round_trip(client: OpenAI, api_url: str) -> None:
    texts = {f"row-{i}": f"Ticket {i}: my parcel {'never ' * (i % 3)}arrived." for i in range(40)}
    lines = [
        {
            "custom_id": cid,
            "method": "POST",
            "url": CHAT,
            "body": {
                "model": MODEL,
                "messages": [
                    {"role": "system", "content": "Label the ticket."},
                    {"role": "user", "content": text},
                ],
            },
        }
        for cid, text in texts.items()
    ]
    created = submit(client, lines, metadata={"shard": "tickets/2024-01-01/0"})
    assert created.status == "validating"
    assert created.object == "batch"
    assert created.model is None and created.in_progress_at is None
    assert created.request_counts is not None and created.request_counts.total == 0
    raw = httpx2.get(f"{api_url}/batches/{created.id}").json()
    assert set(raw) == BATCH_FIELDS
    assert raw["completion_window"] == "24h"
    assert raw["expires_at"] == raw["created_at"] + 60

    batch = wait_for(client, created.id)

    assert batch.status == "completed"
    assert batch.model == MODEL
    assert batch.metadata == {"shard": "tickets/2024-01-01/0"}
    assert batch.request_counts is not None
    assert (
        batch.request_counts.total,
        batch.request_counts.completed,
        batch.request_counts.failed,
    ) == (40, 40, 0)
    assert batch.in_progress_at and batch.finalizing_at and batch.completed_at
    assert batch.created_at <= batch.in_progress_at <= batch.finalizing_at <= batch.completed_at
    assert batch.failed_at is batch.expired_at is batch.cancelled_at is None
    assert batch.errors is None and batch.error_file_id is None

    output_file = client.files.retrieve(batch.output_file_id or "")
    assert output_file.purpose == "batch_output"
    lines_out = read_lines(client, batch.output_file_id)
    assert [line["custom_id"] for line in lines_out] != list(texts)  # not in input order
    results = by_custom_id(lines_out)
    assert set(results) == set(texts)
    system_tokens = count_tokens("Label the ticket.", MODEL)
    total_in = total_out = 0
    for cid, text in texts.items():
        line = results[cid]
        assert line["id"].startswith("batch_req_") and line["error"] is None
        response = line["response"]
        assert response["status_code"] == 200 and response["request_id"]
        body = response["body"]
        assert body["object"] == "chat.completion" and body["model"] == MODEL
        assert body["id"].startswith("chatcmpl-") and isinstance(body["created"], int)
        choice = body["choices"][0]
        assert choice["message"] == {
            "role": "assistant",
            "content": text,
            "refusal": None,
            "annotations": [],
        }
        assert choice["finish_reason"] == "stop"
        usage = body["usage"]
        assert usage["prompt_tokens"] == system_tokens + count_tokens(text, MODEL)
        assert usage["completion_tokens"] == count_tokens(text, MODEL)
        assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
        total_in += usage["prompt_tokens"]
        total_out += usage["completion_tokens"]
    assert batch.usage is not None
    assert (batch.usage.input_tokens, batch.usage.output_tokens) == (total_in, total_out)
    assert batch.usage.total_tokens == total_in + total_out


def test_chat_max_tokens_cuts_the_echo(shared_client: OpenAI) -> None:
    client = shared_client
    text = "one two three four five six seven eight nine ten eleven twelve"
    batch = wait_for(
        client,
        submit(
            client,
            [
                chat_line("short", text, max_tokens=4),
                chat_line("newer", text, max_completion_tokens=2),
                chat_line("roomy", text, max_tokens=1000),
            ],
        ).id,
    )
    results = by_custom_id(read_lines(client, batch.output_file_id))
    encoding = encoding_for_model(MODEL)
    for cid, limit in (("short", 4), ("newer", 2)):
        body = results[cid]["response"]["body"]
        assert body["choices"][0]["finish_reason"] == "length"
        assert body["usage"]["completion_tokens"] == limit
        expected = encoding.decode(encoding.encode_ordinary(text)[:limit])
        assert body["choices"][0]["message"]["content"] == expected
    roomy = results["roomy"]["response"]["body"]
    assert roomy["choices"][0]["finish_reason"] == "stop"
    assert roomy["choices"][0]["message"]["content"] == text


def _responses_line(cid: str, value: Any, **body: Any) -> dict[str, Any]:
    return {
        "custom_id": cid,
        "method": "POST",
        "url": "/v1/responses",
        "body": {"model": MODEL, "input": value, **body},
    }


def test_responses_batch_round_trip(shared_client: OpenAI) -> None:
    client = shared_client
    items = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "input_text", "text": "first question"}]},
        {"role": "assistant", "content": "an answer"},
        {"role": "user", "content": "the last question"},
    ]
    batch = wait_for(
        client,
        submit(
            client,
            [
                _responses_line("plain", "Summarise: the cat sat on the mat."),
                _responses_line("items", items, instructions="Answer in French."),
                _responses_line("cut", "alpha beta gamma delta epsilon", max_output_tokens=2),
            ],
            endpoint="/v1/responses",
        ).id,
    )
    assert batch.status == "completed"
    results = by_custom_id(read_lines(client, batch.output_file_id))

    plain = results["plain"]["response"]["body"]
    assert plain["object"] == "response" and plain["status"] == "completed"
    assert "output_text" not in plain
    message = plain["output"][0]
    assert message["type"] == "message" and message["role"] == "assistant"
    assert message["content"][0]["type"] == "output_text"
    assert message["content"][0]["text"] == "Summarise: the cat sat on the mat."
    n = count_tokens("Summarise: the cat sat on the mat.", MODEL)
    assert plain["usage"]["input_tokens"] == n and plain["usage"]["output_tokens"] == n
    assert plain["usage"]["total_tokens"] == 2 * n

    multi = results["items"]["response"]["body"]
    assert multi["output"][0]["content"][0]["text"] == "the last question"
    texts = ["Answer in French.", "Be brief.", "first question", "an answer", "the last question"]
    assert multi["usage"]["input_tokens"] == sum(count_tokens(t, MODEL) for t in texts)
    assert multi["usage"]["output_tokens"] == count_tokens("the last question", MODEL)

    cut = results["cut"]["response"]["body"]
    assert cut["status"] == "incomplete"
    assert cut["incomplete_details"] == {"reason": "max_output_tokens"}
    assert cut["usage"]["output_tokens"] == 2


def test_embeddings_batch_round_trip(shared_client: OpenAI) -> None:
    client = shared_client
    model = "text-embedding-3-small"

    def line(cid: str, value: Any, **body: Any) -> dict[str, Any]:
        return {
            "custom_id": cid,
            "method": "POST",
            "url": "/v1/embeddings",
            "body": {"model": model, "input": value, **body},
        }

    batch = wait_for(
        client,
        submit(
            client,
            [
                line("a", "the quick brown fox"),
                line("same", "the quick brown fox"),
                line("list", ["one", "two"], dimensions=8),
            ],
            endpoint="/v1/embeddings",
        ).id,
    )
    assert batch.status == "completed" and batch.model == model
    results = by_custom_id(read_lines(client, batch.output_file_id))

    a = results["a"]["response"]["body"]
    assert a["object"] == "list" and a["model"] == model
    assert a["data"][0]["object"] == "embedding" and a["data"][0]["index"] == 0
    vector = a["data"][0]["embedding"]
    assert len(vector) == 256
    assert math.isclose(math.fsum(x * x for x in vector), 1.0, rel_tol=1e-9)
    assert results["same"]["response"]["body"]["data"][0]["embedding"] == vector
    tokens = count_tokens("the quick brown fox", model)
    assert a["usage"] == {"prompt_tokens": tokens, "total_tokens": tokens}

    listed = results["list"]["response"]["body"]
    assert [d["index"] for d in listed["data"]] == [0, 1]
    assert all(len(d["embedding"]) == 8 for d in listed["data"])
    assert listed["data"][0]["embedding"] != listed["data"][1]["embedding"]
    assert batch.usage is not None and batch.usage.output_tokens == 0


def test_completions_and_moderations(shared_client: OpenAI) -> None:
    client = shared_client
    completions = wait_for(
        client,
        submit(
            client,
            [
                {
                    "custom_id": "c",
                    "method": "POST",
                    "url": "/v1/completions",
                    "body": {"model": "gpt-3.5-turbo-instruct", "prompt": "Say this is a test"},
                },
            ],
            endpoint="/v1/completions",
        ).id,
    )
    body = read_lines(client, completions.output_file_id)[0]["response"]["body"]
    assert body["object"] == "text_completion"
    assert body["choices"][0]["text"] == "Say this is a test"

    moderations = wait_for(
        client,
        submit(
            client,
            [
                {
                    "custom_id": "m",
                    "method": "POST",
                    "url": "/v1/moderations",
                    "body": {"input": ["fine", "also fine"]},
                },
            ],
            endpoint="/v1/moderations",
        ).id,
    )
    body = read_lines(client, moderations.output_file_id)[0]["response"]["body"]
    assert [r["flagged"] for r in body["results"]] == [False, False]


def test_list_batches_newest_first_with_auto_paging(client: OpenAI, api_url: str) -> None:
    file_id = upload(client, [chat_line("x", "hi")])
    ids = [
        client.batches.create(input_file_id=file_id, endpoint=CHAT, completion_window="24h").id
        for _ in range(5)
    ]

    assert [b.id for b in client.batches.list(limit=2)] == ids[::-1]
    page = httpx2.get(f"{api_url}/batches", params={"limit": 2}).json()
    assert page["object"] == "list" and page["has_more"] is True
    assert (page["first_id"], page["last_id"]) == (ids[4], ids[3])
    tail = httpx2.get(f"{api_url}/batches", params={"after": ids[1]}).json()
    assert [b["id"] for b in tail["data"]] == [ids[0]] and tail["has_more"] is False
    for bad in ("0", "101", "many"):
        assert httpx2.get(f"{api_url}/batches", params={"limit": bad}).status_code == 400


def test_empty_list_of_batches_has_the_spec_shape(client: OpenAI, api_url: str) -> None:
    # ListBatchesResponse types first_id and last_id as strings (optional, not nullable).
    assert_empty_list(api_url, "batches", client.batches.list)

    file_id = upload(client, [chat_line("x", "hi")])
    only = client.batches.create(input_file_id=file_id, endpoint=CHAT, completion_window="24h")
    assert httpx2.get(f"{api_url}/batches", params={"after": only.id}).json() == EMPTY_PAGE


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"completion_window": "48h"}, "completion_window"),
        ({"endpoint": "/v1/fine_tuning/jobs"}, "endpoint"),
        ({"metadata": {f"k{i}": "v" for i in range(17)}}, "metadata"),
        ({"metadata": {"k" * 65: "v"}}, "metadata"),
        ({"metadata": {"k": "v" * 513}}, "metadata"),
        ({"metadata": {"k": 5}}, "metadata"),
        ({"input_file_id": None}, "input_file_id"),
    ],
)
def test_create_rejects_bad_parameters(
    shared_client: OpenAI, shared_url: str, change: dict[str, Any], param: str
) -> None:
    body = {
        "input_file_id": upload(shared_client, [chat_line("x", "hi")]),
        "endpoint": CHAT,
        "completion_window": "24h",
        **change,
    }
    body = {k: v for k, v in body.items() if v is not None}
    response = httpx2.post(f"{shared_url}/batches", json=body)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error"
    assert error["message"]


def test_metadata_at_the_limits_is_kept(shared_client: OpenAI) -> None:
    client = shared_client
    metadata = {f"{i:02d}" + "k" * 62: "v" * 512 for i in range(16)}
    batch = submit(client, [chat_line("x", "hi")], metadata=metadata)
    assert client.batches.retrieve(batch.id).metadata == metadata


def test_create_with_unknown_or_wrong_purpose_file(shared_client: OpenAI) -> None:
    client = shared_client
    with pytest.raises(openai.NotFoundError):
        client.batches.create(
            input_file_id="file-" + "0" * 32, endpoint=CHAT, completion_window="24h"
        )
    other = client.files.create(file=("x.jsonl", b"{}\n"), purpose="user_data")
    with pytest.raises(openai.BadRequestError) as info:
        client.batches.create(input_file_id=other.id, endpoint=CHAT, completion_window="24h")
    assert info.value.code == "invalid_file_purpose"


def test_unknown_batch_is_404_and_finished_batch_cannot_be_cancelled(shared_client: OpenAI) -> None:
    client = shared_client
    with pytest.raises(openai.NotFoundError):
        client.batches.retrieve("batch_" + "0" * 32)
    with pytest.raises(openai.NotFoundError):
        client.batches.cancel("batch_nope")
    done = wait_for(client, submit(client, [chat_line("x", "hi")]).id)
    with pytest.raises(openai.ConflictError):
        client.batches.cancel(done.id)


def test_a_batch_past_the_enqueued_token_limit_fails_until_tokens_are_freed(start_api) -> None:
    """With a limit, each model's prompt tokens in unfinished batches are counted exactly, as
    the provider counts them: a batch that would pass the limit fails `token_limit_exceeded`;
    once a held batch ends, the same batch goes through; other models have their own count."""
    held_text, other_text = "株式会社の請求書 <<hang>>", "請求書番号 4815162342 は未払いです"
    held, other = count_tokens(held_text, MODEL), count_tokens(other_text, MODEL)
    limit = held + other - 1
    client = OpenAI(base_url=start_api(enqueued_token_limit=limit), api_key="k", max_retries=0)

    first = submit(client, [chat_line("held", held_text)])
    wait_for(client, first.id, ("in_progress",))
    refused = wait_for(client, submit(client, [chat_line("other", other_text)]).id)
    assert refused.status == "failed"
    (error,) = refused.errors.data
    assert error.code == "token_limit_exceeded"
    assert f"Limit: {limit:,} enqueued tokens; {held:,} are enqueued" in error.message
    assert f"this batch holds {other:,}" in error.message

    other_model = submit(client, [chat_line("other", other_text, model="gpt-4o")])
    assert wait_for(client, other_model.id).status == "completed"
    small = "ok"
    fitting = wait_for(client, submit(client, [chat_line("small", small)]).id)
    assert fitting.status == "completed"
    (answer,) = read_lines(client, fitting.output_file_id)
    assert answer["response"]["body"]["usage"]["prompt_tokens"] == count_tokens(small, MODEL)

    client.batches.cancel(first.id)
    assert wait_for(client, first.id).status == "cancelled"
    again = wait_for(client, submit(client, [chat_line("other", other_text)]).id)
    assert again.status == "completed"
