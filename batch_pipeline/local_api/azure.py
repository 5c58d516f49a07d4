"""The Azure OpenAI dialect of the local Batch API, served beside OpenAI's.

What the `openai` SDK's `AzureOpenAI` client sends: the same Files and Batches calls under
`/openai` instead of `/v1` (`{azure_endpoint}/openai/batches?api-version=2024-10-21`), the
key in an `api-key` header, and a deployment's name as the model. Where Azure differs:

- every call needs the `api-version` query parameter; without it Azure answers
  404 "Resource not found";
- a batch's endpoint and its lines' `url` may be written without `/v1`
  (`/chat/completions`, as Azure's documentation writes them) or with it;
- a global batch input file holds up to 100,000 requests (OpenAI: 50,000;
  `azure_max_requests_per_batch` in the settings);
- the completion window is `24h`, as on OpenAI.
"""

from __future__ import annotations

from starlette.requests import Request

from batch_pipeline.local_api.errors import ApiError

AZURE_PREFIX = "/openai"
API_VERSION_PARAM = "api-version"
AZURE_KEY_HEADER = b"api-key"
AZURE_BAD_KEY_MESSAGE = (
    "Access denied due to invalid subscription key or wrong API endpoint. Make sure to "
    "provide a valid key for an active subscription and use a correct regional API endpoint "
    "for your resource."
)


def is_azure_path(path: str) -> bool:
    """Whether a request path is one of the Azure dialect's."""
    return path.startswith(AZURE_PREFIX + "/")


def require_api_version(request: Request) -> None:
    """Refuse, as Azure does, a call without `api-version`."""
    if not request.query_params.get(API_VERSION_PARAM):
        raise ApiError(404, "Resource not found", code="404")


def with_v1(endpoint: str) -> str:
    """An endpoint in OpenAI's form: `/chat/completions` becomes `/v1/chat/completions`."""
    return endpoint if endpoint.startswith("/v1/") else "/v1" + endpoint
