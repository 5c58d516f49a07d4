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
from batch_pipeline.local_api.request_texts import prompt_texts

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
    one_model: bool = True,
) -> ValidationResult:
    """Check every line of a batch input file as OpenAI does, streaming it; with
    `count_prompt_tokens`, also count its prompt tokens with the model's tokenizer. With
    `azure`, a line's url may leave out `/v1` (`/chat/completions`), as Azure's may. Without
    `one_model` (Anthropic's batches), lines may name any model, or none: a body the model
    endpoint refuses is that request's error, not the batch's."""
    result = ValidationResult()
    error = _file_error(path, max_bytes)
    if error is not None:
        result.errors.append(error)
        return result
    check = _FileCheck(endpoint, max_requests, count_prompt_tokens, azure, result, one_model)
    with open(path, "rb") as f:
        check.lines(read_lines(f))
    result.errors.extend(check.whole_file_errors())
    return result


def _file_error(path: Path, max_bytes: int) -> dict[str, Any] | None:
    """The error of a file that is gone or too large to read at all."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return batch_error("file_not_found", "The input file no longer exists.")
    if size > max_bytes:
        return batch_error(
            "file_too_large",
            f"The input file is {size} bytes; the limit is {max_bytes} bytes.",
        )
    return None


@dataclass
class _FileCheck:
    """The checks of one input file's lines, and what they have seen so far."""

    endpoint: str
    max_requests: int
    count_prompt_tokens: bool
    azure: bool
    result: ValidationResult
    one_model: bool = True
    seen_ids: set[str] = field(default_factory=set)
    embedding_inputs: int = 0

    def lines(self, lines: Any) -> None:
        """Check (number, raw line) pairs until the end or too many errors."""
        result, errors = self.result, self.result.errors
        for number, raw in lines:
            if len(errors) >= MAX_REPORTED_ERRORS:
                break
            if raw is not None and not raw.strip():
                continue
            result.total += 1
            if raw is None:
                errors.append(
                    batch_error(
                        "line_too_long",
                        f"Line {number} is larger than {MAX_LINE_BYTES} bytes.",
                        line=number,
                    )
                )
                continue
            if result.total > self.max_requests:
                errors.append(
                    batch_error(
                        "too_many_requests",
                        f"The input file has more than {self.max_requests} requests, "
                        f"the most a batch may hold.",
                    )
                )
                break
            error = _check_line(
                raw,
                number,
                self.endpoint,
                self.seen_ids,
                result,
                azure=self.azure,
                one_model=self.one_model,
            )
            if error is not None:
                errors.append(error)
            else:
                self._tally(raw)

    def _tally(self, raw: bytes) -> None:
        """Count a valid line's embedding inputs and (if asked for) prompt tokens."""
        embeddings = self.endpoint == "/v1/embeddings"
        if not (embeddings or self.count_prompt_tokens):
            return
        body = orjson.loads(raw)["body"]
        if embeddings:
            self.embedding_inputs += _count_embedding_inputs(body)
        if self.count_prompt_tokens:
            model = str(body.get("model") or "")
            self.result.prompt_tokens += sum(
                count_tokens(text, model) for text in prompt_texts(self.endpoint, body) if text
            )

    def whole_file_errors(self) -> list[dict[str, Any]]:
        """The errors only the whole file shows (none once a line had one)."""
        if self.result.errors:
            return []
        if self.result.total == 0:
            return [batch_error("empty_file", "The input file holds no requests.")]
        if self.embedding_inputs > MAX_EMBEDDING_INPUTS:
            return [
                batch_error(
                    "too_many_embedding_inputs",
                    f"The embeddings batch has {self.embedding_inputs} inputs; the limit is "
                    f"{MAX_EMBEDDING_INPUTS}.",
                )
            ]
        return []


class _LineError(Exception):
    """A line's first error (raised by the checks below, returned by `_check_line`)."""

    def __init__(self, code: str, message: str, number: int, param: str | None = None) -> None:
        super().__init__(message)
        self.error = batch_error(code, message, line=number, param=param)


