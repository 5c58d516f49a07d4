"""Fault triggers in request text and the service-wide fault options."""

from __future__ import annotations

import time

import openai
import pytest
from openai import OpenAI

from batch_pipeline_tests.local_api_tests.conftest import StartApi
from batch_pipeline_tests.local_api_tests.helpers import (
    CHAT,
    MODEL,
    by_custom_id,
    chat_line,
    read_lines,
    submit,
    upload,
    wait_for,
    wait_for_completed,
    wait_until,
)

pytestmark = pytest.mark.slow

EXPECTED = {
    400: ("invalid_request_error", "invalid_request"),
    429: ("requests", "rate_limit_exceeded"),
    500: ("server_error", "server_error"),
}


@pytest.mark.parametrize("status", [400, 429, 500])
def test_fail_trigger_answers_with_that_status(shared_client: OpenAI, status: int) -> None:
    client = shared_client
    batch = wait_for(
        client,
        submit(
            client,
            [
                chat_line("ok", "hello"),
                chat_line("bad", f"please <<fail:{status}>> now"),
            ],
        ).id,
    )

    assert batch.status == "completed"
    assert batch.request_counts is not None
    assert (batch.request_counts.completed, batch.request_counts.failed) == (1, 1)
    output = by_custom_id(read_lines(client, batch.output_file_id))
    assert set(output) == {"ok"}  # the output file holds the answers that succeeded
    assert output["ok"]["response"]["status_code"] == 200
    errors = by_custom_id(read_lines(client, batch.error_file_id))
    bad = errors["bad"]  # the error file, the answers with an error status
    assert bad["error"] is None
    assert bad["response"]["status_code"] == status
    error = bad["response"]["body"]["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert (error["type"], error["code"]) == EXPECTED[status]


def test_fail_trigger_in_responses_and_embeddings_input(shared_client: OpenAI) -> None:
    client = shared_client
    responses = wait_for(
        client,
        submit(
            client,
            [
                {
                    "custom_id": "r",
                    "method": "POST",
                    "url": "/v1/responses",
                    "body": {
                        "model": MODEL,
                        "input": [
                            {
                                "role": "user",
                                "content": [{"type": "input_text", "text": "<<fail:503>>"}],
                            }
                        ],
                    },
                },
            ],
            endpoint="/v1/responses",
        ).id,
    )
    assert read_lines(client, responses.error_file_id)[0]["response"]["status_code"] == 503
    embeddings = wait_for(
        client,
        submit(
            client,
            [
                {
                    "custom_id": "e",
                    "method": "POST",
                    "url": "/v1/embeddings",
                    "body": {"model": "text-embedding-3-small", "input": ["fine", "<<fail:400>>"]},
                },
            ],
            endpoint="/v1/embeddings",
        ).id,
    )
    assert read_lines(client, embeddings.error_file_id)[0]["response"]["status_code"] == 400


def test_system_text_is_not_a_trigger(shared_client: OpenAI) -> None:
    client = shared_client
    line = chat_line("s", "hello")
    line["body"]["messages"].insert(0, {"role": "system", "content": "<<fail:500>>"})
    batch = wait_for(client, submit(client, [line]).id)
    assert read_lines(client, batch.output_file_id)[0]["response"]["status_code"] == 200


def test_hang_is_never_processed(shared_client: OpenAI) -> None:
    client = shared_client
    batch = submit(
        client, [chat_line(f"r{i}", "hi") for i in range(4)] + [chat_line("stuck", "<<hang>>")]
    )
    wait_for_completed(client, batch.id, 4)
    time.sleep(0.5)
    still = client.batches.retrieve(batch.id)
    assert still.status == "in_progress"
    assert still.request_counts is not None
    assert (still.request_counts.completed, still.request_counts.failed) == (4, 0)
    client.batches.cancel(batch.id)
    done = wait_for(client, batch.id)
    assert [line["custom_id"] for line in read_lines(client, done.error_file_id)] == ["stuck"]


def test_slow_delays_only_that_request(shared_client: OpenAI) -> None:
    client = shared_client
    started = time.monotonic()
    batch = submit(
        client, [chat_line("slow", "<<slow:1>>")] + [chat_line(f"r{i}", "hi") for i in range(5)]
    )
    meanwhile = wait_until(
        lambda: (
            (b := client.batches.retrieve(batch.id)).request_counts
            and b.request_counts.completed == 5
            and b
        ),
        interval=0.02,
    )
    assert meanwhile.status == "in_progress"  # the others did not wait for the slow one
    done = wait_for(client, batch.id)
    assert time.monotonic() - started >= 1.0
    assert done.status == "completed"
    slow = by_custom_id(read_lines(client, done.output_file_id))["slow"]
    assert slow["response"]["body"]["choices"][0]["message"]["content"] == "<<slow:1>>"


def test_fault_triggers_can_be_turned_off(start_api: StartApi) -> None:
    client = OpenAI(base_url=start_api(fault_triggers=False), api_key="k", max_retries=0)
    lines = [chat_line("f", "<<fail:500>>"), chat_line("h", "<<hang>>")]
    batch = wait_for(client, submit(client, lines).id)
    output = by_custom_id(read_lines(client, batch.output_file_id))
    assert {cid: line["response"]["status_code"] for cid, line in output.items()} == {
        "f": 200,
        "h": 200,
    }


def test_create_429_every_nth(start_api: StartApi) -> None:
    url = start_api(fault_create_429_every=2)
    client = OpenAI(base_url=url, api_key="k", max_retries=0)
    file_id = upload(client, [chat_line("x", "hi")])

    def create() -> str:
        return client.batches.create(
            input_file_id=file_id, endpoint=CHAT, completion_window="24h"
        ).id

    first = create()
    with pytest.raises(openai.RateLimitError) as info:
        create()
    assert info.value.status_code == 429
    assert info.value.code == "rate_limit_exceeded"
    assert info.value.body["type"] == "requests"  # type: ignore[index]
    third = create()
    assert [b.id for b in client.batches.list()] == [third, first]

    retrying = OpenAI(base_url=url, api_key="k", max_retries=2)  # the SDK retries the 429
    assert (
        retrying.batches.create(
            input_file_id=file_id, endpoint=CHAT, completion_window="24h"
        ).status
        == "validating"
    )


def test_download_500_every_nth(start_api: StartApi) -> None:
    client = OpenAI(base_url=start_api(fault_download_500_every=2), api_key="k", max_retries=0)
    file_id = upload(client, [chat_line("x", "hi")])
    assert client.files.content(file_id).content
    with pytest.raises(openai.InternalServerError) as info:
        client.files.content(file_id)
    assert info.value.status_code == 500
    assert info.value.body["type"] == "server_error"  # type: ignore[index]
    assert client.files.content(file_id).content
