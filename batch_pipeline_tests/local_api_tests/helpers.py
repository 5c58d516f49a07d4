"""Helpers of the local Batch API tests: request lines, uploads, polling, downloads."""

from __future__ import annotations

import time
from typing import Any

import httpx2
import orjson
from openai import OpenAI
from openai.types import Batch

TERMINAL = ("completed", "failed", "expired", "cancelled")
CHAT = "/v1/chat/completions"
MODEL = "gpt-4o-mini"
# An empty list page: the spec types first_id and last_id as strings, so they are "", not null.
EMPTY_PAGE = {"object": "list", "data": [], "first_id": "", "last_id": "", "has_more": False}


def chat_line(custom_id: str, text: str, *, model: str = MODEL, **body: Any) -> dict[str, Any]:
    """One chat-completions request line."""
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": CHAT,
        "body": {"model": model, "messages": [{"role": "user", "content": text}], **body},
    }


def jsonl(lines: list[Any]) -> bytes:
    """JSON lines; a bytes item is written as is (for malformed lines)."""
    return b"".join((x if isinstance(x, bytes) else orjson.dumps(x)) + b"\n" for x in lines)


def upload(client: OpenAI, lines: list[Any], name: str = "input.jsonl") -> str:
    """Upload request lines with purpose=batch; returns the file id."""
    return client.files.create(file=(name, jsonl(lines)), purpose="batch").id


def submit(client: OpenAI, lines: list[Any], endpoint: str = CHAT, **kwargs: Any) -> Batch:
    """Upload lines and create a batch on them."""
    return client.batches.create(
        input_file_id=upload(client, lines),
        endpoint=endpoint,  # type: ignore[arg-type]
        completion_window="24h",
        **kwargs,
    )


def wait_for(
    client: OpenAI, batch_id: str, statuses: tuple[str, ...] = TERMINAL, timeout: float = 20.0
) -> Batch:
    """Poll a batch until its status is one of `statuses`."""
    deadline = time.monotonic() + timeout
    while True:
        batch = client.batches.retrieve(batch_id)
        if batch.status in statuses:
            return batch
        if time.monotonic() > deadline:
            raise AssertionError(f"batch {batch_id} still {batch.status} after {timeout}s")
        time.sleep(0.05)


def wait_until(predicate: Any, timeout: float = 20.0, interval: float = 0.05) -> Any:
    """Poll `predicate()` until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(interval)


def wait_for_completed(client: OpenAI, batch_id: str, count: int) -> None:
    """Poll a batch until `count` of its requests have completed."""
    wait_until(
        lambda: (c := client.batches.retrieve(batch_id).request_counts) and c.completed == count
    )


def read_lines(client: OpenAI, file_id: str | None) -> list[dict[str, Any]]:
    """The JSON lines of a file (none for a null id)."""
    if file_id is None:
        return []
    content = client.files.content(file_id).content
    return [orjson.loads(line) for line in content.splitlines() if line.strip()]


def by_custom_id(lines: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Result lines keyed by custom_id (asserting each appears once)."""
    keyed = {line["custom_id"]: line for line in lines}
    assert len(keyed) == len(lines), "a custom_id appears more than once"
    return keyed


def assert_empty_list(api_url: str, path: str, sdk_list: Any) -> None:
    """`path` lists nothing: over HTTP, and through the SDK as one page and auto-paging."""
    assert httpx2.get(f"{api_url}/{path}").json() == EMPTY_PAGE
    page = sdk_list()
    assert page.data == [] and page.has_more is False
    assert page.to_dict() == EMPTY_PAGE
    assert list(sdk_list()) == []  # auto-paging stops on the empty page
