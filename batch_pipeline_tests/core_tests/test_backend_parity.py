"""The in-memory Batch API is faithful to the local service: one pipeline scenario, run on
each, ends in the same results rows (status, error code, attempts, HTTP status)."""

from __future__ import annotations

from datetime import datetime

import pandas as pd

from batch_pipeline import PipelineSpec
from batch_pipeline_tests.batch_apis import BatchApi, on_both_apis
from batch_pipeline_tests.conftest import ticket_spec, write_tickets

DAY = "2026-11-20"
BODIES = {
    "OK1": "My parcel is late.",
    "OK2": "Where is my refund?",
    "SLOW": "answered after a while <<slow:1>>",
    "F400": "<<fail:400>>",
    "F404": "<<fail:404>>",
    "F500": "<<fail:500>>",
    "F503": "<<fail:503>>",
    "HANG": "<<hang>>",
}
# ticket_id -> (status, error_code, attempts, http_status): 4xx answers are final, 5xx and
# expiry are retried up to the spec's three attempts.
EXPECTED = {
    "F400": ("failed", "invalid_request", 1, 400),
    "F404": ("failed", "not_found", 1, 404),
    "F500": ("failed", "server_error", 3, 500),
    "F503": ("failed", "service_unavailable", 3, 503),
    "HANG": ("expired", "batch_expired", 3, None),
    "OK1": ("succeeded", None, 1, 200),
    "OK2": ("succeeded", None, 1, 200),
    "SLOW": ("succeeded", None, 1, 200),
}


def result_rows(frame: pd.DataFrame) -> dict[str, tuple]:
    frame = frame.astype(object).where(frame.notna(), None)
    return {
        row.ticket_id: (
            row.status,
            row.error_code,
            int(row.attempts),
            None if row.http_status is None else int(row.http_status),
        )
        for row in frame.itertuples()
    }


@on_both_apis
def test_the_same_scenario_ends_in_the_same_rows_on_either_batch_api(tmp_path, api: BatchApi):
    at = datetime(2026, 11, 20, 9)
    rows = [
        {"ticket_id": k, "subject": "s", "body": b, "created_at": at} for k, b in BODIES.items()
    ]
    write_tickets(tmp_path / "tickets.parquet", rows)
    spec = PipelineSpec.from_dict(ticket_spec(tmp_path, api.base_url), base_dir=tmp_path)
    with api.pipeline(spec) as pipeline:
        summary = pipeline.run(DAY, poll_interval=0.2, timeout=90)
    assert result_rows(pd.read_parquet(summary.path)) == EXPECTED
