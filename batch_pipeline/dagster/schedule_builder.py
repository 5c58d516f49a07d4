"""`build_nightly_schedule`: submits yesterday's partition on the spec's cron."""

from datetime import datetime, timedelta
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

import dagster as dg

from batch_pipeline.core.spec import PipelineSpec
from batch_pipeline.dagster.assets import build_partitions_def

if TYPE_CHECKING:  # what define_asset_job returns; dagster does not export the name
    from dagster._core.definitions.unresolved_asset_job_definition import (
        UnresolvedAssetJobDefinition,
    )


def yesterday(spec: PipelineSpec, at: datetime) -> str:
    """The partition key of the day before `at`, in the schedule's timezone."""
    local = at.astimezone(ZoneInfo(spec.schedule.timezone))
    return (local.date() - timedelta(days=1)).isoformat()


def build_nightly_schedule(
    *,
    spec: PipelineSpec,
    job: "UnresolvedAssetJobDefinition | dg.JobDefinition",
    default_status: dg.DefaultScheduleStatus = dg.DefaultScheduleStatus.STOPPED,
) -> dg.ScheduleDefinition:
    """The schedule `{name}_nightly`: on `schedule.cron` it runs `job` (requests + batches)
    for yesterday's partition. Stopped by default: turning it on starts spending."""
    partitions_def = build_partitions_def(spec)

    @dg.schedule(
        name=f"{spec.name}_nightly",
        cron_schedule=spec.schedule.cron,
        execution_timezone=spec.schedule.timezone,
        job=job,
        default_status=default_status,
        description=f"Builds and submits yesterday's requests of {spec.name}.",
    )
    def _nightly(context: dg.ScheduleEvaluationContext) -> dg.RunRequest | dg.SkipReason:
        at = context.scheduled_execution_time or datetime.now(ZoneInfo(spec.schedule.timezone))
        partition = yesterday(spec, at)
        if partition not in partitions_def.get_partition_keys(current_time=at):
            return dg.SkipReason(
                f"yesterday ({partition}) is not a partition of {spec.name}: "
                f"partitions run from {spec.partitions.start} to {spec.partitions.end or 'now'}"
            )
        return dg.RunRequest(run_key=f"{spec.name}:{partition}:nightly", partition_key=partition)

    return _nightly
