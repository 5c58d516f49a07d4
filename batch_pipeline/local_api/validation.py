"""Streaming validation of a batch input file, with OpenAI-style error codes.

The file is read one line at a time (never whole). Errors carry the 1-based `line` for
per-line problems. Codes (what `errors.data[].code` can be):

=============================  ==================================================  ===========
code                           meaning                                             param
=============================  ==================================================  ===========
invalid_json_line              the line is not valid JSON / not a JSON object       -
line_too_long                  one line is larger than the per-line limit           -
missing_required_parameter     `custom_id`, `method`, `url`, `body`, `body.model`   that field
invalid_parameter              a field has the wrong type (e.g. `custom_id` not     that field
                               a non-empty string, `body` not an object)
invalid_method                 `method` is not `POST`                               method
invalid_url                    `url` is not an endpoint the Batch API supports      url
mismatched_url                 `url` differs from the batch's `endpoint`            url
duplicate_custom_id            a `custom_id` already used on an earlier line        custom_id
mismatched_model               `body.model` differs from the first line's model     body.model
empty_file                     the file holds no request                            -
too_many_requests              more request lines than the limit (50,000)           -
too_many_embedding_inputs      an embeddings batch with over 50,000 inputs          -
file_too_large                 the file is larger than the limit (200 MB)           -
file_not_found                 the input file was deleted before validation         -
token_limit_exceeded           the model's enqueued prompt tokens would pass the    -
                               service's limit (checked by the engine, not here)
=============================  ==================================================  ===========
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from batch_pipeline.core.tokens import count_tokens
from batch_pipeline.local_api.azure import with_v1
from batch_pipeline.local_api.faults import content_text

SUPPORTED_ENDPOINTS = (
    "/v1/responses",
    "/v1/chat/completions",
    "/v1/embeddings",
    "/v1/completions",
    "/v1/moderations",
    "/v1/images/generations",
    "/v1/images/edits",
    "/v1/videos",
)
# Endpoints whose body may omit `model` (the service picks a default).
MODEL_OPTIONAL_ENDPOINTS = frozenset({"/v1/moderations"})
MAX_EMBEDDING_INPUTS = 50_000
MAX_LINE_BYTES = 64 * 1024 * 1024
MAX_REPORTED_ERRORS = 100


@dataclass
class ValidationResult:
    """What validation found: errors (empty when valid), request count, the model and (when
    asked for) the exact prompt tokens of all requests."""

    errors: list[dict[str, Any]] = field(default_factory=list)
    total: int = 0
    model: str | None = None
    prompt_tokens: int = 0

    @property
    def ok(self) -> bool:
        return not self.errors


def batch_error(
    code: str, message: str, *, line: int | None = None, param: str | None = None
) -> dict[str, Any]:
    """One entry of a batch's `errors.data`."""
    return {"code": code, "message": message, "param": param, "line": line}


def read_lines(f: Any) -> Any:
    """Yield (line_number, raw_line_or_None) from a binary file, one line at a time.

    A line longer than MAX_LINE_BYTES yields None (and is skipped without being held whole).
    """
    number = 0
    while True:
        raw = f.readline(MAX_LINE_BYTES + 1)
        if not raw:
            return
        number += 1
        if len(raw) > MAX_LINE_BYTES and not raw.endswith(b"\n"):
            while raw and not raw.endswith(b"\n"):
                raw = f.readline(MAX_LINE_BYTES)
            yield number, None
            continue
        yield number, raw


def validate_input_file(
    path: Path,
    *,
    endpoint: str,
    max_requests: int,
    max_bytes: int,
    count_prompt_tokens: bool = False,
    azure: bool = False,
) -> ValidationResult:
    """Check every line of a batch input file as OpenAI does, streaming it; with
    `count_prompt_tokens`, also count its prompt tokens with the model's tokenizer. With
    `azure`, a line's url may leave out `/v1` (`/chat/completions`), as Azure's may."""
    result = ValidationResult()
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        result.errors.append(batch_error("file_not_found", "The input file no longer exists."))
        return result
    if size > max_bytes:
        result.errors.append(
            batch_error(
                "file_too_large",
                f"The input file is {size} bytes; the limit is {max_bytes} bytes.",
            )
        )
        return result

    errors = result.errors
    seen_ids: set[str] = set()
    embedding_inputs = 0
    with open(path, "rb") as f:
        for number, raw in read_lines(f):
            if len(errors) >= MAX_REPORTED_ERRORS:
                break
            if raw is None:
                errors.append(
                    batch_error(
                        "line_too_long",
                        f"Line {number} is larger than {MAX_LINE_BYTES} bytes.",
                        line=number,
                    )
                )
                result.total += 1
                continue
            if not raw.strip():
                continue
            result.total += 1
            if result.total > max_requests:
                errors.append(
                    batch_error(
                        "too_many_requests",
                        f"The input file has more than {max_requests} requests, "
                        f"the most a batch may hold.",
                    )
                )
                break
            error = _check_line(raw, number, endpoint, seen_ids, result, azure=azure)
            if error is not None:
                errors.append(error)
                continue
            if endpoint == "/v1/embeddings" or count_prompt_tokens:
                body = orjson.loads(raw)["body"]
            if endpoint == "/v1/embeddings":
                embedding_inputs += _count_embedding_inputs(body)
            if count_prompt_tokens:
                model = str(body.get("model") or "")
                result.prompt_tokens += sum(
                    count_tokens(text, model) for text in prompt_texts(endpoint, body) if text
                )
    if not errors and result.total == 0:
        errors.append(batch_error("empty_file", "The input file holds no requests."))
    if not errors and embedding_inputs > MAX_EMBEDDING_INPUTS:
        errors.append(
            batch_error(
                "too_many_embedding_inputs",
                f"The embeddings batch has {embedding_inputs} inputs; the limit is "
                f"{MAX_EMBEDDING_INPUTS}.",
            )
        )
    return result


