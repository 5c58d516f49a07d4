"""`batch-pipeline demo`: offline, end to end, with Dagster in the loop."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from batch_pipeline.cli import main as cli_main
from batch_pipeline.demo import DEMO_DAYS, TRIAGE_SCHEMA, demo_rows


def test_the_sample_table_is_deterministic_and_has_bad_rows() -> None:
    rows = demo_rows()
    assert rows == demo_rows()
    keys = [row["ticket_id"] for row in rows]
    assert len(keys) != len(set(keys))  # a duplicate key
    assert any(row["body"] is None for row in rows)
    bodies = " ".join(row["body"] or "" for row in rows)
    assert "<<fail:500>>" in bodies and "<<fail:400>>" in bodies and "<<hang>>" in bodies
    days = {row["created_at"].date().isoformat() for row in rows}
    assert days == set(DEMO_DAYS)


@pytest.mark.slow
def test_the_demo_prints_the_parquet_and_a_summary(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    command = ["demo", "--dir", str(tmp_path), "--completion-window-seconds", "2"]
    assert cli_main(command) == 0  # `batch-pipeline demo --dir ...`
    output = capsys.readouterr().out
    results_dir = tmp_path / "out" / "ticket_triage" / "results"
    assert str(results_dir) in output
    for status in ("succeeded", "failed", "rejected", "expired"):
        assert status in output
    assert len(pd.read_parquet(results_dir)) == len(demo_rows())
    typed = pq.read_table(tmp_path / "out" / "ticket_triage_typed" / "results")
    assert typed.num_rows == len(demo_rows())
    assert typed.schema.field("output_category").type == pa.string()
    assert typed.schema.field("output_urgency").type == pa.int64()
    assert typed.schema.field("output_tags").type == pa.list_(pa.string())
    succeeded = typed.filter(pc.equal(typed["status"], "succeeded"))
    assert set(succeeded["output_category"].to_pylist()) <= set(
        TRIAGE_SCHEMA["properties"]["category"]["enum"]
    )
    assert "output_category" in output
    # The same tickets through Anthropic's Message Batches, on the same local service.
    claude = pd.read_parquet(tmp_path / "out" / "ticket_triage_claude" / "results")
    assert len(claude) == len(demo_rows())
    ours = pd.read_parquet(results_dir)
    assert claude["status"].value_counts().to_dict() == ours["status"].value_counts().to_dict()
    assert claude["custom_id"].tolist() != [] and set(claude["response_text"].dropna())
    # The judge grades the first day's answers, every one of its tickets once.
    judge = pd.read_parquet(tmp_path / "out" / "ticket_triage_judge" / "results")
    first_day = ours[ours["partition"].astype(str) == DEMO_DAYS[0]]
    assert sorted(judge["ticket_id"]) == sorted(first_day["ticket_id"])
    assert "ticket_triage_judge" in output
