"""`build_nightly_schedule`: on the spec's cron, submits the last partition to have ended.

- daily: yesterday's partition;
- weekly, monthly: the last whole week or month. Each tick asks under the run key of that
  partition, so on a daily cron a week is submitted once, on the first tick after it ends,
  and Dagster skips the ticks that ask for it again;
- none: the one data set, once: its run key never changes, so later ticks are skipped.
"""

from datetime import datetime, timedelta
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

import dagster as dg

from batch_pipeline.core.partition import Partition, PartitionKind
from batch_pipeline.core.spec import PipelineSpec
from batch_pipeline.dagster.partitions import build_partitions_def

if TYPE_CHECKING:  # what define_asset_job returns; dagster does not export the name
    from dagster._core.definitions.unresolved_asset_job_definition import (
        UnresolvedAssetJobDefinition,
    )


def last_ended(spec: PipelineSpec, at: datetime) -> Partition:
    """The partition that ended last before `at` (yesterday for daily partitions), counted
    in the schedule's timezone."""
    today = at.astimezone(ZoneInfo(spec.schedule.timezone)).date()
    partitioning = spec.partitioning
    current = partitioning.containing(today)
    if current.is_whole:
        return current
    return partitioning.containing(current.day - timedelta(days=1))


def build_nightly_schedule(
    *,
    spec: PipelineSpec,
    job: "UnresolvedAssetJobDefinition | dg.JobDefinition",
    default_status: dg.DefaultScheduleStatus = dg.DefaultScheduleStatus.STOPPED,
) -> dg.ScheduleDefinition:
    """The schedule `{name}_nightly`: on `schedule.cron` it runs `job` (requests + batches)
    for the last partition to have ended (see the module). Stopped by default: turning it on
    starts spending."""
    partitions_def = build_partitions_def(spec)
    kind = spec.partitioning.kind
    what = {
        PartitionKind.NONE: "the data set, once",
        PartitionKind.DAILY: "yesterday's requests",
        PartitionKind.WEEKLY: "the last whole week's requests",
        PartitionKind.MONTHLY: "the last whole month's requests",
    }[kind]

    @dg.schedule(
        name=f"{spec.name}_nightly",
        cron_schedule=spec.schedule.cron,
        execution_timezone=spec.schedule.timezone,
        job=job,
        default_status=default_status,
        description=f"Builds and submits {what} of {spec.name}.",
    )
    def _nightly(context: dg.ScheduleEvaluationContext) -> dg.RunRequest | dg.SkipReason:
        at = context.scheduled_execution_time or datetime.now(ZoneInfo(spec.schedule.timezone))
        partition = last_ended(spec, at)
        run_key = f"{spec.name}:{partition.key}:nightly"
        if partitions_def is None:
            return dg.RunRequest(run_key=run_key)
        try:
            spec.partitioning.check_bounds(partition)
        except ValueError:
            return dg.SkipReason(
                f"{partition.key}, the last {kind} partition to have ended, is not one of "
                f"{spec.name}'s: partitions run from {spec.partitioning.start} to "
                f"{spec.partitioning.end or 'now'}"
            )
        return dg.RunRequest(run_key=run_key, partition_key=partition.key)

    return _nightly
