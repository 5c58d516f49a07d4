"""A tiny OpenAI-compatible chat server on loopback, to put behind the proxy responder.

It misbehaves on purpose, by words in the user text (`flaky`, `busy`, `broken`, `invalid`,
`sleepy`), and can be stopped and started again on the same port, as an upstream restart.
"""

from __future__ import annotations

import asyncio
import itertools
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

UPSTREAM_KEY = "sk-upstream-secret"


def _error(status: int, message: str, type: str, code: str | None, **kw: Any) -> JSONResponse:
    body = {"error": {"message": message, "type": type, "param": None, "code": code}}
    return JSONResponse(body, status, **kw)


# A user-text word -> the error answered (on the first call only, where `once`).
_MISBEHAVIOUR: dict[str, tuple[bool, int, str, str, str | None]] = {
    "flaky": (True, 503, "overloaded", "server_error", None),
    "busy": (True, 429, "slow down", "requests", "rate_limit_exceeded"),
    "broken": (False, 500, "always down", "server_error", None),
    "invalid": (False, 400, "no", "invalid_request_error", None),
}


@dataclass
class Upstream:
    """The server's state: calls per user text, requests in flight, request ids issued."""

    url: str = ""
    calls: Counter[str] = field(default_factory=Counter)
    delay: float = 0.0
    sleepy_seconds: float = 1.0  # how long the first call of a `sleepy` text takes
    in_flight: int = 0
    max_in_flight: int = 0
    request_ids: dict[str, str] = field(default_factory=dict)  # user text -> last id
    _ids: Iterator[int] = field(default_factory=itertools.count)

    async def chat(self, request: Request) -> JSONResponse:
        if request.headers.get("authorization") != f"Bearer {UPSTREAM_KEY}":
            return _error(401, "bad key", "invalid_request_error", "invalid_api_key")
        body = await request.json()
        text = body["messages"][-1]["content"]
        self.calls[text] += 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await asyncio.sleep(self.delay)
            if "sleepy" in text and self.calls[text] == 1:
                await asyncio.sleep(self.sleepy_seconds)
        finally:
            self.in_flight -= 1
        request_id = f"req_up_{next(self._ids)}"
        self.request_ids[text] = request_id
        headers = {"x-request-id": request_id, "retry-after": "0"}
        for word, (once, status, message, type, code) in _MISBEHAVIOUR.items():
            if word in text and (not once or self.calls[text] == 1):
                return _error(status, message, type, code, headers=headers)
        return JSONResponse(
            {
                "id": "chatcmpl-up",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body["model"],
                "choices": [
                    {
                        "index": 0,
                        "finish_reason": "stop",
                        "message": {"role": "assistant", "content": f"upstream: {text}"},
                    }
                ],
                "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10},
            },
            headers=headers,
        )


class UpstreamServer:
    """Runs an Upstream's app in a thread; `stop()` and `start()` again keep its port."""

    def __init__(self, state: Upstream) -> None:
        self.state = state
        self.port = 0
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        app = Starlette(routes=[Route("/v1/chat/completions", self.state.chat, methods=["POST"])])
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        self.port = sock.getsockname()[1]
        server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
        thread.start()
        while not server.started:
            time.sleep(0.01)
        self._server, self._thread = server, thread
        self.state.url = f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        """Stop listening: connections to the port are refused until `start()`."""
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(10)
        self._server = self._thread = None


@pytest.fixture
def upstream_server() -> Iterator[UpstreamServer]:
    """A started upstream server, stopped after the test."""
    server = UpstreamServer(Upstream())
    server.start()
    yield server
    server.stop()


@pytest.fixture
def upstream(upstream_server: UpstreamServer) -> Upstream:
    """The started upstream server's state."""
    return upstream_server.state


@pytest.fixture
def proxy_options(upstream: Upstream, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Local Batch API options that proxy to the upstream, with short retry delays."""
    monkeypatch.setenv("UPSTREAM_TEST_KEY", UPSTREAM_KEY)
    return {
        "responder": "proxy",
        "upstream_url": upstream.url,
        "upstream_api_key_env": "UPSTREAM_TEST_KEY",
        "upstream_backoff_seconds": 0.05,
        "upstream_max_retries": 3,
        "concurrency": 4,
    }
