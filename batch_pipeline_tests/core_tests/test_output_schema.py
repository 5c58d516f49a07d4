"""The output schema at spec load (refused one line per problem, naming the path and the
rule) and the Arrow type of every kind of property, read from answers column-wise."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from typing import Literal

import pyarrow as pa
import pytest
from pydantic import BaseModel

from batch_pipeline.core._output_rows import Violation, parse_answer
from batch_pipeline.core.output_columns import output_fields, parse_outputs
from batch_pipeline.core.spec import PipelineSpec, SpecError


def spec_with(schema, tmp_path=None, **request) -> PipelineSpec:
    data = {
        "name": "triage",
        "source": {"path": "t.parquet", "key": "id", "partition_column": "day"},
        "request": {"model": "gpt-4o-mini", "prompt": "{text}", "output_schema": schema, **request},
    }
    return PipelineSpec.from_dict(data, base_dir=tmp_path)


def closed(properties: dict) -> dict:
    return {"type": "object", "properties": properties, "required": list(properties)}


def nested(levels: int) -> dict:
    node: dict = {"type": "string"}
    for _ in range(levels):
        node = closed({"b": node})
    return node


class Verdict(BaseModel):
    label: Literal["good", "bad"]
    score: float
    reasons: list[str]


class WithDefault(BaseModel):
    label: str
    note: str | None = None


class FreeForm(BaseModel):
    counts: dict[str, int]


BAD_SCHEMAS = [
    ("not an object", ["a", "list"], "request.output_schema: must be a JSON Schema object"),
    ("root not an object", {"type": "string"}, "$: the root must be an object schema"),
    ("unknown type", closed({"a": {"type": "text"}}), '$.properties.a.type: "text" is not one'),
    ("bad column name", closed({"a-b": {"type": "string"}}), "$.properties.a-b: property name"),
    (
        "names differ in case only",
        closed({"Label": {"type": "string"}, "label": {"type": "string"}}),
        "$.properties.label: column 'output_label' differs from 'output_Label' only in case",
    ),
    (
        "unresolved $ref",
        closed({"a": {"$ref": "#/$defs/Missing"}}),
        "$.properties.a: $ref '#/$defs/Missing' does not resolve",
    ),
    (
        "recursive $ref",
        {
            **closed({"a": {"$ref": "#/$defs/Node"}}),
            "$defs": {"Node": closed({"n": {"$ref": "#/$defs/Node"}})},
        },
        "is recursive",
    ),
    (
        "property not required",
        {"type": "object", "properties": {"a": {"type": "string"}}, "required": []},
        "$.required: every property must be required",
    ),
    (
        "additionalProperties true",
        {**closed({"a": {"type": "string"}}), "additionalProperties": True},
        "$.additionalProperties: must be false",
    ),
    (
        "unsupported keyword",
        closed({"a": {"type": "string", "minLength": 2}}),
        "$.properties.a.minLength: keyword 'minLength' is not supported for type string",
    ),
    ("allOf", closed({"a": {"allOf": [{"type": "string"}]}}), "$.properties.a.allOf: keyword"),
    (
        "unsupported format",
        closed({"a": {"type": "string", "format": "color"}}),
        "$.properties.a.format: format 'color' is not supported",
    ),
    (
        "anyOf of two types",
        closed({"a": {"anyOf": [{"type": "string"}, {"type": "integer"}]}}),
        "$.properties.a.anyOf: only anyOf",
    ),
    (
        "too deep",
        closed({"a": nested(11)}),
        "nested deeper than 10 levels",
    ),
    (
        "too many enum values",
        closed({"a": {"type": "string", "enum": [f"v{i}" for i in range(1001)]}}),
        "$: 1001 enum values in all; strict mode takes at most 1000",
    ),
    (
        "enum value of another type",
        closed({"a": {"type": "string", "enum": ["x", 3]}}),
        "$.properties.a.enum: values [3] are not of type string",
    ),
    (
        WithDefault,
        WithDefault,
        "$.required: every property must be required in strict mode; ['note']",
    ),
    (FreeForm, FreeForm, "$.properties.counts: an object needs properties"),
]


@pytest.mark.parametrize(
    ("case", "schema", "line"),
    BAD_SCHEMAS,
    ids=[c[0] if isinstance(c[0], str) else c[0].__name__ for c in BAD_SCHEMAS],
)
def test_a_schema_outside_strict_mode_is_refused_at_load_one_line_each(case, schema, line):
    with pytest.raises(SpecError) as raised:
        spec_with(schema)
    lines = str(raised.value).splitlines()
    assert any(line in entry for entry in lines), lines


def test_each_problem_of_a_schema_gets_its_own_line():
    schema = closed({"a b": {"type": "string", "format": "color"}, "c": {"$ref": "#/x"}})
    with pytest.raises(SpecError) as raised:
        spec_with(schema)
    problems = str(raised.value).splitlines()[1:]
    assert len(problems) == 3, problems
    assert all(line.strip().startswith("request.output_schema $") for line in problems)


@pytest.mark.parametrize("endpoint", ["/v1/embeddings", "/v1/moderations", "/v1/completions"])
def test_an_endpoint_without_structured_output_refuses_a_schema(endpoint):
    with pytest.raises(SpecError, match=f"{endpoint} answers take no output schema"):
        spec_with(closed({"a": {"type": "string"}}), endpoint=endpoint)


def test_params_may_not_set_the_format_the_schema_sets():
    with pytest.raises(
        SpecError, match=r"\['response_format'\] are set from request.output_schema"
    ):
        spec_with(closed({"a": {"type": "string"}}), params={"response_format": {"type": "text"}})


def test_a_schema_file_is_read_relative_to_the_spec(tmp_path):
    (tmp_path / "schemas").mkdir()
    (tmp_path / "schemas" / "verdict.json").write_text(
        json.dumps({**closed({"ok": {"type": "boolean"}}), "title": "verdict"})
    )
    spec = spec_with("schemas/verdict.json", tmp_path)
    assert spec.output_schema.name == "verdict"
    assert [f.name for f in output_fields(spec.output_schema)] == ["output_ok"]
    with pytest.raises(SpecError, match="cannot read the schema file"):
        spec_with("schemas/missing.json", tmp_path)


def test_a_pydantic_model_gives_the_schema_and_its_name():
    spec = spec_with(Verdict)
    assert spec.output_schema.name == "Verdict"
    assert spec.output_schema.model is Verdict
    assert [(f.name, f.type) for f in output_fields(spec.output_schema)] == [
        ("output_label", pa.string()),
        ("output_score", pa.float64()),
        ("output_reasons", pa.list_(pa.string())),
    ]
    assert spec.request.fingerprint == spec_with(Verdict.model_json_schema()).request.fingerprint


# -- every type mapping --------------------------------------------------------------------

TYPES = [
    ({"type": "string"}, pa.string(), "text", "text"),
    ({"type": "string", "enum": ["a", "b"]}, pa.string(), "b", "b"),
    ({"type": "integer"}, pa.int64(), 7, 7),
    ({"type": "number"}, pa.float64(), 2, 2.0),
    ({"type": "boolean"}, pa.bool_(), True, True),
    ({"type": "string", "format": "date"}, pa.date32(), "2026-11-20", date(2026, 11, 20)),
    (
        {"type": "string", "format": "date-time"},
        pa.timestamp("us", "UTC"),
        "2026-11-20T09:30:00+02:00",
        datetime(2026, 11, 20, 7, 30, tzinfo=UTC),
    ),
    ({"type": "array", "items": {"type": "integer"}}, pa.list_(pa.int64()), [1, 2], [1, 2]),
    (
        closed({"x": {"type": "number"}, "y": {"type": "string"}}),
        pa.struct([("x", pa.float64()), ("y", pa.string())]),
        {"x": 1.5, "y": "z"},
        {"x": 1.5, "y": "z"},
    ),
    (
        {"type": "array", "items": closed({"d": {"type": "string", "format": "date"}})},
        pa.list_(pa.struct([("d", pa.date32())])),
        [{"d": "2026-01-02"}],
        [{"d": date(2026, 1, 2)}],
    ),
    ({"type": ["integer", "null"]}, pa.int64(), None, None),
    ({"anyOf": [{"type": "string"}, {"type": "null"}]}, pa.string(), None, None),
    ({"type": "string", "const": "only"}, pa.string(), "only", "only"),
]


@pytest.mark.parametrize(
    ("node", "arrow", "answer", "value"),
    TYPES,
    ids=[str(t[1]) + str(i) for i, t in enumerate(TYPES)],
)
def test_every_type_maps_to_its_arrow_type_and_reads_column_wise(node, arrow, answer, value):
    spec = spec_with(closed({"v": node}))
    (field,) = output_fields(spec.output_schema)
    assert field.type == arrow
    texts = pa.array([json.dumps({"v": answer})] * 100)  # enough for the columnar path
    typed, errors = parse_outputs(texts, spec.output_schema.root)
    assert errors.null_count == 100
    assert typed.field(0).type == arrow
    assert typed.field(0).to_pylist() == [value] * 100
    # The row-by-row reference gives the same value.
    assert parse_answer(json.dumps({"v": answer}), spec.output_schema.root) == {"v": value}


VIOLATIONS = [
    ({"type": "integer", "maximum": 5}, 9, "$.v: 9 breaks maximum 5"),
    ({"type": "string", "enum": ["a"]}, "b", '$.v: "b" is not one of the enum ["a"]'),
    ({"type": "string"}, None, "$.v: null where the schema requires string"),
    ({"type": "string"}, 3, "$.v: integer where the schema requires string"),
    ({"type": "string", "format": "date"}, "20/11/2026", "$.v: '20/11/2026' is not a date"),
    (
        {"type": "array", "items": {"type": "string"}, "maxItems": 1},
        ["a", "b"],
        "$.v: 2 items, more than maxItems 1",
    ),
    (
        {"type": "array", "items": {"type": "integer"}},
        [1, "x"],
        "$.v[1]: string where the schema requires integer",
    ),
    ({"type": "string", "pattern": "^[A-Z]+$"}, "abc", "$.v: 'abc' does not match the pattern"),
]


@pytest.mark.parametrize(("node", "answer", "message"), VIOLATIONS)
def test_an_answer_breaking_the_schema_is_named_by_path_and_rule(node, answer, message):
    spec = spec_with(closed({"v": node}))
    texts = [json.dumps({"v": answer})] + [None] * 3
    typed, errors = parse_outputs(pa.array(texts, pa.string()), spec.output_schema.root)
    assert errors[0].as_py().startswith(message), errors[0]
    assert typed[0].as_py() is None
    with pytest.raises(Violation, match=message[:20].replace("[", r"\[").replace("$", r"\$")):
        parse_answer(texts[0], spec.output_schema.root)


def test_misfits_among_many_answers_are_found_and_the_rest_kept():
    spec = spec_with(
        closed({"n": {"type": "integer"}, "t": {"type": "array", "items": {"type": "string"}}})
    )
    texts = [json.dumps({"n": i, "t": [str(i)]}) for i in range(5_000)]
    bad = {
        17: "not json",
        1234: '{"n": 1.5, "t": []}',
        4999: '{"n": 1, "t": [], "x": 0}',
        300: '{"n": 1,\n "t": []}',
    }
    for row, text in bad.items():
        texts[row] = text
    typed, errors = parse_outputs(pa.array(texts), spec.output_schema.root)
    failed = {i for i, e in enumerate(errors.to_pylist()) if e is not None}
    assert failed == {17, 1234, 4999}  # a newline between tokens is JSON
    numbers, tags = typed.flatten()
    assert numbers.to_pylist()[300] == 1
    assert numbers.null_count == 3
    assert tags.to_pylist()[42] == ["42"]


def test_many_scattered_misfits_are_each_named_and_no_good_answer_is_lost():
    spec = spec_with(closed({"n": {"type": "integer"}}))
    texts = [
        '{"n": "seven"}' if i % 7 == 3 else ("{}" if i % 11 == 5 else json.dumps({"n": i}))
        for i in range(3_000)
    ]
    typed, errors = parse_outputs(pa.array(texts), spec.output_schema.root)
    (numbers,) = typed.flatten()
    for i, (value, error) in enumerate(zip(numbers.to_pylist(), errors.to_pylist(), strict=True)):
        if i % 7 == 3:
            assert error == "$.n: string where the schema requires integer", (i, error)
        elif i % 11 == 5:
            assert error == "$: required property 'n' is missing", (i, error)
        else:
            assert (value, error) == (i, None), i
