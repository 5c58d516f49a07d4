"""The lines of a batch's output and error files, as OpenAI writes them.

A request that got an HTTP answer has a line in the output file if the answer was 2xx,
else (with the error body) in the error file; a request that got no answer at all (the
upstream unreachable, the batch cancelled or expired first) has an error-file line with an
`error` and no `response`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, NamedTuple

import orjson

EXPIRED_CODE = "batch_expired"
EXPIRED_MESSAGE = "This request could not be executed before the completion window expired."
CANCELLED_CODE = "batch_cancelled"
CANCELLED_MESSAGE = "This request was not executed because the batch was cancelled."
UPSTREAM_UNAVAILABLE_CODE = "upstream_unavailable"
_DUMPS_OPTIONS = orjson.OPT_APPEND_NEWLINE


@dataclass(slots=True)
class Result:
    """One finished request: its line and where it goes."""

    custom_id: str
    line: bytes
    error_file: bool
    succeeded: bool
    input_tokens: int = 0
    output_tokens: int = 0


class ResultBlock(NamedTuple):
    """Results joined for the partial files: the lines of each file, the requests' ids and
    their counts. Cheap to pass between processes (a few objects, not one per request)."""

    output: bytes
    errors: bytes
    custom_ids: list[str]
    completed: int
    failed: int
    input_tokens: int
    output_tokens: int


def result_block(results: Iterable[Result]) -> ResultBlock:
    """The block of `results`, in their order."""
    output: list[bytes] = []
    errors: list[bytes] = []
    custom_ids: list[str] = []
    completed = input_tokens = output_tokens = 0
    for r in results:
        custom_ids.append(r.custom_id)
        (errors if r.error_file else output).append(r.line)
        if r.succeeded:
            completed += 1
            input_tokens += r.input_tokens
            output_tokens += r.output_tokens
    failed = len(custom_ids) - completed
    return ResultBlock(
        b"".join(output),
        b"".join(errors),
        custom_ids,
        completed,
        failed,
        input_tokens,
        output_tokens,
    )


def usage_tokens(body: Any) -> tuple[int, int]:
    """(input, output) tokens of an answer body's `usage`, in any endpoint's names."""
    usage = body.get("usage") if isinstance(body, dict) else None
    if not isinstance(usage, dict):
        return 0, 0
    inp = usage.get("input_tokens", usage.get("prompt_tokens", 0))
    out = usage.get("output_tokens", usage.get("completion_tokens", 0))
    return (inp if isinstance(inp, int) else 0), (out if isinstance(out, int) else 0)


def answer_result(
    custom_id: str, status: int, body: dict[str, Any], key: str, request_id: str | None = None
) -> Result:
    """The line of a request that got an HTTP answer: in the output file if 2xx, else (with
    the error body) in the error file, as OpenAI does. `request_id`: the upstream's."""
    line = orjson.dumps(
        {
            "id": f"batch_req_{key}",
            "custom_id": custom_id,
            "response": {
                "status_code": status,
                "request_id": request_id or f"req_{key}",
                "body": body,
            },
            "error": None,
        },
        option=_DUMPS_OPTIONS,
    )
    succeeded = 200 <= status < 300
    inp, out = usage_tokens(body) if succeeded else (0, 0)
    return Result(custom_id, line, not succeeded, succeeded, inp, out)


def error_result(custom_id: str, code: str, message: str, key: str) -> Result:
    """An error-file line: the request never got an answer."""
    line = orjson.dumps(
        {
            "id": f"batch_req_{key}",
            "custom_id": custom_id,
            "response": None,
            "error": {"code": code, "message": message},
        },
        option=_DUMPS_OPTIONS,
    )
    return Result(custom_id, line, True, False)
