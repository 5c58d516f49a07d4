"""A pipeline's partitions in Dagster: the `PartitionsDefinition` its assets share, and the
partition a run, a check or a sensor's request stands for.

`build_partitions_def` is the one place a spec's `partitions` becomes Dagster's: daily, weekly
and monthly time windows whose keys are the core's (`YYYY-MM-DD` of their first day), in the
schedule's timezone; None for `partitions: none`, whose assets are unpartitioned and whose
one partition is `all` in the ledger and the storage layout.
"""

from __future__ import annotations

import dagster as dg

from batch_pipeline.core.partition import WHOLE_KEY, PartitionKind
from batch_pipeline.core.spec import PipelineSpec, SpecError


def build_partitions_def(spec: PipelineSpec) -> dg.TimeWindowPartitionsDefinition | None:
    """The partitions of the pipeline's assets: one per day, week or month from
    `partitions.start` to the one holding `partitions.end` (inclusive), in the schedule's
    timezone, each existing once it is over; None for an unpartitioned pipeline."""
    partitioning = spec.partitioning
    if partitioning.kind is PartitionKind.NONE:
        return None
    start = partitioning.start
    if start is None:
        raise SpecError(
            f"pipeline {spec.name}: the Dagster assets are partitioned by "
            f"{partitioning.kind} windows from a first day; add "
            "`partitions: {start: YYYY-MM-DD}` to the spec (or `partitions: none`)"
        )
    last = None if partitioning.end is None else partitioning.containing(partitioning.end)
    window = {
        "start_date": start.isoformat(),
        "end_date": None if last is None or last.end is None else last.end.isoformat(),
        "timezone": spec.schedule.timezone,
    }
    if partitioning.kind is PartitionKind.WEEKLY:  # weeks begin on start's weekday (0: Sunday)
        return dg.WeeklyPartitionsDefinition(**window, day_offset=start.isoweekday() % 7)
    if partitioning.kind is PartitionKind.MONTHLY:
        return dg.MonthlyPartitionsDefinition(**window)
    return dg.DailyPartitionsDefinition(**window)


def partition_key_of(
    context: dg.AssetExecutionContext | dg.AssetCheckExecutionContext,
) -> str:
    """The key of the partition a step runs for: the run's partition key, or `all` for an
    unpartitioned pipeline's assets."""
    return context.partition_key if context.has_partition_key else WHOLE_KEY


def run_partition_key(partitions_def: dg.PartitionsDefinition | None, key: str) -> str | None:
    """The partition key a run of the partition `key` is asked for with: none for
    unpartitioned assets."""
    return None if partitions_def is None else key


def has_partition(partitions_def: dg.PartitionsDefinition | None, key: str) -> bool:
    """Whether the assets have the partition `key` (`all` alone when unpartitioned)."""
    return key == WHOLE_KEY if partitions_def is None else partitions_def.has_partition_key(key)


def materialized_partitions(
    instance: dg.DagsterInstance,
    asset_key: dg.AssetKey,
    partitions_def: dg.PartitionsDefinition | None,
) -> set[str]:
    """The partitions of `asset_key` this instance has materialized (`all` once an
    unpartitioned asset has been)."""
    if partitions_def is not None:
        return set(instance.get_materialized_partitions(asset_key))
    return {WHOLE_KEY} if instance.get_latest_materialization_event(asset_key) else set()