def _check_line(
    raw: bytes,
    number: int,
    endpoint: str,
    seen_ids: set[str],
    result: ValidationResult,
    *,
    azure: bool = False,
) -> dict[str, Any] | None:
    try:
        request = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return batch_error("invalid_json_line", f"Line {number} is not valid JSON.", line=number)
    if not isinstance(request, dict):
        return batch_error("invalid_json_line", f"Line {number} is not a JSON object.", line=number)
    for name in ("custom_id", "method", "url", "body"):
        if name not in request or request[name] is None:
            return batch_error(
                "missing_required_parameter",
                f"Line {number} is missing the required parameter '{name}'.",
                line=number,
                param=name,
            )
    custom_id = request["custom_id"]
    if not isinstance(custom_id, str) or not custom_id:
        return batch_error(
            "invalid_parameter",
            f"Line {number}: 'custom_id' must be a non-empty string.",
            line=number,
            param="custom_id",
        )
    if request["method"] != "POST":
        return batch_error(
            "invalid_method",
            f"Line {number}: method must be 'POST', not {request['method']!r}.",
            line=number,
            param="method",
        )
    url = request["url"]
    if azure and isinstance(url, str):
        url = with_v1(url)
    if url != endpoint:
        if url in SUPPORTED_ENDPOINTS:
            return batch_error(
                "mismatched_url",
                f"Line {number}: url {url!r} differs from the batch endpoint {endpoint!r}.",
                line=number,
                param="url",
            )
        return batch_error(
            "invalid_url",
            f"Line {number}: url {url!r} is not a supported endpoint.",
            line=number,
            param="url",
        )
    body = request["body"]
    if not isinstance(body, dict):
        return batch_error(
            "invalid_parameter",
            f"Line {number}: 'body' must be a JSON object.",
            line=number,
            param="body",
        )
    if custom_id in seen_ids:
        return batch_error(
            "duplicate_custom_id",
            f"Line {number}: custom_id {custom_id!r} is already used on an earlier line.",
            line=number,
            param="custom_id",
        )
    seen_ids.add(custom_id)
    model = body.get("model")
    if model is None:
        if endpoint in MODEL_OPTIONAL_ENDPOINTS:
            return None
        return batch_error(
            "missing_required_parameter",
            f"Line {number} is missing the required parameter 'body.model'.",
            line=number,
            param="body.model",
        )
    if not isinstance(model, str) or not model:
        return batch_error(
            "invalid_parameter",
            f"Line {number}: 'body.model' must be a non-empty string.",
            line=number,
            param="body.model",
        )
    if result.model is None:
        result.model = model
    elif model != result.model:
        return batch_error(
            "mismatched_model",
            f"Line {number}: model {model!r} differs from {result.model!r} used on earlier "
            f"lines; a batch holds one model.",
            line=number,
            param="body.model",
        )
    return None


def _count_embedding_inputs(body: dict[str, Any]) -> int:
    value = body.get("input")
    if isinstance(value, list) and value and not isinstance(value[0], int):
        return len(value)
    return 1


def prompt_texts(endpoint: str, body: dict[str, Any]) -> list[str]:
    """The texts of a request body that the endpoint counts as prompt (input) tokens: every
    message of a chat, the instructions and input of a response, the inputs of the rest."""
    if endpoint == "/v1/chat/completions":
        messages = body.get("messages")
        if not isinstance(messages, list):
            return []
        return [content_text(m.get("content")) for m in messages if isinstance(m, dict)]
    texts: list[str] = []
    if endpoint == "/v1/responses" and isinstance(body.get("instructions"), str):
        texts.append(body["instructions"])
    value = body.get("prompt" if endpoint == "/v1/completions" else "input")
    if isinstance(value, str):
        texts.append(value)
    elif isinstance(value, list):
        for item in value:
            if isinstance(item, str):
                texts.append(item)
            elif isinstance(item, dict):
                texts.append(content_text(item.get("content")))
    return texts
