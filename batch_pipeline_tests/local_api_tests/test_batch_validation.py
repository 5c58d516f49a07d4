"""Input files OpenAI would refuse end `failed`, with errors.data[] naming code, line, param."""

from __future__ import annotations

from typing import Any

import pytest
from openai import OpenAI

from batch_pipeline_tests.local_api_tests.conftest import StartApi
from batch_pipeline_tests.local_api_tests.helpers import chat_line, submit, wait_for

pytestmark = pytest.mark.slow

GOOD = chat_line("good-1", "fine")


def _without(name: str) -> dict[str, Any]:
    line = chat_line("x", "hi")
    del line[name]
    return line


CASES: list[tuple[str, list[Any], str, int | None, str | None]] = [
    ("not json", [GOOD, b'{"custom_id": "x", "method": '], "invalid_json_line", 2, None),
    ("not an object", [GOOD, b"[1, 2, 3]"], "invalid_json_line", 2, None),
    ("no custom_id", [GOOD, _without("custom_id")], "missing_required_parameter", 2, "custom_id"),
    ("no method", [_without("method")], "missing_required_parameter", 1, "method"),
    (
        "no url",
        [GOOD, GOOD | {"custom_id": "g2"}, _without("url")],
        "missing_required_parameter",
        3,
        "url",
    ),
    ("no body", [_without("body")], "missing_required_parameter", 1, "body"),
    (
        "no model",
        [GOOD, {**chat_line("m", "hi"), "body": {"messages": []}}],
        "missing_required_parameter",
        2,
        "body.model",
    ),
    ("GET", [GOOD, chat_line("x", "hi") | {"method": "GET"}], "invalid_method", 2, "method"),
    (
        "other endpoint",
        [GOOD, chat_line("x", "hi") | {"url": "/v1/embeddings"}],
        "mismatched_url",
        2,
        "url",
    ),
    ("unknown url", [chat_line("x", "hi") | {"url": "/v2/whatever"}], "invalid_url", 1, "url"),
    (
        "duplicate id",
        [GOOD, chat_line("x", "a"), chat_line("good-1", "b")],
        "duplicate_custom_id",
        3,
        "custom_id",
    ),
    (
        "two models",
        [GOOD, chat_line("x", "hi", model="gpt-4o")],
        "mismatched_model",
        2,
        "body.model",
    ),
    ("empty id", [chat_line("", "hi")], "invalid_parameter", 1, "custom_id"),
    ("empty file", [], "empty_file", None, None),
]


@pytest.mark.parametrize(
    ("lines", "code", "line", "param"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_invalid_input_fails_the_batch(
    shared_client: OpenAI, lines: list[Any], code: str, line: int | None, param: str | None
) -> None:
    client = shared_client
    batch = wait_for(client, submit(client, lines).id)

    assert batch.status == "failed"
    assert batch.failed_at is not None and batch.in_progress_at is None
    assert batch.output_file_id is None and batch.error_file_id is None
    assert batch.errors is not None and batch.errors.object == "list"
    errors = batch.errors.data or []
    assert [(e.code, e.line, e.param) for e in errors] == [(code, line, param)]
    assert errors[0].message


def test_every_bad_line_is_reported(client: OpenAI) -> None:
    lines = [GOOD, b"oops", chat_line("y", "hi") | {"method": "PUT"}, chat_line("good-1", "z")]
    batch = wait_for(client, submit(client, lines).id)
    errors = batch.errors.data if batch.errors else []
    assert [(e.code, e.line) for e in errors or []] == [
        ("invalid_json_line", 2),
        ("invalid_method", 3),
        ("duplicate_custom_id", 4),
    ]


def test_too_many_requests(start_api: StartApi) -> None:
    client = OpenAI(base_url=start_api(max_requests_per_batch=3), api_key="k", max_retries=0)
    ok = wait_for(client, submit(client, [chat_line(f"r{i}", "hi") for i in range(3)]).id)
    assert ok.status == "completed"
    batch = wait_for(client, submit(client, [chat_line(f"r{i}", "hi") for i in range(4)]).id)
    assert batch.status == "failed"
    assert [e.code for e in (batch.errors.data or [])] == ["too_many_requests"]  # type: ignore[union-attr]


def test_file_too_large(start_api: StartApi) -> None:
    client = OpenAI(base_url=start_api(max_batch_file_bytes=1000), api_key="k", max_retries=0)
    lines = [chat_line(f"r{i}", "x" * 100) for i in range(10)]
    batch = wait_for(client, submit(client, lines).id)
    assert batch.status == "failed"
    assert [e.code for e in (batch.errors.data or [])] == ["file_too_large"]  # type: ignore[union-attr]


def test_blank_lines_are_skipped(client: OpenAI) -> None:
    batch = wait_for(client, submit(client, [GOOD, b"", b"   ", chat_line("b", "hi")]).id)
    assert batch.status == "completed"
    assert batch.request_counts is not None and batch.request_counts.total == 2


def test_wrong_endpoint_for_the_whole_file(client: OpenAI) -> None:
    batch = wait_for(client, submit(client, [GOOD], endpoint="/v1/responses").id)
    assert batch.status == "failed"
    assert [(e.code, e.line) for e in (batch.errors.data or [])] == [("mismatched_url", 1)]  # type: ignore[union-attr]
