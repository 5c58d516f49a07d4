"""API-key authentication of the local Batch API, in OpenAI's and Azure OpenAI's forms."""

from __future__ import annotations

import hmac

import orjson
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from batch_pipeline.local_api.azure import AZURE_BAD_KEY_MESSAGE, AZURE_KEY_HEADER, is_azure_path
from batch_pipeline.local_api.errors import ApiError


class ApiKeyAuth:
    """ASGI middleware: every HTTP request needs the key, as `Authorization: Bearer <key>`
    or, on the Azure paths, as Azure's `api-key: <key>` header."""

    def __init__(self, app: ASGIApp, api_key: str) -> None:
        self.app = app
        self._key = api_key.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        azure = is_azure_path(scope["path"])
        headers = dict(scope["headers"])
        scheme, _, bearer = headers.get(b"authorization", b"").partition(b" ")
        offered = [bearer.strip()] if scheme.lower() == b"bearer" else []
        if azure and AZURE_KEY_HEADER in headers:
            offered.append(headers[AZURE_KEY_HEADER].strip())
        if any(hmac.compare_digest(token, self._key) for token in offered):
            await self.app(scope, receive, send)
            return
        sent = b"authorization" in headers or (azure and AZURE_KEY_HEADER in headers)
        error = _auth_error(sent, azure)
        response = Response(
            orjson.dumps(error.body()), status_code=error.status, media_type="application/json"
        )
        await response(scope, receive, send)


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
