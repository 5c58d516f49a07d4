"""Outcome lines parsed one by one with orjson: every endpoint's layout, and the parser that
names the line at fault in a malformed file."""

from __future__ import annotations

import base64
import gc
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import orjson
import pyarrow as pa

from batch_pipeline.core._outcome_rows import OUTCOME_SCHEMA, OutcomeFileError, classify, id_hashes
from batch_pipeline.core.jsonl import LineSource
from batch_pipeline.core.types import Endpoint


@contextmanager
def gc_paused() -> Iterator[None]:
    """Run the block with the cyclic garbage collector off.

    Parsing makes hundreds of thousands of short-lived dicts and tuples, freed by reference
    counting (no cycles); the collector's repeated scans of them cost a third of the time.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


_Extracted = tuple[Any, Any, Any, Any]


class _Malformed(Exception):
    """A line that cannot be read, for the reason given; the caller names its file and line."""


def parse_lines(
    lines: list[bytes], path: LineSource, first_line: int, endpoint: str
) -> tuple[pa.RecordBatch, np.ndarray]:
    """Consecutive lines of `path`, the first numbered `first_line`, as an outcome batch and
    the hashes of their custom_ids.

    This loop is the hot path: one orjson parse per line, then plain tuple building.
    """
    extract = _EXTRACTORS.get(endpoint, _extract_chat)
    rows: list[tuple[Any, ...]] = []
    for index, raw in enumerate(lines):
        try:
            row = _row(raw, extract)
        except _Malformed as exc:
            raise OutcomeFileError(f"{path}, line {first_line + index}: {exc}") from None
        if row is not None:
            rows.append(row)
    if not rows:
        return _empty_batch()
    columns = zip(*rows, strict=True)
    try:
        arrays = [pa.array(c, type=f.type) for c, f in zip(columns, OUTCOME_SCHEMA, strict=True)]
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        last_line = first_line + len(lines) - 1
        raise OutcomeFileError(
            f"{path}, lines {first_line}-{last_line}: a value of the wrong type ({exc})"
        ) from None
    return pa.record_batch(arrays, schema=OUTCOME_SCHEMA), id_hashes(arrays[0])


def _row(raw: bytes, extract: Callable[[Any], _Extracted]) -> tuple[Any, ...] | None:
    """One line's outcome row, in `OUTCOME_SCHEMA`'s order; None for a blank line."""
    try:
        line = orjson.loads(raw)
        custom_id = line["custom_id"]
        response = line.get("response")
    except orjson.JSONDecodeError as exc:
        if not raw.strip():
            return None
        raise _Malformed(f"not JSON ({exc})") from None
    except (KeyError, TypeError, AttributeError):
        raise _Malformed("no custom_id") from None
    if not isinstance(custom_id, str):
        raise _Malformed("custom_id is not a string")
    if response:
        http_status, body, answer, (code, message) = _response(response, extract)
    else:
        http_status, body, answer = None, None, _NO_ANSWER
        code, message = _error_fields(line.get("error"))
        if code is None and message is None:
            raise _Malformed("neither a response nor an error")
    text, embedding, input_tokens, output_tokens = answer
    row_status, retryable = classify(http_status, code)
    return (
        custom_id,
        row_status,  # a str Enum: Arrow takes it as the string
        retryable,
        http_status,
        text,
        None if body is None else orjson.dumps(body),
        embedding,
        code,
        message,
        input_tokens,
        output_tokens,
        line.get("id"),
    )


_NO_ANSWER: _Extracted = (None, None, None, None)
_NO_ERROR = (None, None)


def _response(
    response: Any, extract: Callable[[Any], _Extracted]
) -> tuple[int, Any, _Extracted, tuple[str | None, str | None]]:
    """(HTTP status, body, the answer's fields, the error's code and message) of a response."""
    try:
        http_status = int(response["status_code"])
        body = response.get("body")
    except (KeyError, TypeError, ValueError, AttributeError):
        raise _Malformed("response has no status_code") from None
    if not 200 <= http_status < 300:
        code, message = _error_fields(body)
        return http_status, body, _NO_ANSWER, (code or f"http_{http_status}", message)
    try:
        return http_status, body, extract(body), _NO_ERROR
    except (KeyError, IndexError, TypeError, AttributeError, ValueError):
        # An answer of an unexpected shape is kept whole in response_json.
        return http_status, body, _NO_ANSWER, _NO_ERROR


def _empty_batch() -> tuple[pa.RecordBatch, np.ndarray]:
    return pa.RecordBatch.from_pylist([], schema=OUTCOME_SCHEMA), np.empty(0, np.int64)


def _error_fields(error: Any) -> tuple[str | None, str | None]:
    """`code` and `message` of an error object (or of a body holding one under `error`)."""
    if error is None:
        return None, None
    if not isinstance(error, dict):
        return None, str(error)
    inner = error.get("error")
    # Anthropic's errors ({"type": "error", "error": {"type", "message"}}) have no code but
    # their type (`overloaded_error`).
    anthropic = error.get("type") == "error" and isinstance(inner, dict)
    if isinstance(inner, dict):
        error = inner
    code, message = error.get("type" if anthropic else "code"), error.get("message")
    return (None if code is None else str(code)), (None if message is None else str(message))


def _extract_chat(body: dict[str, Any]) -> _Extracted:
    usage = body.get("usage") or {}
    choices = body.get("choices")
    text = choices[0]["message"].get("content") if choices else None
    if not isinstance(text, str):  # content parts or a tool call: see response_json
        text = None
    return text, None, usage.get("prompt_tokens"), usage.get("completion_tokens")


def _extract_completion(body: dict[str, Any]) -> _Extracted:
    usage = body.get("usage") or {}
    choices = body.get("choices")
    text = choices[0].get("text") if choices else None
    if not isinstance(text, str):
        text = None
    return text, None, usage.get("prompt_tokens"), usage.get("completion_tokens")


def _extract_response(body: dict[str, Any]) -> _Extracted:
    usage = body.get("usage") or {}
    parts = [
        part["text"]
        for item in body.get("output") or ()
        for part in item.get("content") or ()
        if part.get("type") == "output_text"
    ]
    text = "".join(parts) if parts else None
    return text, None, usage.get("input_tokens"), usage.get("output_tokens")


def _extract_moderation(body: dict[str, Any]) -> _Extracted:
    """The first input's verdict as text: `flagged: <categories>` or `not flagged` (the
    scores are in response_json). Moderations report no token usage."""
    result = body["results"][0]
    flagged = [name for name, hit in (result.get("categories") or {}).items() if hit]
    if not result.get("flagged"):
        return "not flagged", None, None, None
    return f"flagged: {', '.join(flagged)}" if flagged else "flagged", None, None, None


def _extract_embedding(body: dict[str, Any]) -> _Extracted:
    """The first input's vector (lowest `index`); a request with several inputs keeps only it."""
    usage = body.get("usage") or {}
    data = body.get("data") or ()
    embedding = None
    if data:
        first = data[0] if len(data) == 1 else min(data, key=lambda item: item.get("index", 0))
        embedding = first.get("embedding")
        if isinstance(embedding, str):  # encoding_format=base64: little-endian float32
            embedding = np.frombuffer(base64.b64decode(embedding), dtype="<f4").tolist()
    return None, embedding, usage.get("prompt_tokens"), 0 if usage else None


def _extract_message(body: dict[str, Any]) -> _Extracted:
    """An Anthropic Message: its text blocks joined; a message without text that calls a
    tool (the output schema's forced call) gives the call's input, as JSON."""
    usage = body.get("usage") or {}
    content = body.get("content") or ()
    parts = [block["text"] for block in content if block.get("type") == "text"]
    if parts:
        text = "".join(parts)
    else:
        call = next((block for block in content if block.get("type") == "tool_use"), None)
        text = None if call is None else orjson.dumps(call["input"]).decode()
    return text, None, usage.get("input_tokens"), usage.get("output_tokens")


_EXTRACTORS: dict[str, Callable[[Any], _Extracted]] = {
    Endpoint.CHAT_COMPLETIONS.value: _extract_chat,
    Endpoint.RESPONSES.value: _extract_response,
    Endpoint.EMBEDDINGS.value: _extract_embedding,
    Endpoint.COMPLETIONS.value: _extract_completion,
    Endpoint.MODERATIONS.value: _extract_moderation,
    Endpoint.MESSAGES.value: _extract_message,
}
