"""The proxy responder against a second, tiny OpenAI-compatible server started by the test."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import uvicorn
from openai import OpenAI
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from batch_pipeline_tests.local_api_tests.conftest import StartApi
from batch_pipeline_tests.local_api_tests.helpers import (
    MODEL,
    by_custom_id,
    chat_line,
    read_lines,
    submit,
    wait_for,
    wait_for_completed,
)

UPSTREAM_KEY = "sk-upstream-secret"


@dataclass
class Upstream:
    """A live chat-completions server that misbehaves on purpose."""

    url: str = ""
    calls: Counter[str] = field(default_factory=Counter)
    delay: float = 0.0
    in_flight: int = 0
    max_in_flight: int = 0

    async def chat(self, request: Request) -> JSONResponse:
        if request.headers.get("authorization") != f"Bearer {UPSTREAM_KEY}":
            return JSONResponse(
                {
                    "error": {
                        "message": "bad key",
                        "type": "invalid_request_error",
                        "param": None,
                        "code": "invalid_api_key",
                    }
                },
                401,
            )
        body = await request.json()
        text = body["messages"][-1]["content"]
        self.calls[text] += 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await asyncio.sleep(self.delay)
        finally:
            self.in_flight -= 1
        if "flaky" in text and self.calls[text] == 1:
            return JSONResponse(
                {
                    "error": {
                        "message": "overloaded",
                        "type": "server_error",
                        "param": None,
                        "code": None,
                    }
                },
                503,
            )
        if "busy" in text and self.calls[text] == 1:
            return JSONResponse(
                {
                    "error": {
                        "message": "slow down",
                        "type": "requests",
                        "param": None,
                        "code": "rate_limit_exceeded",
                    }
                },
                429,
                headers={"retry-after": "0"},
            )
        if "broken" in text:
            return JSONResponse(
                {
                    "error": {
                        "message": "always down",
                        "type": "server_error",
                        "param": None,
                        "code": None,
                    }
                },
                500,
            )
        if "invalid" in text:
            return JSONResponse(
                {
                    "error": {
                        "message": "no",
                        "type": "invalid_request_error",
                        "param": "messages",
                        "code": None,
                    }
                },
                400,
            )
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
            }
        )


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    state = Upstream()
    app = Starlette(routes=[Route("/v1/chat/completions", state.chat, methods=["POST"])])
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    state.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    yield state
    server.should_exit = True
    thread.join(10)
    sock.close()


@pytest.fixture
def proxy_options(upstream: Upstream, monkeypatch: pytest.MonkeyPatch) -> dict[str, object]:
    monkeypatch.setenv("UPSTREAM_TEST_KEY", UPSTREAM_KEY)
    return {
        "responder": "proxy",
        "upstream_url": upstream.url,
        "upstream_api_key_env": "UPSTREAM_TEST_KEY",
        "upstream_backoff_seconds": 0.05,
        "upstream_max_retries": 3,
        "concurrency": 4,
    }


def test_proxy_forwards_and_retries_transient_failures(
    start_api: StartApi, upstream: Upstream, proxy_options: dict[str, object]
) -> None:
    client = OpenAI(base_url=start_api(**proxy_options), api_key="k", max_retries=0)
    batch = wait_for(
        client,
        submit(
            client,
            [
                chat_line("plain", "hello"),
                chat_line("flaky", "flaky once"),
                chat_line("busy", "busy once"),
                chat_line("broken", "broken always"),
                chat_line("invalid", "invalid request"),
                chat_line("fault", "<<fail:429>>"),
            ],
        ).id,
    )

    assert batch.status == "completed"
    assert batch.request_counts is not None
    assert (batch.request_counts.completed, batch.request_counts.failed) == (3, 3)
    results = by_custom_id(read_lines(client, batch.output_file_id))
    for cid, text in (("plain", "hello"), ("flaky", "flaky once"), ("busy", "busy once")):
        response = results[cid]["response"]
        assert response["status_code"] == 200
        assert response["body"]["choices"][0]["message"]["content"] == f"upstream: {text}"
        assert response["body"]["model"] == MODEL
    assert upstream.calls["flaky once"] == 2 and upstream.calls["busy once"] == 2  # retried
    assert results["broken"]["response"]["status_code"] == 500  # final answer kept
    assert upstream.calls["broken always"] == 4  # first try + 3 retries
    assert results["invalid"]["response"]["status_code"] == 400
    assert upstream.calls["invalid request"] == 1  # a 400 is not retried
    assert results["fault"]["response"]["status_code"] == 429  # fault answered locally
    assert "<<fail:429>>" not in upstream.calls
    assert batch.usage is not None and batch.usage.input_tokens == 3 * 7


def test_proxy_keeps_concurrency_requests_in_flight(
    start_api: StartApi, upstream: Upstream, proxy_options: dict[str, object]
) -> None:
    upstream.delay = 0.15
    client = OpenAI(base_url=start_api(**proxy_options), api_key="k", max_retries=0)
    started = time.monotonic()
    batch = wait_for(client, submit(client, [chat_line(f"r{i}", f"q{i}") for i in range(16)]).id)
    assert batch.status == "completed"
    assert upstream.max_in_flight == 4  # the `concurrency` option
    assert time.monotonic() - started < 16 * 0.15  # not one at a time


def test_proxy_upstream_down_goes_to_error_file(start_api: StartApi) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}"  # nothing listens here
    url = start_api(
        responder="proxy", upstream_url=dead, upstream_max_retries=1, upstream_backoff_seconds=0.01
    )
    client = OpenAI(base_url=url, api_key="k", max_retries=0)
    batch = wait_for(client, submit(client, [chat_line("a", "hi")]).id)
    assert batch.status == "completed" and batch.output_file_id is None
    error = read_lines(client, batch.error_file_id)[0]
    assert error["custom_id"] == "a" and error["error"]["code"] == "upstream_unavailable"


def test_proxy_restart_does_not_resend_finished_requests(
    start_api: StartApi, upstream: Upstream, proxy_options: dict[str, object], tmp_path: Path
) -> None:
    state = tmp_path / "proxy-state"
    client = OpenAI(
        base_url=start_api(state_dir=state, **proxy_options), api_key="k", max_retries=0
    )
    lines = [chat_line(f"r{i}", f"q{i}") for i in range(10)] + [chat_line("s", "<<slow:1>> s")]
    batch = submit(client, lines)
    wait_for_completed(client, batch.id, 10)
    client.close()
    start_api.stop_all()

    client = OpenAI(
        base_url=start_api(state_dir=state, **proxy_options), api_key="k", max_retries=0
    )
    done = wait_for(client, batch.id)
    assert done.status == "completed"
    assert set(by_custom_id(read_lines(client, done.output_file_id))) == {
        f"r{i}" for i in range(10)
    } | {"s"}
    assert all(upstream.calls[f"q{i}"] == 1 for i in range(10))
    assert upstream.calls["<<slow:1>> s"] == 1