def _check_line(
    raw: bytes,
    number: int,
    endpoint: str,
    seen_ids: set[str],
    result: ValidationResult,
    *,
    azure: bool = False,
    one_model: bool = True,
) -> dict[str, Any] | None:
    """The first error of one request line, or None; a valid line's custom_id is noted in
    `seen_ids` and its model in `result`."""
    try:
        request = _parse_request(raw, number)
        custom_id = _non_empty_string(request["custom_id"], number, "custom_id")
        _check_method(request, number)
        _check_url(request, number, endpoint, azure)
        body = _check_body(request, number)
        if custom_id in seen_ids:
            raise _LineError(
                "duplicate_custom_id",
                f"Line {number}: custom_id {custom_id!r} is already used on an earlier line.",
                number,
                "custom_id",
            )
        seen_ids.add(custom_id)
        if one_model:
            _check_model(body, number, endpoint, result)
        elif result.model is None and isinstance(body.get("model"), str):
            result.model = body["model"]
    except _LineError as exc:
        return exc.error
    return None


def _parse_request(raw: bytes, number: int) -> dict[str, Any]:
    """The line's JSON object, with every required field present."""
    try:
        request = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise _LineError("invalid_json_line", f"Line {number} is not valid JSON.", number) from None
    if not isinstance(request, dict):
        raise _LineError("invalid_json_line", f"Line {number} is not a JSON object.", number)
    for name in ("custom_id", "method", "url", "body"):
        if name not in request or request[name] is None:
            raise _missing(number, name)
    return request


def _missing(number: int, name: str) -> _LineError:
    return _LineError(
        "missing_required_parameter",
        f"Line {number} is missing the required parameter '{name}'.",
        number,
        name,
    )


def _non_empty_string(value: Any, number: int, name: str) -> str:
    """`value` if it is a non-empty string, else the `invalid_parameter` error of `name`."""
    if not isinstance(value, str) or not value:
        raise _LineError(
            "invalid_parameter",
            f"Line {number}: '{name}' must be a non-empty string.",
            number,
            name,
        )
    return value


def _check_method(request: dict[str, Any], number: int) -> None:
    if request["method"] != "POST":
        raise _LineError(
            "invalid_method",
            f"Line {number}: method must be 'POST', not {request['method']!r}.",
            number,
            "method",
        )


def _check_url(request: dict[str, Any], number: int, endpoint: str, azure: bool) -> None:
    url = request["url"]
    if azure and isinstance(url, str):
        url = with_v1(url)
    if url == endpoint:
        return
    if url in SUPPORTED_ENDPOINTS:
        raise _LineError(
            "mismatched_url",
            f"Line {number}: url {url!r} differs from the batch endpoint {endpoint!r}.",
            number,
            "url",
        )
    raise _LineError(
        "invalid_url", f"Line {number}: url {url!r} is not a supported endpoint.", number, "url"
    )


def _check_body(request: dict[str, Any], number: int) -> dict[str, Any]:
    body = request["body"]
    if not isinstance(body, dict):
        raise _LineError(
            "invalid_parameter", f"Line {number}: 'body' must be a JSON object.", number, "body"
        )
    return body


def _check_model(
    body: dict[str, Any], number: int, endpoint: str, result: ValidationResult
) -> None:
    """The body's model: present (unless optional), a string, the batch's one model."""
    model = body.get("model")
    if model is None:
        if endpoint in MODEL_OPTIONAL_ENDPOINTS:
            return
        raise _missing(number, "body.model")
    model = _non_empty_string(model, number, "body.model")
    if result.model is None:
        result.model = model
    elif model != result.model:
        raise _LineError(
            "mismatched_model",
            f"Line {number}: model {model!r} differs from {result.model!r} used on earlier "
            f"lines; a batch holds one model.",
            number,
            "body.model",
        )


def _count_embedding_inputs(body: dict[str, Any]) -> int:
    value = body.get("input")
    if isinstance(value, list) and value and not isinstance(value[0], int):
        return len(value)
    return 1
