"""Structured outputs end to end: a schema in the spec, its encoding in the request lines,
typed `output_*` columns in the results, and every answer that does not fit kept with its
reason (the local service's echo answers with a valid instance, or a failure on a marker)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

import duckdb
import orjson
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pydantic import BaseModel

from batch_pipeline import load_pipeline, read_results
from batch_pipeline.core.pipeline import PipelineError
from batch_pipeline.core.spec import PipelineSpec
from batch_pipeline.core.tokens import count_tokens
from batch_pipeline_tests.batch_apis import BatchApi, on_both_apis
from batch_pipeline_tests.conftest import ticket_spec, write_tickets

DAY = "2026-11-20"
TRIAGE_SCHEMA = {
    "type": "object",
    "properties": {
        "category": {"type": "string", "enum": ["bug", "billing", "account", "other"]},
        "urgency": {"type": "integer", "minimum": 1, "maximum": 5},
        "tags": {"type": "array", "items": {"type": "string"}},
        "summary": {"type": "string"},
        "customer": {
            "type": "object",
            "properties": {"mood": {"type": ["string", "null"]}, "score": {"type": "number"}},
            "required": ["mood", "score"],
        },
    },
    "required": ["category", "urgency", "tags", "summary", "customer"],
}
MARKERS = {
    "INVALID": ("<<invalid_output>>", "invalid_output"),
    "VIOLATES": ("<<schema_violation>>", "invalid_output"),
    "REFUSED": ("<<refusal>>", "refusal"),
    "CUT": ("<<truncated>>", "truncated"),
}


def triage_rows() -> list[dict]:
    at = datetime(2026, 11, 20, 9, 30)
    rows = [
        {"ticket_id": f"T{i}", "subject": f"Order {i}", "body": f"My parcel {i} is late."}
        for i in range(6)
    ]
    rows += [
        {"ticket_id": key, "subject": "Odd", "body": f"please {marker} now"}
        for key, (marker, _) in MARKERS.items()
    ]
    return [{**row, "created_at": at} for row in rows]


def triage_spec(tmp_path, api: BatchApi, endpoint: str, **overrides) -> PipelineSpec:
    write_tickets(tmp_path / "tickets.parquet", triage_rows())
    spec = ticket_spec(tmp_path, api.base_url, endpoint=endpoint, **overrides)
    spec["request"]["output_schema"] = TRIAGE_SCHEMA
    return PipelineSpec.from_dict(spec, base_dir=tmp_path)


@on_both_apis
@pytest.mark.parametrize("endpoint", ["/v1/chat/completions", "/v1/responses"])
def test_answers_become_typed_columns_and_misfits_are_kept_with_their_reason(
    tmp_path, api, endpoint
):
    spec = triage_spec(tmp_path, api, endpoint)
    with api.pipeline(spec) as pipeline:
        summary = pipeline.run(DAY, poll_interval=0.3, timeout=90)
    table = pq.read_table(summary.path)
    assert table.schema.field("output_category").type == pa.string()
    assert table.schema.field("output_urgency").type == pa.int64()
    assert table.schema.field("output_tags").type == pa.list_(pa.string())
    assert table.schema.field("output_customer").type == pa.struct(
        [("mood", pa.string()), ("score", pa.float64())]
    )
    rows = {row["ticket_id"]: row for row in table.to_pylist()}
    for i in range(6):
        row = rows[f"T{i}"]
        assert row["status"] == "succeeded", row
        assert row["output_category"] in ("bug", "billing", "account", "other")
        assert 1 <= row["output_urgency"] <= 5
        assert orjson.loads(row["response_text"])["summary"] == row["output_summary"]
        assert row["output_tokens"] == count_tokens(row["response_text"], "gpt-4o-mini")
    for key, (_, code) in MARKERS.items():
        row = rows[key]
        assert (row["status"], row["error_code"], row["attempts"]) == ("failed", code, 1), row
        assert row["output_category"] is None and row["output_customer"] is None
        assert row["error_message"]
        if code != "refusal":
            assert row["response_text"]  # kept, as it came
    assert rows["VIOLATES"]["error_message"].startswith("$: properties ['unexpected']")
    assert rows["INVALID"]["error_message"].startswith("$: not JSON")
    assert "refused" in rows["REFUSED"]["error_message"]
    assert summary.counts["failed"] == 4


def test_typed_columns_read_back_typed_by_duckdb_and_pandas(tmp_path, memory_api):
    spec = triage_spec(tmp_path, memory_api, "/v1/chat/completions")
    with memory_api.pipeline(spec) as pipeline:
        summary = pipeline.run(DAY, poll_interval=0.3, timeout=90)
        frame = pipeline.read_results(DAY)
    assert ("output_urgency", "int64") in summary.columns
    assert frame["output_urgency"].dtype == pd.Int64Dtype()
    succeeded = frame[frame["status"] == "succeeded"]
    assert succeeded["output_urgency"].notna().all()
    assert all(len(tags) >= 1 for tags in succeeded["output_tags"])
    assert isinstance(succeeded["output_customer"].iloc[0], dict)
    results = f"{spec.pipeline_dir}/results/*/*.parquet"
    described = duckdb.sql(f"describe select * from read_parquet('{results}')").fetchall()
    types = {name: kind for name, kind, *_ in described}
    assert types["output_urgency"] == "BIGINT"
    assert types["output_tags"] == "VARCHAR[]"
    assert types["output_customer"] == "STRUCT(mood VARCHAR, score DOUBLE)"
    (total,) = duckdb.sql(
        f"select sum(output_urgency) from read_parquet('{results}') where status = 'succeeded'"
    ).fetchall()[0]
    assert total == succeeded["output_urgency"].sum()
    (mood_nulls,) = duckdb.sql(
        f"select count(*) from read_parquet('{results}') where output_customer.score is null"
    ).fetchall()[0]
    assert mood_nulls == 4  # the four answers that did not fit


def test_invalid_output_is_sent_again_only_as_retry_invalid_output_attempts_asks(
    tmp_path, memory_api
):
    spec = triage_spec(
        tmp_path,
        memory_api,
        "/v1/chat/completions",
        retry={"max_attempts": 3, "invalid_output_attempts": 2},
    )
    with memory_api.pipeline(spec) as pipeline:
        summary = pipeline.run(DAY, poll_interval=0.3, timeout=90)
    rows = {row["ticket_id"]: row for row in pq.read_table(summary.path).to_pylist()}
    attempts = {key: (rows[key]["error_code"], rows[key]["attempts"]) for key in MARKERS}
    assert attempts == {
        "INVALID": ("invalid_output", 2),
        "VIOLATES": ("invalid_output", 2),
        "REFUSED": ("refusal", 1),
        "CUT": ("truncated", 1),
    }


@pytest.mark.parametrize(
    ("endpoint", "expected"),
    [
        (
            "/v1/chat/completions",
            lambda schema: {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "tickets", "schema": schema, "strict": True},
                }
            },
        ),
        (
            "/v1/responses",
            lambda schema: {
                "text": {
                    "format": {
                        "type": "json_schema",
                        "name": "tickets",
                        "schema": schema,
                        "strict": True,
                    }
                }
            },
        ),
    ],
)
def test_each_endpoint_carries_the_schema_in_its_own_form(tmp_path, memory_api, endpoint, expected):
    spec = triage_spec(tmp_path, memory_api, endpoint)
    with memory_api.pipeline(spec) as pipeline:
        pipeline.build_requests(DAY)
        shard = next(pipeline.storage.local_path("requests").rglob("shard-*.jsonl"))
    body = orjson.loads(shard.read_bytes().splitlines()[0])["body"]
    sent = expected(spec.output_schema.schema)
    assert {key: body[key] for key in sent} == sent
    # Normalised as documented: every object says additionalProperties: false.
    assert sent_schema_objects_closed(spec.output_schema.schema)


def sent_schema_objects_closed(schema) -> bool:
    if isinstance(schema, dict):
        if schema.get("type") == "object" and schema.get("additionalProperties") is not False:
            return False
        return all(sent_schema_objects_closed(value) for value in schema.values())
    if isinstance(schema, list):
        return all(sent_schema_objects_closed(value) for value in schema)
    return True


class Customer(BaseModel):
    mood: str | None
    score: float


class Triage(BaseModel):
    category: Literal["bug", "billing", "account", "other"]
    urgency: int
    tags: list[str]
    summary: str
    customer: Customer


def test_a_pydantic_model_declares_the_schema_and_reads_back_as_objects(tmp_path, memory_api):
    write_tickets(tmp_path / "tickets.parquet", triage_rows())
    data = ticket_spec(tmp_path, memory_api.base_url)
    data["request"]["output_schema"] = Triage
    spec = PipelineSpec.from_dict(data, base_dir=tmp_path)
    with load_pipeline(
        spec, backend=memory_api.service, clock=memory_api.clock, sleep=memory_api.clock.sleep
    ) as pipeline:
        pipeline.run(DAY, poll_interval=0.3, timeout=90)
        frame = pipeline.read_results(DAY, as_models=True)
    assert frame["output_urgency"].dtype == pd.Int64Dtype()
    by_key = frame.set_index("ticket_id")
    answer = by_key.loc["T1", "output"]
    assert isinstance(answer, Triage) and isinstance(answer.customer, Customer)
    assert answer.urgency == by_key.loc["T1", "output_urgency"]
    assert answer.tags == list(by_key.loc["T1", "output_tags"])
    assert by_key.loc["REFUSED", "output"] is None
    same = read_results(spec, DAY, as_models=Triage)
    assert same.set_index("ticket_id").loc["T1", "output"] == answer


def test_as_models_without_a_model_says_what_it_needs(tmp_path, memory_api):
    spec = triage_spec(tmp_path, memory_api, "/v1/chat/completions")
    with memory_api.pipeline(spec) as pipeline:
        pipeline.run(DAY, poll_interval=0.3, timeout=90)
        with pytest.raises(PipelineError, match="as_models needs a pydantic model"):
            pipeline.read_results(DAY, as_models=True)
