"""What answers a batch's requests: the shapes of an answer and what a responder offers.

A responder answers `(status_code, body)`: the HTTP status and JSON body the live endpoint
would have answered (`respond_async` adds the upstream's request id). Fault triggers
(faults.py), where the settings honour them, are handled by the engine before a responder
is asked, so they behave the same with any responder.
"""

from __future__ import annotations

from typing import Any, Protocol

from batch_pipeline.local_api.errors import error_body
from batch_pipeline.local_api.upstream import Flight

Answer = tuple[int, dict[str, Any]]
Reply = tuple[int, dict[str, Any], str | None]  # an Answer and the upstream's request id


class UpstreamUnavailable(Exception):
    """The upstream server gave a request no HTTP answer, even after its retries."""


class Responder(Protocol):
    """What the batch engine needs of a responder (echo.py, proxy.py)."""

    is_async: bool

    def respond(self, endpoint: str, body: dict[str, Any], key: str | None = None) -> Any: ...

    async def respond_async(
        self, endpoint: str, body: dict[str, Any], flight: Flight | None = None
    ) -> Reply: ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...


def bad_request(message: str, param: str | None = None, code: str | None = None) -> Answer:
    """A 400 answer with an OpenAI error body."""
    return 400, error_body(message, param=param, code=code)


def responder_failure(exc: BaseException) -> Answer:
    """The 500 answer of a request on which the responder itself raised."""
    return 500, error_body(
        f"The responder failed: {type(exc).__name__}",
        type="server_error",
        code="server_error",
    )
