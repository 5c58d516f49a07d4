"""A pipeline on `backend.provider: anthropic`, run through the local service's Anthropic
dialect with the official SDK: keys Anthropic's custom_id rule refuses, faults, every row once,
and an output schema as a forced tool call giving typed columns."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

import anthropic
import orjson
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batch_pipeline import PipelineSpec, load_pipeline
from batch_pipeline.core.requests import RequestBuilder, estimate_request_tokens
from batch_pipeline.core.spec import SpecError
from batch_pipeline.core.tokens import FORCED_TOOL_PROMPT_TOKENS, count_tokens
from batch_pipeline.local_api.server import run_local_batch_api
from batch_pipeline_tests.conftest import ticket_spec, write_tickets
from batch_pipeline_tests.core_tests.test_structured_outputs import (
    MARKERS,
    TRIAGE_SCHEMA,
    Triage,
    triage_rows,
)

DAY = "2026-11-20"
MODEL = "claude-haiku-4-5"
# Keys that break `^[a-zA-Z0-9_-]{1,64}$`, or differ only in case.
AWKWARD_KEYS = ["a:b", "with space", "café ☕", "k" * 200, "Case", "case", "CASE", "x/y?z"]


def anthropic_spec(tmp_path: Path, base_url: str, **overrides: Any) -> dict[str, Any]:
    spec = ticket_spec(tmp_path, base_url, **overrides)
    spec["request"] = {
        "endpoint": "/v1/messages",
        "model": MODEL,
        "system": "You label support tickets.",
        "prompt": "{body}",
        "params": {"max_tokens": 500},
    }
    spec["backend"] = {"provider": "anthropic", "base_url": base_url, "api_key_env": "TEST_KEY"}
    return spec


def run_day(tmp_path: Path, base_url: str, bodies: dict[str, str]) -> pd.DataFrame:
    at = datetime(2026, 11, 20, 9, 30)
    rows = [
        {"ticket_id": k, "subject": "S", "body": v, "created_at": at} for k, v in bodies.items()
    ]
    write_tickets(tmp_path / "tickets.parquet", rows)
    spec = PipelineSpec.from_dict(anthropic_spec(tmp_path, base_url), base_dir=tmp_path)
    with load_pipeline(spec) as pipeline:
        summary = pipeline.run(DAY, poll_interval=0.2, timeout=60)
    return pd.read_parquet(summary.path)


@pytest.mark.slow
def test_awkward_keys_and_faults_end_once_with_their_status(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEST_KEY", "sk-ant-test")
    bodies = {key: f"text of {key}" for key in AWKWARD_KEYS}
    bodies |= {"over": "<<fail:529>>", "bad": "<<fail:400>>", "late": "<<hang>>"}
    with run_local_batch_api(
        tmp_path / "state", api_key="sk-ant-test", completion_window_seconds=2
    ) as url:
        results = run_day(tmp_path, url, bodies)
        client = anthropic.Anthropic(base_url=url.removesuffix("/v1"), api_key="sk-ant-test")
        batches = list(client.messages.batches.list())
    assert sorted(results["ticket_id"]) == sorted(bodies)  # every row, once
    by_key = results.set_index("ticket_id")
    for key in AWKWARD_KEYS:
        row = by_key.loc[key]
        assert (row["status"], row["attempts"]) == ("succeeded", 1), key
        assert row["response_text"] == f"text of {key}", key
        assert row["input_tokens"] > 0 and row["output_tokens"] > 0
    expected = {
        "over": ("failed", 3, "overloaded_error"),  # retried, as a 529 is
        "bad": ("failed", 1, "invalid_request_error"),
        "late": ("expired", 3, "batch_expired"),
    }
    for key, (status, attempts, code) in expected.items():
        row = by_key.loc[key]
        assert (row["status"], row["attempts"], row["error_code"]) == (status, attempts, code)
    assert len(batches) == 3  # the first, and one retry of the two retryable rows each time


@pytest.mark.parametrize(
    ("change", "says"),
    [
        ({"params": {"temperature": 0}}, "request.params.max_tokens"),
        ({"endpoint": "/v1/chat/completions"}, "go together"),
    ],
)
def test_a_messages_spec_needs_max_tokens_and_the_anthropic_provider(
    tmp_path: Path, change: dict[str, Any], says: str
) -> None:
    spec = anthropic_spec(tmp_path, "http://127.0.0.1:1/v1")
    spec["request"] |= change
    with pytest.raises((SpecError, ValueError), match=says):
        PipelineSpec.from_dict(spec, base_dir=tmp_path)


@pytest.mark.slow
def test_an_output_schema_becomes_a_forced_tool_call_and_typed_columns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEST_KEY", "sk-ant-test")
    write_tickets(tmp_path / "tickets.parquet", triage_rows())
    data = anthropic_spec(tmp_path, "http://127.0.0.1:1/v1")
    data["request"]["output_schema"] = TRIAGE_SCHEMA
    with run_local_batch_api(tmp_path / "state", api_key="sk-ant-test") as url:
        data["backend"]["base_url"] = url
        spec = PipelineSpec.from_dict(data, base_dir=tmp_path)
        with load_pipeline(spec) as pipeline:
            summary = pipeline.run(DAY, poll_interval=0.2, timeout=60)
            frame = pipeline.read_results(DAY, as_models=Triage)
        shard = next((tmp_path / "out").rglob("shard-*.jsonl"))
    body = orjson.loads(shard.read_bytes().splitlines()[0])["body"]
    assert body["tool_choice"] == {"type": "tool", "name": "tickets"}
    assert [tool["input_schema"] for tool in body["tools"]] == [spec.output_schema.schema]
    table = pq.read_table(summary.path)
    assert table.schema.field("output_urgency").type == pa.int64()
    assert table.schema.field("output_customer").type == pa.struct(
        [("mood", pa.string()), ("score", pa.float64())]
    )
    rows = {row["ticket_id"]: row for row in table.to_pylist()}
    assert sorted(rows) == sorted(row["ticket_id"] for row in triage_rows())  # each once
    for i in range(6):
        row = rows[f"T{i}"]
        assert (row["status"], row["attempts"]) == ("succeeded", 1), row
        call = orjson.loads(row["response_json"])["content"][0]
        assert call["type"] == "tool_use" and call["input"]["urgency"] == row["output_urgency"]
        assert orjson.loads(row["response_text"]) == call["input"]
        assert row["output_category"] in ("bug", "billing", "account", "other")
    for key, (_, code) in MARKERS.items():
        row = rows[key]
        assert (row["status"], row["error_code"], row["attempts"]) == ("failed", code, 1), row
        assert row["output_urgency"] is None and row["error_message"]
    assert "stop_reason: refusal" in rows["REFUSED"]["error_message"]
    assert "stop_reason: max_tokens" in rows["CUT"]["error_message"]
    models = frame.set_index("ticket_id")["output"]
    assert models["T0"].urgency == rows["T0"]["output_urgency"] and models["CUT"] is None


def test_params_may_not_set_the_tools_the_output_schema_sets(tmp_path: Path) -> None:
    spec = anthropic_spec(tmp_path, "http://127.0.0.1:1/v1")
    spec["request"]["output_schema"] = TRIAGE_SCHEMA
    spec["request"]["params"] |= {"tool_choice": {"type": "auto"}}
    with pytest.raises(SpecError, match=r"\['tool_choice'\] are set from request.output_schema"):
        PipelineSpec.from_dict(spec, base_dir=tmp_path)


def test_the_tool_an_output_schema_adds_is_in_the_token_estimate(tmp_path: Path) -> None:
    """Anthropic counts a request's tools, and its tool-use instructions, as input tokens."""
    batch = pa.record_batch({"ticket_id": ["T1"], "subject": ["S"], "body": ["Where is it?"]})
    estimates, lines = [], []
    for schema in (None, TRIAGE_SCHEMA):
        data = anthropic_spec(tmp_path, "http://127.0.0.1:1/v1")
        data["request"]["output_schema"] = schema
        built = RequestBuilder(PipelineSpec.from_dict(data, base_dir=tmp_path)).build(batch, DAY)
        (line,) = [orjson.loads(line) for line in built.lines.to_pylist()]
        # a retry's estimate, read from the line, is the same
        assert estimate_request_tokens([line]).tolist() == built.estimated_input_tokens.tolist()
        estimates.append(int(built.estimated_input_tokens[0]))
        lines.append(line)
    tools = orjson.dumps(lines[1]["body"]["tools"]).decode()
    assert estimates[1] - estimates[0] == count_tokens(tools, MODEL) + FORCED_TOOL_PROMPT_TOKENS
