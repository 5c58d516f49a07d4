"""The nightly schedule submits yesterday's partition with the spec's cron."""

from __future__ import annotations

from datetime import UTC, datetime

import dagster as dg
import pytest

from batch_pipeline.core.spec import PipelineSpec
from batch_pipeline.dagster import SUBMISSION_TAG, build_batch_pipeline_defs
from batch_pipeline.demo import demo_spec_data

URL = "http://127.0.0.1:9/v1"


@pytest.fixture
def defs(tmp_path) -> dg.Definitions:
    data = demo_spec_data(base_url=URL)
    data["schedule"] = {"cron": "30 2 * * *", "timezone": "Europe/Paris"}
    return build_batch_pipeline_defs(spec=PipelineSpec.from_dict(data, base_dir=tmp_path))


def evaluate(defs: dg.Definitions, at: datetime):
    schedule = defs.resolve_schedule_def("ticket_triage_nightly")
    return schedule(dg.build_schedule_context(scheduled_execution_time=at))


def test_the_schedule_runs_the_submit_job_on_the_spec_cron(defs: dg.Definitions) -> None:
    schedule = defs.resolve_schedule_def("ticket_triage_nightly")
    assert schedule.cron_schedule == "30 2 * * *"
    assert schedule.execution_timezone == "Europe/Paris"
    assert schedule.job_name == "ticket_triage_submit_job"
    assert schedule.default_status is dg.DefaultScheduleStatus.STOPPED
    assert defs.resolve_job_def("ticket_triage_submit_job").tags[SUBMISSION_TAG] == "true"


def test_it_targets_yesterday_in_the_schedule_timezone(defs: dg.Definitions) -> None:
    # 23:30 UTC on the 20th is already 00:30 on the 21st in Paris: yesterday there is the
    # 20th, where yesterday in UTC would be the 19th.
    request = evaluate(defs, datetime(2026, 11, 20, 23, 30, tzinfo=UTC))
    assert isinstance(request, dg.RunRequest)
    assert request.partition_key == "2026-11-20"
    assert request.run_key == "ticket_triage:2026-11-20:nightly"


def test_before_the_first_partition_it_skips_and_says_why(defs: dg.Definitions) -> None:
    skip = evaluate(defs, datetime(2026, 11, 18, 3, 0, tzinfo=UTC))
    assert isinstance(skip, dg.SkipReason)
    assert "2026-11-17" in skip.skip_message and "2026-11-18" in skip.skip_message
