"""API-key authentication of the local Batch API, in OpenAI's, Azure OpenAI's and
Anthropic's forms."""

from __future__ import annotations

import hmac

import orjson
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from batch_pipeline.local_api.anthropic import (
    ANTHROPIC_KEY_HEADER,
    BAD_KEY_MESSAGE,
    error_headers,
    error_response_body,
    is_anthropic_path,
)
from batch_pipeline.local_api.azure import AZURE_BAD_KEY_MESSAGE, AZURE_KEY_HEADER, is_azure_path
from batch_pipeline.local_api.errors import ApiError


class ApiKeyAuth:
    """ASGI middleware: every HTTP request needs the key, as `Authorization: Bearer <key>`
    or, on the Azure paths, as Azure's `api-key: <key>` header, on Anthropic's as its
    `x-api-key: <key>`."""

    def __init__(self, app: ASGIApp, api_key: str) -> None:
        self.app = app
        self._key = api_key.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        azure = is_azure_path(scope["path"])
        anthropic = is_anthropic_path(scope["path"])
        key_header = AZURE_KEY_HEADER if azure else ANTHROPIC_KEY_HEADER if anthropic else None
        headers = dict(scope["headers"])
        scheme, _, bearer = headers.get(b"authorization", b"").partition(b" ")
        offered = [bearer.strip()] if scheme.lower() == b"bearer" else []
        if key_header in headers:
            offered.append(headers[key_header].strip())
        if any(hmac.compare_digest(token, self._key) for token in offered):
            await self.app(scope, receive, send)
            return
        sent = b"authorization" in headers or key_header in headers
        error = _auth_error(sent, azure)
        body = error_response_body(_ANTHROPIC_BAD_KEY) if anthropic else error.body()
        response = Response(
            orjson.dumps(body),
            status_code=error.status,
            headers=error_headers(body, None) if anthropic else None,
            media_type="application/json",
        )
        await response(scope, receive, send)


_ANTHROPIC_BAD_KEY = ApiError(401, BAD_KEY_MESSAGE, type="authentication_error")


def _auth_error(sent: bool, azure: bool) -> ApiError:
    """The 401 for a missing or wrong key, in the words of the dialect asked."""
    if azure:
        return ApiError(401, AZURE_BAD_KEY_MESSAGE, code="401")
    if not sent:
        return ApiError(
            401,
            "You didn't provide an API key. You need to provide your API "
            "key in an Authorization header using Bearer auth "
            "(i.e. Authorization: Bearer YOUR_KEY).",
        )
    return ApiError(401, "Incorrect API key provided.", code="invalid_api_key")
