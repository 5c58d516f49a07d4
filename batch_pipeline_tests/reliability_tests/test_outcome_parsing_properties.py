"""Property-based: however a provider lays out its output lines (key order, spacing, escapes,
nulls, text that looks like JSON keys, repeated custom_ids), the column-wise parse of an output
file gives the same rows as the line-by-line one.

The column-wise path finds each body by byte positions and reads the rest of a usual line from
its head with a regular expression, not with a JSON parser; hypothesis searches for a line
where that reading differs from what the line says."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from batch_pipeline.core import _outcome_columns
from batch_pipeline.core.outcomes import parse_outcomes

pytestmark = [pytest.mark.reliability, pytest.mark.slow]

CHAT = "/v1/chat/completions"
# Text that pokes at the byte-level reading: quotes, escapes, braces and the keys it looks for.
TRICKY_TEXT = st.one_of(
    st.text(st.characters(exclude_categories=("Cs",)), max_size=20),
    st.sampled_from(['"body":', '"body": {"x": 1}', '},"error":null}', "\\", '"', "{", "\u2028"]),
)
PLAIN_IDS = st.sampled_from(["a", "b", "c", "2026-01-15:T000000001"])  # repeats, too
CUSTOM_IDS = st.one_of(PLAIN_IDS, PLAIN_IDS, PLAIN_IDS, TRICKY_TEXT.filter(bool))
USAGE = st.one_of(
    st.none(),
    st.fixed_dictionaries(
        {"prompt_tokens": st.integers(0, 10**6), "completion_tokens": st.integers(0, 10**6)}
    ),
)
CHAT_BODY = st.builds(
    lambda text, usage, extra: {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}}],
        **({"usage": usage} if usage is not None else {}),
        **extra,
    },
    st.one_of(st.none(), TRICKY_TEXT),
    USAGE,
    st.dictionaries(st.sampled_from(["body", "error", "system_fingerprint"]), TRICKY_TEXT),
)
ERROR_BODY = st.builds(
    lambda code, message: {"error": {"code": code, "message": message, "type": "x"}},
    st.one_of(st.none(), st.sampled_from(["rate_limit_exceeded", "invalid_request"])),
    TRICKY_TEXT,
)
ANSWER = st.builds(
    lambda status, body, request_id: {
        "status_code": status,
        **({"request_id": request_id} if request_id != "absent" else {}),
        "body": body,
    },
    st.sampled_from([200, 201, 400, 429, 500, 503]),
    st.one_of(CHAT_BODY, ERROR_BODY),
    st.one_of(st.just("req_1"), st.none(), st.just("absent"), TRICKY_TEXT),
)
LINE_ERROR = st.fixed_dictionaries(
    {"code": st.sampled_from(["batch_expired", "batch_cancelled", "server_error"])},
    optional={"message": TRICKY_TEXT},
)
USUAL_ORDER = ["id", "custom_id", "response", "error"]


ANSWERED = st.tuples(ANSWER, st.none())
# (response, error): mostly answers, some error lines, now and then both.
OUTCOMES = st.one_of(ANSWERED, ANSWERED, ANSWERED, st.tuples(st.none(), LINE_ERROR))
OUTCOMES = st.one_of(OUTCOMES, OUTCOMES, OUTCOMES, st.tuples(ANSWER, LINE_ERROR))
REQUEST_IDS = st.sampled_from(["batch_req_1", "batch_req_2"])


def lines_in(
    orders: st.SearchStrategy[list[str]],
    custom_ids: st.SearchStrategy[str] = CUSTOM_IDS,
    outcomes: st.SearchStrategy[tuple] = OUTCOMES,
) -> st.SearchStrategy[dict[str, Any]]:
    """Output lines whose keys come in an order drawn from `orders`."""

    def line(custom_id: str, request_id: str | None, outcome: tuple, order: list[str]) -> dict:
        values = {"custom_id": custom_id, "id": request_id, "response": outcome[0]}
        return {name: values.get(name, outcome[1]) for name in order}

    return st.builds(
        line,
        custom_ids,
        st.one_of(REQUEST_IDS, REQUEST_IDS, st.none(), TRICKY_TEXT),
        outcomes,
        orders,
    )


# One provider's files keep one key order; a mix of orders tries the per-line fallbacks.
LINES = st.one_of(
    # The providers' usual files: answers in the usual layout, tricky text only in the bodies.
    st.lists(lines_in(st.just(USUAL_ORDER), PLAIN_IDS, ANSWERED), min_size=1, max_size=12),
    st.lists(lines_in(st.just(USUAL_ORDER)), min_size=1, max_size=12),
    st.lists(lines_in(st.permutations(USUAL_ORDER)), min_size=1, max_size=12),
)
LAYOUTS = st.sampled_from(["compact", "spaced", "ascii"])
PROPERTIES = settings(
    max_examples=150,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    database=None,
)


def dumps(line: dict[str, Any], layout: str) -> bytes:
    """A line as one provider or another writes it."""
    if layout == "compact":
        return orjson.dumps(line)
    return json.dumps(line, ensure_ascii=layout == "ascii").encode()


def comparable(table: Any) -> list[dict[str, Any]]:
    """The rows, with `response_json` as the value it encodes (the byte layout may differ)."""
    rows = table.to_pylist()
    for row in rows:
        if row["response_json"] is not None:
            row["response_json"] = orjson.loads(row["response_json"])
    return sorted(rows, key=lambda row: row["custom_id"])


@PROPERTIES
@given(
    lines=LINES,
    layout=LAYOUTS,
    chunk_bytes=st.sampled_from([64, 512, 1 << 20]),
)
def test_column_wise_and_line_by_line_parses_agree(
    tmp_path: Path, lines: list[dict[str, Any]], layout: str, chunk_bytes: int
) -> None:
    path = tmp_path / "output.jsonl"
    path.write_bytes(b"".join(dumps(line, layout) + b"\n" for line in lines))

    columnar = parse_outcomes(path, None, endpoint=CHAT, chunk_bytes=chunk_bytes)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_outcome_columns, "parse_chunk", lambda *args: None)
        line_by_line = parse_outcomes(path, None, endpoint=CHAT, chunk_bytes=chunk_bytes)

    assert comparable(columnar) == comparable(line_by_line)
    assert columnar.num_rows == len({line["custom_id"] for line in lines})
