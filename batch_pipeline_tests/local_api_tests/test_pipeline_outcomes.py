"""A pipeline over the local Batch API: rows that got an error status or no answer at all end
in the results with the right status, code and number of attempts."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from openai import OpenAI

from batch_pipeline import PipelineSpec, load_pipeline
from batch_pipeline.core.outcomes import classify
from batch_pipeline.core.types import RowStatus
from batch_pipeline.local_api.server import run_local_batch_api
from batch_pipeline_tests.conftest import ticket_spec, write_tickets
from batch_pipeline_tests.local_api_tests.helpers import read_lines
from batch_pipeline_tests.local_api_tests.upstream_server import Upstream

DAY = "2026-11-20"


def run_day(tmp_path: Path, base_url: str, bodies: dict[str, str]) -> pd.DataFrame:
    """Run one day whose tickets have these bodies (by key); its results, by ticket_id."""
    at = datetime(2026, 11, 20, 9, 30)
    rows = [
        {"ticket_id": k, "subject": "S", "body": v, "created_at": at} for k, v in bodies.items()
    ]
    write_tickets(tmp_path / "tickets.parquet", rows)
    spec = ticket_spec(tmp_path, base_url, output={"keep_provider_files": True})
    with load_pipeline(PipelineSpec.from_dict(spec, base_dir=tmp_path)) as pipeline:
        summary = pipeline.run(DAY, poll_interval=0.2, timeout=60)
    return pd.read_parquet(summary.path).set_index("ticket_id")


def answered_lines(base_url: str) -> dict[str, list[dict[str, Any]]]:
    """The lines of every batch's output and error files, by file kind."""
    client = OpenAI(base_url=base_url, api_key="k", max_retries=0)
    batches = list(client.batches.list())
    return {
        "output": [line for b in batches for line in read_lines(client, b.output_file_id)],
        "error": [line for b in batches for line in read_lines(client, b.error_file_id)],
    }


def test_upstream_unavailable_is_retryable() -> None:
    assert classify(None, "upstream_unavailable") == (RowStatus.FAILED, True)


@pytest.mark.slow
def test_rows_answered_with_an_error_status_are_read_from_the_error_file(tmp_path: Path) -> None:
    bodies = {"OK": "fine", "F500": "<<fail:500>>", "F400": "<<fail:400>>"}
    with run_local_batch_api(tmp_path / "state") as url:
        results = run_day(tmp_path, url, bodies)
        lines = answered_lines(url)

    assert {line["custom_id"] for line in lines["output"]} == {results.loc["OK", "custom_id"]}
    errors = [line["response"]["status_code"] for line in lines["error"]]
    assert sorted(errors) == [400, 500, 500, 500]  # the 500 was tried three times
    expected = {
        "OK": ("succeeded", 1, 200, ""),
        "F500": ("failed", 3, 500, "server_error"),
        "F400": ("failed", 1, 400, "invalid_request"),
    }
    for key, values in expected.items():
        row = results.loc[key]
        code = "" if pd.isna(row["error_code"]) else row["error_code"]
        got = (row["status"], row["attempts"], row["http_status"], code)
        assert got == values, key


@pytest.mark.slow
def test_rows_the_upstream_left_unanswered_succeed_on_a_retry(
    tmp_path: Path, upstream: Upstream, proxy_options: dict[str, Any]
) -> None:
    options = {**proxy_options, "upstream_timeout_seconds": 0.3, "upstream_max_retries": 0}
    with run_local_batch_api(tmp_path / "state", **options) as url:
        results = run_day(tmp_path, url, {"OK": "fine", "SLEEPY": "sleepy"})
        lines = answered_lines(url)

    assert [line["error"]["code"] for line in lines["error"]] == ["upstream_unavailable"]
    assert (results.loc["SLEEPY", "status"], results.loc["SLEEPY", "attempts"]) == ("succeeded", 2)
    assert (results.loc["OK", "status"], results.loc["OK", "attempts"]) == ("succeeded", 1)
