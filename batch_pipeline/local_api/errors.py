"""OpenAI-shaped errors: `{"error": {"message", "type", "param", "code"}}`."""

from __future__ import annotations

from typing import Any

# The `type` OpenAI puts in an error body, by HTTP status.
_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    403: "permission_error",
    404: "invalid_request_error",
    409: "invalid_request_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "requests",
}

# The `code` used by the `<<fail:CODE>>` fault trigger's simulated error bodies.
_FAULT_CODES = {
    400: "invalid_request",
    401: "invalid_api_key",
    403: "permission_denied",
    404: "not_found",
    408: "timeout",
    409: "conflict",
    422: "invalid_request",
    429: "rate_limit_exceeded",
    500: "server_error",
    502: "bad_gateway",
    503: "service_unavailable",
    504: "timeout",
}


def error_type_for_status(status: int) -> str:
    """The OpenAI error `type` that goes with an HTTP status."""
    return _TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")


def error_body(
    message: str,
    *,
    type: str = "invalid_request_error",
    param: str | None = None,
    code: str | None = None,
) -> dict[str, Any]:
    """An OpenAI error body."""
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def fault_error_body(status: int) -> dict[str, Any]:
    """The error body a `<<fail:STATUS>>` request gets."""
    return error_body(
        f"Simulated failure with HTTP status {status} (fault trigger <<fail:{status}>>).",
        type=error_type_for_status(status),
        code=_FAULT_CODES.get(status, "server_error" if status >= 500 else "invalid_request"),
    )


class ApiError(Exception):
    """An error answered to the HTTP client in OpenAI's shape."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        type: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.given_type = type  # as raised; another dialect maps the status itself
        self.type = type or error_type_for_status(status)
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        """The JSON body of this error."""
        return error_body(self.message, type=self.type, param=self.param, code=self.code)
