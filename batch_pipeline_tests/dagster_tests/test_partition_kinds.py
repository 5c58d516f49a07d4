"""Each kind of partitions in Dagster: the assets' and checks' partitions definition, what
the schedule submits, and the sensor collecting a weekly and an unpartitioned pipeline."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import dagster as dg
import pytest

from batch_pipeline.core.pipeline import load_pipeline
from batch_pipeline.core.spec import PipelineSpec
from batch_pipeline.dagster import build_batch_pipeline_defs, build_partitions_def
from batch_pipeline.demo import demo_spec_data, execute_run_request
from batch_pipeline_tests.conftest import ticket_spec, write_tickets

URL = "http://127.0.0.1:9/v1"
KINDS = {
    "daily": (
        {"start": "2026-11-01", "end": "2026-11-03"},
        dg.DailyPartitionsDefinition,
        ["2026-11-01", "2026-11-02", "2026-11-03"],
    ),
    "weekly": (  # weeks begin on the start's weekday, a Wednesday; the end's week is in
        {"kind": "weekly", "start": "2026-11-04", "end": "2026-11-20"},
        dg.WeeklyPartitionsDefinition,
        ["2026-11-04", "2026-11-11", "2026-11-18"],
    ),
    "monthly": (
        {"kind": "monthly", "start": "2026-09-01", "end": "2026-11-15"},
        dg.MonthlyPartitionsDefinition,
        ["2026-09-01", "2026-10-01", "2026-11-01"],
    ),
}


def defs_with(tmp_path, partitions) -> dg.Definitions:
    data = {**demo_spec_data(base_url=URL), "partitions": partitions}
    return build_batch_pipeline_defs(spec=PipelineSpec.from_dict(data, base_dir=tmp_path))


def partitions_defs_of(defs: dg.Definitions) -> set:
    """The partitions definitions of every asset and check of `defs`."""
    graph = defs.resolve_asset_graph()
    assets = {graph.get(key).partitions_def for key in graph.get_all_asset_keys()}
    checks = {
        check.partitions_def
        for checks_def in defs.asset_checks or ()
        for check in checks_def.check_specs
    }
    return assets | checks


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_every_asset_and_check_takes_the_kinds_partitions_definition(tmp_path, kind) -> None:
    partitions, definition_type, keys = KINDS[kind]
    defs = defs_with(tmp_path, partitions)
    (shared,) = partitions_defs_of(defs)
    assert type(shared) is definition_type
    assert shared.get_partition_keys() == keys
    spec = PipelineSpec.from_dict(
        {**demo_spec_data(base_url=URL), "partitions": partitions}, base_dir=tmp_path
    )
    assert [spec.partitioning.parse(key).key for key in keys] == keys  # the core's keys too


def test_an_unpartitioned_pipeline_has_unpartitioned_assets(tmp_path) -> None:
    defs = defs_with(tmp_path, "none")
    assert partitions_defs_of(defs) == {None}
    spec = PipelineSpec.from_dict(
        {**demo_spec_data(base_url=URL), "partitions": "none"}, base_dir=tmp_path
    )
    assert build_partitions_def(spec) is None


def evaluate(defs: dg.Definitions, at: datetime):
    schedule = defs.resolve_schedule_def("ticket_triage_nightly")
    return schedule(dg.build_schedule_context(scheduled_execution_time=at))


@pytest.mark.parametrize(
    ("partitions", "at", "key"),
    [
        # Friday 20 November: the last whole week is the one from Wednesday the 11th.
        (
            {"kind": "weekly", "start": "2026-11-04"},
            datetime(2026, 11, 20, 1, tzinfo=UTC),
            "2026-11-11",
        ),
        # 3 December: the last whole month is November.
        (
            {"kind": "monthly", "start": "2026-09-01"},
            datetime(2026, 12, 3, 1, tzinfo=UTC),
            "2026-11-01",
        ),
    ],
)
def test_the_schedule_submits_the_last_whole_week_or_month(tmp_path, partitions, at, key):
    defs = defs_with(tmp_path, partitions)
    request = evaluate(defs, at)
    assert (request.partition_key, request.run_key) == (key, f"ticket_triage:{key}:nightly")
    # the next day's tick asks under the same run key, so Dagster submits the week once
    assert evaluate(defs, at + timedelta(days=1)).run_key == request.run_key


def test_the_schedule_submits_an_unpartitioned_data_set_once(tmp_path) -> None:
    defs = defs_with(tmp_path, "none")
    first = evaluate(defs, datetime(2026, 11, 20, 1, tzinfo=UTC))
    later = evaluate(defs, datetime(2026, 12, 20, 1, tzinfo=UTC))
    assert first.partition_key is None
    assert first.run_key == later.run_key == "ticket_triage:all:nightly"


def test_the_schedule_skips_a_week_past_the_end(tmp_path) -> None:
    defs = defs_with(tmp_path, {"kind": "weekly", "start": "2026-11-04", "end": "2026-11-10"})
    skip = evaluate(defs, datetime(2026, 11, 20, 1, tzinfo=UTC))
    assert isinstance(skip, dg.SkipReason)
    assert skip.skip_message.startswith("2026-11-11, the last weekly partition to have ended")


@pytest.mark.slow
@pytest.mark.parametrize(
    ("partitions", "key", "run_partition"),
    [
        ("none", "all", None),
        ({"kind": "weekly", "start": "2026-11-02"}, "2026-11-02", "2026-11-02"),
    ],
)
def test_the_sensor_collects_a_weekly_and_an_unpartitioned_pipeline(
    tmp_path, batch_api, partitions, key, run_partition
) -> None:
    """A partition run to its end outside Dagster: the sensor asks for its results run (with
    no partition key for unpartitioned assets), which materializes `results`."""
    days = [date(2026, 11, 2), date(2026, 11, 8)]
    write_tickets(
        tmp_path / "tickets.parquet",
        [
            {"ticket_id": f"T{n}", "subject": "Late", "body": "where", "created_at": day}
            for n, day in enumerate(days)
        ],
    )
    data = ticket_spec(tmp_path, batch_api, name="kinds", partitions=partitions)
    spec = PipelineSpec.from_dict(data, base_dir=tmp_path)
    with load_pipeline(spec) as pipeline:
        pipeline.run(key, poll_interval=0.2, timeout=60)
    defs = build_batch_pipeline_defs(spec=spec)
    sensor = defs.resolve_sensor_def("kinds_batch_sensor")
    with dg.instance_for_test() as instance:
        (request,) = sensor(
            dg.build_sensor_context(instance=instance, definitions=defs)
        ).run_requests
        assert (request.partition_key, request.run_key) == (
            run_partition,
            f"kinds:{key}:g1:results:1",
        )
        run = execute_run_request(defs, request, instance)
        assert run.success
        (event,) = run.get_asset_materialization_events()
        assert event.materialization.metadata["dagster/row_count"].value == 2
        after = sensor(dg.build_sensor_context(instance=instance, definitions=defs))
        assert not after.run_requests
