"""Uploads in every form clients send them: unnamed files, and each encoding of the fields."""

from __future__ import annotations

import io

import httpx2
import openai
import pytest
from openai import OpenAI

from batch_pipeline_tests.local_api_tests.helpers import chat_line, jsonl, wait_for

pytestmark = pytest.mark.slow

LINES = jsonl([chat_line("a", "hello"), chat_line("b", "world")])


@pytest.mark.parametrize(
    "file", [LINES, io.BytesIO(LINES)], ids=["raw bytes", "unnamed file object"]
)
def test_a_batch_upload_without_a_file_name_is_taken_and_runs(
    shared_client: OpenAI, file: bytes | io.BytesIO
) -> None:
    """The SDK names such a part `upload`: no extension is not a wrong extension."""
    created = shared_client.files.create(file=file, purpose="batch")
    assert created.purpose == "batch" and created.bytes == len(LINES)
    batch = shared_client.batches.create(
        input_file_id=created.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    done = wait_for(shared_client, batch.id)
    assert done.status == "completed"
    assert done.request_counts is not None and done.request_counts.completed == 2


def test_a_batch_upload_with_another_extension_is_refused(shared_client: OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        shared_client.files.create(file=("notes.txt", LINES), purpose="batch")
    body = info.value.body
    assert isinstance(body, dict)
    assert (body["code"], body["param"]) == ("invalid_file_format", "file")


def _upload(url: str, **fields: str) -> httpx2.Response:
    return httpx2.post(f"{url}/files", data=fields, files={"file": ("in.jsonl", LINES)})


@pytest.mark.parametrize("purpose", ["batch", "user_data"])
def test_expires_after_as_one_json_part_is_applied(shared_url: str, purpose: str) -> None:
    response = _upload(
        shared_url, purpose=purpose, expires_after='{"anchor":"created_at","seconds":3600}'
    )
    assert response.status_code == 200, response.text
    created = response.json()
    assert created["expires_at"] - created["created_at"] in (3600, 3601)


@pytest.mark.parametrize(
    "value",
    [
        '{"anchor":"created_at","seconds":3599}',
        '{"anchor":"created_at","seconds":2592001}',
        '{"anchor":"last_active_at","seconds":3600}',
        '{"anchor":"created_at","seconds":',
        '["created_at", 3600]',
    ],
    ids=["too short", "too long", "unknown anchor", "bad JSON", "not an object"],
)
def test_a_bad_json_part_expires_after_is_400_naming_it(shared_url: str, value: str) -> None:
    response = _upload(shared_url, purpose="batch", expires_after=value)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "expires_after"


def test_expires_after_in_both_encodings_at_once_is_400(shared_url: str) -> None:
    response = _upload(
        shared_url,
        purpose="batch",
        expires_after='{"anchor":"created_at","seconds":3600}',
        **{"expires_after[anchor]": "created_at", "expires_after[seconds]": "7200"},
    )
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "expires_after"


def test_an_unknown_form_field_is_400_naming_it(shared_url: str) -> None:
    response = _upload(shared_url, purpose="batch", expires_in="3600")
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["code"], error["param"]) == ("unknown_parameter", "expires_in")
