"""The Anthropic dialect of the local Batch API: Message Batches, served beside OpenAI's.

What the official `anthropic` SDK sends, and how this service keeps it on the same engine:

- `POST /v1/messages/batches` carries the requests inline (`{"requests": [{"custom_id",
  "params"}]}`); they are checked at once (custom_id `^[a-zA-Z0-9_-]{1,64}$`, unique, at most
  100,000 requests and 256 MB) and written as the batch's JSONL input, each `params` the
  body of a `/v1/messages` request, which the engine runs as it runs any batch (the echo
  responder, the fault triggers, expiry, cancel). A `params` the Messages API would refuse
  (no `max_tokens`, say) is that request's `errored` result, as Anthropic validates params
  while it processes the batch.
- A batch's id is `msgbatch_` and the engine's hex; `processing_status` is `in_progress`,
  `canceling` or `ended`; `request_counts` are all `processing` until it ends.
- `GET .../results` streams `{"custom_id", "result": {"type": "succeeded" | "errored" |
  "canceled" | "expired", ...}}` lines made from the engine's output and error files, which
  are kept 29 days.
- The key comes in `x-api-key` (or `Authorization: Bearer`), every call needs an
  `anthropic-version` header, every answer has a `request-id` header, and errors are
  `{"type": "error", "error": {"type", "message"}, "request_id"}` (the header's id).
"""

from __future__ import annotations

import re
import secrets
from datetime import UTC, datetime
from typing import Any

import orjson

from batch_pipeline.local_api.echo_messages import anthropic_error
from batch_pipeline.local_api.errors import ApiError
from batch_pipeline.local_api.result_lines import CANCELLED_CODE, EXPIRED_CODE

ANTHROPIC_PREFIX = "/v1/messages"
ANTHROPIC_KEY_HEADER = b"x-api-key"
VERSION_HEADER = "anthropic-version"
WIRE_PREFIX = "msgbatch_"
STORE_PREFIX = "batch_"
CUSTOM_ID_RE = re.compile(r"\A[a-zA-Z0-9_-]{1,64}\Z")
RESULTS_KEPT_SECONDS = 29 * 86400
BAD_KEY_MESSAGE = "invalid x-api-key"
REQUEST_ID_HEADER = "request-id"

# The error `type` Anthropic puts in a body, by HTTP status.
_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}
_PROCESSING_STATUS = {
    "validating": "in_progress",
    "in_progress": "in_progress",
    "finalizing": "in_progress",
    "cancelling": "canceling",
}
_ENDED_AT = ("completed_at", "cancelled_at", "expired_at", "failed_at")
COUNT_NAMES = ("processing", "succeeded", "errored", "canceled", "expired")


def is_anthropic_path(path: str) -> bool:
    """Whether a request path is one of the Anthropic dialect's."""
    return path == ANTHROPIC_PREFIX or path.startswith(ANTHROPIC_PREFIX + "/")


def error_type_for_status(status: int) -> str:
    """The Anthropic error `type` that goes with an HTTP status."""
    return _TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")


def new_request_id() -> str:
    """A request's id, as Anthropic sends it in the `request-id` header."""
    return f"req_{secrets.token_hex(12)}"


def error_response_body(error: ApiError) -> dict[str, Any]:
    """An ApiError in Anthropic's shape (its own type if it named one Anthropic uses)."""
    kind = error.given_type if error.given_type in _TYPES.values() else None
    body = anthropic_error(kind or error_type_for_status(error.status), error.message)
    return {**body, "request_id": new_request_id()}


def error_headers(body: dict[str, Any], headers: dict[str, str] | None) -> dict[str, str]:
    """The headers of an Anthropic error response: `headers` and the body's request id."""
    return {**(headers or {}), REQUEST_ID_HEADER: body["request_id"]}


def wire_id(store_id: str) -> str:
    """The id a client sees of an engine batch."""
    return WIRE_PREFIX + store_id.removeprefix(STORE_PREFIX)


def store_id(batch_id: str) -> str | None:
    """The engine's id of a Message Batch id (None if it is not one)."""
    if not batch_id.startswith(WIRE_PREFIX):
        return None
    return STORE_PREFIX + batch_id.removeprefix(WIRE_PREFIX)


def _rfc3339(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, UTC).isoformat().replace("+00:00", "Z")


def processing_status(record: dict[str, Any]) -> str:
    """`in_progress`, `canceling` or `ended`."""
    return _PROCESSING_STATUS.get(record["status"], "ended")


def message_batch(
    record: dict[str, Any], counts: dict[str, int] | None, base_url: str
) -> dict[str, Any]:
    """A batch record as a MessageBatch; `counts`, its results by type once it has ended."""
    ended = processing_status(record) == "ended"
    ended_at = next((record[name] for name in _ENDED_AT if record.get(name)), None)
    wire = wire_id(record["id"])
    total = record.get("_requests", 0)
    return {
        "id": wire,
        "type": "message_batch",
        "processing_status": processing_status(record),
        "request_counts": counts
        if ended and counts is not None
        else {name: total if name == "processing" else 0 for name in COUNT_NAMES},
        "ended_at": _rfc3339(ended_at) if ended else None,
        "created_at": _rfc3339(record["created_at"]),
        "expires_at": _rfc3339(record["expires_at"]),
        "archived_at": None,
        "cancel_initiated_at": _rfc3339(record.get("cancelling_at")),
        "results_url": f"{base_url.rstrip('/')}/v1/messages/batches/{wire}/results"
        if ended
        else None,
    }


def result_line(raw: bytes) -> tuple[bytes, str]:
    """An engine result line (OpenAI's output or error file form) as a Message Batch result
    line, and its result type."""
    line = orjson.loads(raw)
    result = _result(line.get("response"), line.get("error") or {})
    body = {"custom_id": line["custom_id"], "result": result}
    return orjson.dumps(body, option=orjson.OPT_APPEND_NEWLINE), result["type"]


def _result(response: dict[str, Any] | None, error: dict[str, Any]) -> dict[str, Any]:
    if response is None:
        code = error.get("code")
        if code == EXPIRED_CODE:
            return {"type": "expired"}
        if code == CANCELLED_CODE:
            return {"type": "canceled"}
        return _errored(500, str(error.get("message") or code or "the request failed"))
    status, answer = response["status_code"], response.get("body")
    if 200 <= status < 300:
        return {"type": "succeeded", "message": answer}
    if isinstance(answer, dict) and answer.get("type") == "error":
        return {"type": "errored", "error": answer}
    detail = answer.get("error") if isinstance(answer, dict) else None
    message = detail.get("message") if isinstance(detail, dict) else None
    return _errored(status, str(message or f"HTTP {status}"))


def _errored(status: int, message: str) -> dict[str, Any]:
    return {"type": "errored", "error": anthropic_error(error_type_for_status(status), message)}
