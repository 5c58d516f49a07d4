"""Property-based: any rows (any Unicode, lone surrogates, nulls, blanks, repeated keys) become
exactly one request whose JSON carries the text unchanged, or exactly one rejection saying why.

Request lines are assembled from bytes with a columnar JSON escaper, not by a JSON library;
hypothesis searches the text space for a line that does not parse or does not say what the row
said."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from batch_pipeline.core.custom_id import custom_id_for
from batch_pipeline.core.requests import RequestBuilder
from batch_pipeline.core.sources import iter_partition_batches
from batch_pipeline.core.spec import PipelineSpec
from batch_pipeline.core.types import Endpoint
from batch_pipeline_tests.reliability_tests.helpers import DAY, KEY_COLUMN, at, spec_data

pytestmark = [pytest.mark.reliability, pytest.mark.slow]

SYSTEM = "You label support tickets."
TEXT_COLUMNS = ("subject", "body")
ANY_TEXT = st.text(st.characters(exclude_categories=()), max_size=30)  # every code point
WITH_SURROGATE = st.builds(
    lambda head, lone, tail: head + lone + tail,
    ANY_TEXT,
    st.characters(categories=["Cs"]),
    ANY_TEXT,
)
VALUES = st.one_of(
    st.none(), st.just(""), st.sampled_from([" ", "\t\n", "\u3000"]), ANY_TEXT, WITH_SURROGATE
)
KEYS = st.one_of(
    st.none(),
    st.sampled_from(["A", "B", "h" + "0" * 24, "x" * 65]),  # repeats, hash-like, too long
    st.text(st.characters(exclude_categories=("Cs",)), max_size=12),
)
ROWS = st.lists(st.tuples(KEYS, VALUES, VALUES), max_size=10)
FAST = settings(
    max_examples=120,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    database=None,
)


def spec_for(endpoint: Endpoint) -> PipelineSpec:
    data = spec_data("http://127.0.0.1:9/v1", "props", Path.cwd(), endpoint=endpoint.value)
    return PipelineSpec.from_dict(data)


def is_text(value: str | None) -> bool:
    """Holds as UTF-8 (a lone surrogate does not)."""
    if value is None:
        return True
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def expected_codes(rows: list[tuple[Any, ...]]) -> list[set[str]]:
    """Per row, the acceptable outcomes: "" (a request) or rejection codes, first check wins."""
    seen: set[str] = set()
    verdicts = []
    for key, *values in rows:
        if key is None:
            verdicts.append({"null_key"})
            continue
        if key in seen:
            verdicts.append({"duplicate_key"})
            continue
        seen.add(key)
        verdicts.append(_value_verdict(values))
    return verdicts


def _value_verdict(values: list[str | None]) -> set[str]:
    for value in values:
        if not is_text(value):
            return {"invalid_text"}
        if value is None:
            return {"null_value"}
        if value == "":
            return {"empty_value"}
        if value.isspace() or not value.strip():
            return {"empty_value", ""}  # Unicode and Arrow disagree on a few space characters
    return {""}


def request_text(line: dict[str, Any], endpoint: Endpoint) -> tuple[str, str | None]:
    """(the prompt text, the system text) a request line carries."""
    body = line["body"]
    if endpoint is Endpoint.CHAT_COMPLETIONS:
        return body["messages"][-1]["content"], body["messages"][0]["content"]
    if endpoint is Endpoint.RESPONSES:
        return body["input"], body.get("instructions")
    if endpoint is Endpoint.COMPLETIONS:
        return body["prompt"], None
    if endpoint is Endpoint.MESSAGES:
        return body["messages"][-1]["content"], body.get("system")
    return body["input"], None


@FAST
@given(rows=ROWS, endpoint=st.sampled_from(list(Endpoint)))
def test_each_row_is_one_exact_request_or_one_named_rejection(
    rows: list[tuple[Any, ...]], endpoint: Endpoint
) -> None:
    spec = spec_for(endpoint)
    frame = pd.DataFrame(
        {
            KEY_COLUMN: pd.Series([row[0] for row in rows], dtype=object),
            **{
                c: pd.Series([row[i + 1] for row in rows], dtype=object)
                for i, c in enumerate(TEXT_COLUMNS)
            },
            "created_at": pd.Series([at()] * len(rows), dtype="datetime64[ns]"),
        }
    )
    builder = RequestBuilder(spec)
    built = [
        builder.build(batch, DAY)
        for batch in iter_partition_batches(spec, DAY, dataframe=frame, columns=builder.columns)
    ]
    requests = {cid: line for b in built for cid, line, _ in b}
    rejected = {r["row_number"]: r for b in built for r in b.rejected.to_pylist()}
    assert len(requests) == sum(len(b) for b in built), "a custom_id given twice"
    assert len(requests) + len(rejected) == len(rows)
    for number, (want, (key, subject, body)) in enumerate(
        zip(expected_codes(rows), rows, strict=True)
    ):
        if number in rejected:
            verdict = rejected[number]
            assert verdict["code"] in want, (number, verdict)
            assert "'" in verdict["reason"] and verdict["key"] == key, verdict
            continue
        assert "" in want, (number, want)
        line = orjson.loads(requests.pop(custom_id_for(DAY, key)))
        assert line["url"] == endpoint.value and line["body"]["model"] == spec.request.model
        prompt, system = request_text(line, endpoint)
        assert prompt == f"Subject: {subject}\n\n{body}"
        takes_system = endpoint.takes_system
        assert system == (SYSTEM if takes_system else None)
    assert not requests, f"requests no row asked for: {list(requests)}"
