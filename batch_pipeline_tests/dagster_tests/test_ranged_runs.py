"""A backfill policy lets one run cover a range of days (`dg launch --partition-range`, a
backfill): each step works through the days of the range."""

from __future__ import annotations

import dagster as dg
import pytest

from batch_pipeline.dagster import build_batch_pipeline_assets, build_batch_pipeline_defs
from batch_pipeline.dagster.assets import backend_resource_key_for
from batch_pipeline.demo import DEMO_DAYS, demo_spec_data, write_demo

RANGE_START = "dagster/asset_partition_range_start"
RANGE_END = "dagster/asset_partition_range_end"


def test_the_backfill_policy_reaches_every_asset(tmp_path) -> None:
    spec = write_demo(tmp_path, base_url="http://127.0.0.1:9/v1")
    policy = dg.BackfillPolicy.multi_run(max_partitions_per_run=7)
    assets = build_batch_pipeline_assets(spec=spec, backfill_policy=policy)
    assert [a.backfill_policy for a in assets] == [policy] * 3
    assert [a.backfill_policy for a in build_batch_pipeline_assets(spec=spec)] == [None] * 3


@pytest.mark.slow
def test_one_run_over_a_range_builds_and_submits_every_day_of_it(tmp_path, batch_api) -> None:
    spec = write_demo(tmp_path, base_url=batch_api)
    assert demo_spec_data(base_url=batch_api)["partitions"]["start"] <= DEMO_DAYS[0]
    defs = build_batch_pipeline_defs(spec=spec, backfill_policy=dg.BackfillPolicy.single_run())
    job = defs.resolve_job_def(f"{spec.name}_submit_job")
    first, last = DEMO_DAYS[0], DEMO_DAYS[1]
    with dg.instance_for_test() as instance:
        run = job.execute_in_process(
            instance=instance,
            tags={RANGE_START: first, RANGE_END: last},
            run_config={"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}},
        )
        assert run.success
        materialized = {
            (event.asset_key.path[-1], event.partition)
            for event in run.get_asset_materialization_events()
        }
    assert materialized == {
        (role, day) for role in ("requests", "batches") for day in (first, last)
    }
    with defs.resources[backend_resource_key_for(spec)].open_pipeline(spec) as pipeline:
        for day in (first, last):
            record = pipeline.get_partition(day)
            assert record is not None and record.built_at is not None
            assert pipeline.status(day)[0].state == "in_flight"  # submitted, not yet settled
        assert pipeline.get_partition(DEMO_DAYS[2]) is None  # outside the range
