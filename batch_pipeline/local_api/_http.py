"""The HTTP plumbing of the service's routes: JSON responses, query and body parsing, and
the error handlers that answer every failure in OpenAI's error shape."""

from __future__ import annotations

import logging
from typing import Any

import orjson
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from batch_pipeline.local_api.anthropic import error_headers, is_anthropic_path
from batch_pipeline.local_api.anthropic import error_response_body as anthropic_error_body
from batch_pipeline.local_api.errors import ApiError

log = logging.getLogger(__name__)

MAX_JSON_BODY_BYTES = 1024 * 1024


class JSONResponse(Response):
    """A JSON response rendered with orjson."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def error_response(error: ApiError, path: str = "") -> JSONResponse:
    """The response of an ApiError, in the shape of the dialect whose `path` was asked."""
    if is_anthropic_path(path):
        body = anthropic_error_body(error)
        return JSONResponse(body, error.status, headers=error_headers(body, error.headers))
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers)


def int_param(request: Request, name: str, default: int, low: int, high: int) -> int:
    """An integer query parameter within [low, high] (`default` when absent)."""
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ApiError(
            400, f"Invalid '{name}': expected an integer.", param=name, code="invalid_value"
        ) from None
    if not low <= value <= high:
        raise ApiError(
            400,
            f"Invalid '{name}': must be between {low} and {high}.",
            param=name,
            code="invalid_value",
        )
    return value


def cursor_param(request: Request, name: str, pattern: Any) -> str | None:
    """A pagination cursor: an id of this API, or None when absent."""
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return None
    if not pattern.match(raw):
        raise ApiError(
            400, f"Invalid '{name}': not an id of this API.", param=name, code="invalid_value"
        )
    return raw


def list_body(data: list[dict[str, Any]], has_more: bool) -> dict[str, Any]:
    """A list page as the spec's ListFilesResponse / ListBatchesResponse has it.

    `first_id` and `last_id` are strings, never null: ListFilesResponse requires both and
    ListBatchesResponse types them as (optional, non-nullable) strings. An empty page has no
    ids to give, so both are the empty string there (which an `after` cursor ignores).
    """
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else "",
        "last_id": data[-1]["id"] if data else "",
        "has_more": has_more,
    }


async def json_object(request: Request) -> dict[str, Any]:
    """The request's JSON object body (at most MAX_JSON_BODY_BYTES)."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_JSON_BODY_BYTES:
            raise ApiError(413, "The request body is too large.", code="request_too_large")
        chunks.append(chunk)
    try:
        body = orjson.loads(b"".join(chunks))
    except orjson.JSONDecodeError:
        raise ApiError(
            400,
            "We could not parse the JSON body of your request. The body must be a JSON object.",
            code="invalid_json",
        ) from None
    if not isinstance(body, dict):
        raise ApiError(400, "The request body must be a JSON object.", code="invalid_json")
    return body


async def api_error(request: Request, exc: Exception) -> Response:
    """Answer an ApiError as raised."""
    assert isinstance(exc, ApiError)
    return error_response(exc, request.url.path)


async def http_error(request: Request, exc: Exception) -> Response:
    """Answer starlette's own errors (404, 405, ...) in OpenAI's shape."""
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        message = f"Invalid URL ({request.method} {request.url.path})"
    elif exc.status_code == 405:
        message = f"Method {request.method} not allowed on {request.url.path}."
    else:
        message = str(exc.detail)
    return error_response(ApiError(exc.status_code, message, headers=exc.headers), request.url.path)


async def server_error(request: Request, exc: Exception) -> Response:
    """Answer an unexpected exception with a 500 (logged, not shown)."""
    log.error("unexpected error on %s %s", request.method, request.url.path, exc_info=exc)
    error = ApiError(
        500,
        "The server had an error while processing your request.",
        type="server_error",
        code="server_error",
    )
    return error_response(error, request.url.path)
