"""The local Batch API in Azure OpenAI's dialect, driven by the SDK's AzureOpenAI client."""

from __future__ import annotations

import httpx2
import openai
import pytest
from openai import AzureOpenAI, OpenAI

from batch_pipeline_tests.local_api_tests.conftest import StartApi
from batch_pipeline_tests.local_api_tests.helpers import chat_line, jsonl, read_lines, wait_for

pytestmark = pytest.mark.slow

KEY = "azure-test-key"
VERSION = "2024-10-21"
DEPLOYMENT = "my-gpt-4o-mini-batch"


def _azure_line(custom_id: str) -> dict[str, object]:
    """A request line as Azure's documentation writes it: url without /v1, a deployment."""
    return {
        **chat_line(custom_id, f"hello {custom_id}", model=DEPLOYMENT),
        "url": "/chat/completions",
    }


def _azure(url: str) -> AzureOpenAI:
    return AzureOpenAI(
        azure_endpoint=url.removesuffix("/v1"), api_version=VERSION, api_key=KEY, max_retries=0
    )


def test_a_batch_in_azure_form_runs_to_completion(start_api: StartApi) -> None:
    client = _azure(start_api(api_key=KEY))
    upload = client.files.create(file=jsonl([_azure_line("a"), _azure_line("b")]), purpose="batch")
    created = client.batches.create(
        input_file_id=upload.id, endpoint="/chat/completions", completion_window="24h"
    )
    assert created.endpoint == "/chat/completions"  # shown back as it was sent
    batch = wait_for(client, created.id)
    assert batch.status == "completed" and batch.model == DEPLOYMENT
    lines = read_lines(client, batch.output_file_id)
    assert {line["custom_id"] for line in lines} == {"a", "b"}
    assert all(line["response"]["body"]["model"] == DEPLOYMENT for line in lines)
    assert [b.id for b in client.batches.list()] == [batch.id]


def test_every_azure_call_needs_api_version_and_gets_azures_404(start_api: StartApi) -> None:
    root = start_api(api_key=KEY).removesuffix("/v1")
    for method, path in [("GET", "/openai/files"), ("POST", "/openai/batches"),
                         ("GET", "/openai/batches/batch_abc")]:  # fmt: skip
        response = httpx2.request(method, root + path, headers={"api-key": KEY})
        assert response.status_code == 404, path
        assert response.json()["error"]["message"] == "Resource not found"


def test_the_api_key_header_is_checked_like_the_bearer_key(start_api: StartApi) -> None:
    url = start_api(api_key=KEY)
    root, query = url.removesuffix("/v1"), {"api-version": VERSION}
    ok = httpx2.get(f"{root}/openai/files", params=query, headers={"api-key": KEY})
    assert ok.status_code == 200
    wrong = httpx2.get(f"{root}/openai/files", params=query, headers={"api-key": "nope"})
    assert wrong.status_code == 401 and KEY not in wrong.text
    assert httpx2.get(f"{root}/openai/files", params=query).status_code == 401
    bearer = httpx2.get(
        f"{root}/openai/files", params=query, headers={"authorization": f"Bearer {KEY}"}
    )
    assert bearer.status_code == 200
    # OpenAI's paths keep OpenAI's header: an api-key header there is no key at all.
    assert httpx2.get(f"{url}/files", headers={"api-key": KEY}).status_code == 401


def test_azure_batches_hold_more_requests_than_openai_ones(start_api: StartApi) -> None:
    url = start_api(max_requests_per_batch=2, azure_max_requests_per_batch=3)
    lines = [chat_line(name, "hi", model=DEPLOYMENT) for name in "abc"]
    openai_client = OpenAI(base_url=url, api_key="unused", max_retries=0)
    file_id = openai_client.files.create(file=("in.jsonl", jsonl(lines)), purpose="batch").id
    refused = openai_client.batches.create(
        input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    refused = wait_for(openai_client, refused.id)
    assert refused.status == "failed" and refused.errors is not None
    assert refused.errors.data is not None and refused.errors.data[0].code == "too_many_requests"
    azure = _azure(url)
    taken = azure.batches.create(
        input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    assert wait_for(azure, taken.id).status == "completed"


def test_openai_paths_keep_openai_endpoint_names(shared_client: OpenAI) -> None:
    file_id = shared_client.files.create(
        file=("in.jsonl", jsonl([chat_line("a", "hi")])), purpose="batch"
    ).id
    with pytest.raises(openai.BadRequestError) as info:
        shared_client.batches.create(
            input_file_id=file_id,
            endpoint="/chat/completions",
            completion_window="24h",
        )
    assert info.value.body["param"] == "endpoint"  # type: ignore[index]
