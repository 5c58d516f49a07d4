"""A backfill as Dagster runs it, on the PostgreSQL instance: requests + batches for three days,
sensor ticks until the results runs are asked for, the results runs with their checks."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from typing import Any

import dagster as dg
import pandas as pd
import pytest

from batch_pipeline.core.pipeline import read_results
from batch_pipeline.core.spec import PipelineSpec
from batch_pipeline.core.types import RowStatus
from batch_pipeline.dagster import (
    FAILED_SHARE_CHECK,
    ROWS_ONCE_CHECK,
    BatchBackendResource,
    build_batch_pipeline_defs,
    build_batch_pipeline_sensor,
)
from batch_pipeline.dagster.assets import REBUILD_TAG, backend_resource_key_for
from batch_pipeline.demo import (
    DEMO_DAYS,
    SOURCE_FILE,
    execute_run_request,
    sensor_run_requests,
)
from batch_pipeline_tests.dagster_tests.conftest import SECRET, SECRET_ENV, generation_of

pytestmark = pytest.mark.slow

TIMEOUT = 120.0
REBUILT_DAY = DEMO_DAYS[0]
FAILING_DAY = DEMO_DAYS[2]


@dataclass
class Backfill:
    spec: PipelineSpec
    defs: dg.Definitions
    submissions: list[dg.ExecuteInProcessResult]
    requests: list[dg.RunRequest]
    skip_reasons: list[str]
    results: dict[str, dg.ExecuteInProcessResult]


def submit_day(
    backfill_defs: dg.Definitions, spec: PipelineSpec, day: str, instance, **tags: str
) -> Any:
    job = backfill_defs.resolve_job_def(f"{spec.name}_submit_job")
    return job.execute_in_process(partition_key=day, instance=instance, tags=tags or None)


def generation_built(run: Any) -> int:
    (event,) = [
        e for e in run.get_asset_materialization_events() if e.asset_key.path[-1] == "requests"
    ]
    return generation_of(event.materialization.metadata)


@pytest.fixture(scope="module")
def backfill(demo_spec: PipelineSpec, instance: dg.DagsterInstance) -> Backfill:
    backend = BatchBackendResource(
        provider="local", base_url=demo_spec.backend.base_url, api_key=dg.EnvVar(SECRET_ENV)
    )
    defs = build_batch_pipeline_defs(spec=demo_spec, backend=backend)
    submissions = [submit_day(defs, demo_spec, day, instance) for day in DEMO_DAYS]
    skip_reasons: list[str] = []
    requests, results = [], {}
    for request in sensor_run_requests(
        defs,
        demo_spec,
        instance,
        expected=len(DEMO_DAYS),
        timeout_seconds=TIMEOUT,
        on_skip=skip_reasons.append,
    ):  # each run launched before the next tick, as the daemon does
        requests.append(request)
        results[request.partition_key] = execute_run_request(defs, request, instance)
    return Backfill(demo_spec, defs, submissions, requests, skip_reasons, results)


def source_rows(spec: PipelineSpec) -> pd.DataFrame:
    frame = pd.read_parquet(spec.resolve(SOURCE_FILE))
    frame["day"] = frame["created_at"].dt.strftime("%Y-%m-%d")
    return frame


def checks_of(result: dg.ExecuteInProcessResult) -> dict[str, dg.AssetCheckEvaluation]:
    return {e.check_name: e for e in result.get_asset_check_evaluations()}


def test_submission_runs_succeed_and_say_what_they_built(backfill: Backfill) -> None:
    for day, run in zip(DEMO_DAYS, backfill.submissions, strict=True):
        assert run.success
        assert run.dagster_run.tags["batch_pipeline/submission"] == "true"
        events = {e.asset_key.path[-1]: e for e in run.get_asset_materialization_events()}
        requests, batches = events["requests"], events["batches"]
        meta = requests.materialization.metadata
        assert "generation" not in meta  # the first one
        assert meta["shards"].value >= 1
        assert meta["estimated_cost_usd"].value < meta["estimated_live_cost_usd"].value
        assert meta["estimated_saved_percent"].value == 50.0
        assert requests.partition == day
        ids = batches.materialization.metadata["batch_ids"].value
        assert ids and all(isinstance(i, str) for i in ids)


def test_sensor_asks_once_per_day_for_the_results_run(
    backfill: Backfill, instance: dg.DagsterInstance
) -> None:
    name = backfill.spec.name
    assert sorted(r.run_key for r in backfill.requests) == [
        f"{name}:{day}:g1:results:1" for day in DEMO_DAYS
    ]
    for request in backfill.requests:
        assert request.asset_selection == [dg.AssetKey([name, "results"])]
    assert any(" in flight for 2026-11-" in reason for reason in backfill.skip_reasons), (
        backfill.skip_reasons
    )
    # The backfill stopped looking at the third request. Later ticks, each day's results run
    # done, ask for nothing more, even from a sensor that would ask again at once.
    key = backend_resource_key_for(backfill.spec)
    sensor = build_batch_pipeline_sensor(
        spec=backfill.spec, backend=backfill.defs.resources[key], rerun_results_after_seconds=0
    )
    cursor = None
    for _ in range(3):
        context = dg.build_sensor_context(
            instance=instance, cursor=cursor, definitions=backfill.defs
        )
        later = sensor(context)
        assert not later.run_requests, later.run_requests
        cursor = later.cursor


def test_every_source_row_is_in_the_parquet_once(backfill: Backfill) -> None:
    source = source_rows(backfill.spec)
    results = read_results(backfill.spec)
    assert len(results) == len(source)
    assert Counter(results["ticket_id"]) == Counter(source["ticket_id"])
    assert set(results["status"]) >= {"succeeded", "failed", "rejected", "expired"}
    for day, run in backfill.results.items():
        assert run.success
        (event,) = run.get_asset_materialization_events()
        meta = event.materialization.metadata
        day_rows = int((source["day"] == day).sum())
        assert meta["dagster/row_count"].value == day_rows
        assert pd.read_parquet(meta["path"].value).shape[0] == day_rows
        assert [c.name for c in meta["dagster/column_schema"].schema.columns][:1]
        assert meta["preview"].value.startswith("| ")
        counts = {status.value: meta[status.value].value for status in RowStatus}
        assert sum(counts.values()) == day_rows
        failures = meta["failures"].value.records if "failures" in meta else []
        assert sum(r.data["rows"] for r in failures) == day_rows - counts["succeeded"]


def test_results_carry_cost_and_the_totals_written_so_far_as_numbers(backfill: Backfill) -> None:
    """Each results run's totals are those of the days written by then, up to its own key,
    and add up to the per-day figures Dagster plots."""
    written: dict[str, dict[str, Any]] = {}
    for day, run in backfill.results.items():  # in the order the runs were made
        (event,) = run.get_asset_materialization_events()
        meta = event.materialization.metadata
        written[day] = meta
        for name in ("cost_usd", "live_cost_usd", "saved_usd", "total_cost_usd"):
            assert isinstance(meta[name], dg.FloatMetadataValue), name
        so_far = [m for key, m in written.items() if key <= day]
        assert meta["total_partitions"].value == len(so_far)
        assert meta["total_rows"].value == sum(m["dagster/row_count"].value for m in so_far)
        assert meta["total_output_tokens"].value == sum(m["output_tokens"].value for m in so_far)
        for name in ("cost_usd", "saved_usd"):
            expected = sum(m[name].value for m in so_far)
            assert meta[f"total_{name}"].value == pytest.approx(expected, abs=3e-6)


def test_checks_pass_and_the_bad_day_warns(backfill: Backfill) -> None:
    for day, run in backfill.results.items():
        checks = checks_of(run)
        assert checks[ROWS_ONCE_CHECK].passed, checks[ROWS_ONCE_CHECK].metadata
        failed_share = checks[FAILED_SHARE_CHECK]
        assert failed_share.passed is (day != FAILING_DAY), failed_share.description
        assert failed_share.severity is dg.AssetCheckSeverity.WARN


def test_the_key_never_reaches_the_event_log(backfill: Backfill, instance) -> None:
    runs = [*backfill.submissions, *backfill.results.values()]
    for run in runs:
        records = instance.all_logs(run.run_id)
        text = json.dumps([str(record) for record in records])
        assert SECRET not in text
    assert all(SECRET not in reason for reason in backfill.skip_reasons)


def test_a_settled_day_run_again_pays_nothing_unless_tagged_to_rebuild(
    backfill: Backfill, instance
) -> None:
    spec, defs = backfill.spec, backfill.defs
    with defs.resources[backend_resource_key_for(spec)].open_pipeline(spec) as pipeline:
        batches_before = len(pipeline.ledger.batches(spec.name))
        again = submit_day(defs, spec, REBUILT_DAY, instance)  # a re-executed backfill
        assert again.success and generation_built(again) == 1
        assert len(pipeline.ledger.batches(spec.name)) == batches_before


def test_a_rebuilt_day_is_collected_again(backfill: Backfill, instance) -> None:
    spec, defs = backfill.spec, backfill.defs
    run = submit_day(defs, spec, REBUILT_DAY, instance, **{REBUILD_TAG: "true"})
    assert generation_built(run) == 2
    refused = defs.resolve_job_def(f"{spec.name}_submit_job").execute_in_process(
        partition_key=REBUILT_DAY,
        instance=instance,
        tags={REBUILD_TAG: "true"},
        raise_on_error=False,
    )
    assert not refused.success  # generation 2 is in flight: cancel it first

    (first,) = sensor_run_requests(defs, spec, instance, expected=1, timeout_seconds=TIMEOUT)
    assert first.run_key == f"{spec.name}:{REBUILT_DAY}:g2:results:1"

    # That request was never launched: the sensor asks again, under the same run key.
    backend = defs.resources[backend_resource_key_for(spec)]
    eager = build_batch_pipeline_sensor(spec=spec, backend=backend, rerun_results_after_seconds=0)
    context = dg.build_sensor_context(instance=instance, definitions=defs)
    (again,) = eager(context).run_requests
    assert again.run_key == first.run_key

    result = execute_run_request(defs, again, instance)
    assert result.success
    (event,) = result.get_asset_materialization_events()
    assert generation_of(event.materialization.metadata) == 2
    assert checks_of(result)[ROWS_ONCE_CHECK].passed
