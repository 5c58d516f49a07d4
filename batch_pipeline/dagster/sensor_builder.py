"""`build_batch_pipeline_sensor`: watches a pipeline's batches and asks for its results runs.

Each tick runs one bounded poll of the core (refresh in-flight batches, collect the finished
ones, make retry shards, submit what the token budget allows), then requests a `results` run
for every day whose current generation has settled. At most once every `gc_interval_seconds`
a tick also removes the intermediates of days collected more than
`output.keep_intermediates_days` ago (`core.gc`). The ledger holds the truth; the cursor keeps
what the last tick saw, for the UI, and when the intermediates were last removed.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import dagster as dg
from dagster_shared.serdes import deserialize_value, serialize_value, whitelist_for_serdes

from batch_pipeline.core.spec import PipelineSpec
from batch_pipeline.core.types import BatchStatus, PartitionStatus, PollReport, ShardState
from batch_pipeline.dagster.assets import build_asset_specs
from batch_pipeline.dagster.partitions import (
    build_partitions_def,
    has_partition,
    materialized_partitions,
    run_partition_key,
)
from batch_pipeline.dagster.resources import BatchBackendResource
from batch_pipeline.dagster.translator import BatchPipelineTranslator

if TYPE_CHECKING:  # the ledger and the pipeline load in the tick that uses them
    from batch_pipeline.core.ledger import PartitionRecord
    from batch_pipeline.core.pipeline import Pipeline

# The sensor gRPC call times out after 60 s; the poll stops in time for the tick to finish.
POLL_TIME_BUDGET_SECONDS = 40.0
# A results run asked for this long ago whose day is still not collected (it failed, or was
# never launched) is asked for again.
RERUN_RESULTS_AFTER_SECONDS = 30 * 60.0
# How often a tick removes the intermediates of days collected long enough ago, and the time
# it may take (the poll's budget and this one stay within the sensor's gRPC timeout).
GC_INTERVAL_SECONDS = 60 * 60.0
GC_TIME_BUDGET_SECONDS = 10.0
# A day whose results runs failed this many times fails for a reason a new run will not
# change (its source changed since the build, say): it waits for a person.
MAX_RESULTS_REQUESTS = 3
RUN_KEY_TAG = "dagster/run_key"  # the tag Dagster puts the run key of a sensor's run under
_UNFINISHED_RUN_STATUSES = [
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.CANCELING,
]
MAX_PARTITIONS_IN_MESSAGE = 5
# Within one tick, how long the ledger's database may be away before the tick is skipped
# (the poll's budget plus this stays under the gRPC timeout).
TICK_RECONNECT_SECONDS = 15.0


@whitelist_for_serdes
@dataclass(frozen=True)
class BatchPipelineSensorCursor:
    """What the last tick saw, in words a person reads on the sensor page (the time in UTC);
    the next tick resumes from the ledger, not from here."""

    version: int = 2
    polled_at: str | None = None  # e.g. "2026-11-21 01:00:04 UTC"
    in_flight: int = 0
    queued: int = 0
    timed_out: bool = False
    results_requested: int = 0
    gc_at: float | None = None  # when a tick last removed every due day's intermediates


def build_batch_pipeline_sensor(
    *,
    spec: PipelineSpec,
    backend: BatchBackendResource | None = None,
    translator: BatchPipelineTranslator | None = None,
    minimum_interval_seconds: int = 30,
    default_status: dg.DefaultSensorStatus = dg.DefaultSensorStatus.RUNNING,
    poll_time_budget_seconds: float = POLL_TIME_BUDGET_SECONDS,
    rerun_results_after_seconds: float = RERUN_RESULTS_AFTER_SECONDS,
    gc_interval_seconds: float = GC_INTERVAL_SECONDS,
) -> dg.SensorDefinition:
    """The sensor `{name}_batch_sensor` of the pipeline `spec`.

    It runs by default: without it, submitted batches are never collected. It polls through
    `backend` (by default the one the spec's `backend:` section describes), which it closes
    over as dagster-dbt's polling sensor closes over its workspace; each tick opens one
    client and one ledger connection and closes them when it ends.
    """
    polled = backend if backend is not None else BatchBackendResource.from_spec(spec.backend)
    ticked = _ledger_wait_within_tick(spec)
    results_key = build_asset_specs(spec, translator)["results"].key
    partitions_def = build_partitions_def(spec)

    @dg.sensor(
        name=f"{spec.name}_batch_sensor",
        description=f"Polls the Batch API for {spec.name}'s batches, submits queued and retry "
        "shards, and requests the results run of each day that has settled. A preview "
        "(`dagster sensor preview`, the UI's Test Sensor) is a real tick, not a dry run: "
        "it polls, submits, collects and deletes provider files too (Dagster does not tell "
        "a tick that it is a preview).",
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=default_status,
        asset_selection=[results_key],
    )
    def _sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult:
        from batch_pipeline.core.reconnect import LedgerUnavailableError

        previous = _read_cursor(context)
        if previous.polled_at is not None:
            context.log.info(
                f"previous poll at {previous.polled_at}: "
                f"{previous.in_flight} in flight, {previous.queued} queued"
            )
        try:
            with polled.open_pipeline(ticked) as pipeline:
                report = pipeline.poll(time_budget_seconds=poll_time_budget_seconds)
                _log_report(context, report)
                run_requests = list(
                    _results_run_requests(
                        context, pipeline, results_key, partitions_def, rerun_results_after_seconds
                    )
                )
                skip_reason = (
                    None
                    if run_requests
                    else f"{_poll_summary(report)} "
                    + _waiting_message(
                        pipeline, report, context.instance, results_key, partitions_def
                    )
                )
                gc_at = previous.gc_at
                if not report.timed_out and time.time() - (gc_at or 0.0) >= gc_interval_seconds:
                    gc_at = _remove_intermediates(context, pipeline) or gc_at
        except LedgerUnavailableError as exc:  # an outage longer than a tick: wait it out
            context.log.warning(f"{exc}; the next tick tries again")
            return dg.SensorResult(skip_reason=f"{exc}; the next tick tries again")
        cursor = BatchPipelineSensorCursor(
            polled_at=readable_time(time.time(), seconds=True),
            in_flight=report.in_flight,
            queued=report.queued,
            timed_out=report.timed_out,
            results_requested=len(run_requests),
            gc_at=gc_at,
        )
        return dg.SensorResult(
            run_requests=run_requests,
            skip_reason=skip_reason,
            cursor=serialize_value(cursor),
        )

    return _sensor


def _ledger_wait_within_tick(spec: PipelineSpec) -> PipelineSpec:
    """The spec with its ledger's outage wait cut to what a tick can spend: a longer outage
    skips ticks until the database is back, rather than timing the tick out."""
    wait = min(spec.ledger.reconnect_seconds, TICK_RECONNECT_SECONDS)
    ledger = spec.ledger.model_copy(update={"reconnect_seconds": wait})
    return spec.model_copy(update={"ledger": ledger})


def results_run_key(pipeline: str, partition: str, generation: int, request: int) -> str:
    """Unique per day, generation and request: a rebuilt day is collected again, and a failed
    results run can be asked for again."""
    return f"{pipeline}:{partition}:g{generation}:results:{request}"


def _results_run_requests(
    context: dg.SensorEvaluationContext,
    pipeline: Pipeline,
    results_key: dg.AssetKey,
    partitions_def: dg.PartitionsDefinition | None,
    rerun_after_seconds: float,
) -> Iterator[dg.RunRequest]:
    """A results run for each day that needs one (`_days_needing_results`) that has none
    going, none that finished less than `rerun_after_seconds` ago, and fewer than
    `MAX_RESULTS_REQUESTS` so far.

    What was asked for is read from the runs themselves (by run key), not recorded here: an
    evaluation whose requests are never launched (the UI's "Test sensor", a tick that dies)
    leaves nothing behind, and the next tick asks again under the same key.
    """
    now = time.time()
    for record in _days_needing_results(context.instance, pipeline, results_key, partitions_def):
        if not has_partition(partitions_def, record.partition):
            if not record.is_collected:
                context.log.warning(
                    f"{record.partition} has settled but is not a partition of the assets; "
                    "collect it with the batch-pipeline CLI"
                )
            continue
        runs = _results_runs(context.instance, pipeline.spec.name, record)
        if len(runs) >= MAX_RESULTS_REQUESTS or any(
            run.dagster_run.status in _UNFINISHED_RUN_STATUSES for run in runs
        ):
            continue  # given up, or one still queued or running: a second would only run twice
        if runs and now - (runs[-1].end_time or now) < rerun_after_seconds:
            continue
        request = len(runs) + 1
        why = (
            "has results in the ledger that this Dagster instance has not materialized"
            if record.is_collected
            else "has settled"
        )
        context.log.info(
            f"{record.partition} generation {record.generation} {why}: "
            f"requesting its results run ({request})"
        )
        yield dg.RunRequest(
            run_key=results_run_key(
                pipeline.spec.name, record.partition, record.generation, request
            ),
            partition_key=run_partition_key(partitions_def, record.partition),
            asset_selection=[results_key],
            tags={"batch_pipeline/pipeline": pipeline.spec.name},
        )


def _days_needing_results(
    instance: dg.DagsterInstance,
    pipeline: Pipeline,
    results_key: dg.AssetKey,
    partitions_def: dg.PartitionsDefinition | None,
) -> list[PartitionRecord]:
    """Settled days whose results are not written yet, and days whose results are written
    (by another Dagster instance, or the command line) but were never materialized in this
    one: a new instance on a ledger of settled days shows their results too."""
    settled = [record for record in pipeline.partitions() if record.settled_at is not None]
    if any(record.is_collected for record in settled):
        materialized = materialized_partitions(instance, results_key, partitions_def)
        settled = [r for r in settled if not r.is_collected or r.partition not in materialized]
    return settled


def _results_runs(
    instance: dg.DagsterInstance, pipeline: str, record: PartitionRecord
) -> list[dg.RunRecord]:
    """The results runs launched for the day's generation, in the order they were asked for."""
    runs = []
    for request in range(1, MAX_RESULTS_REQUESTS + 1):
        key = results_run_key(pipeline, record.partition, record.generation, request)
        found = instance.get_run_records(filters=dg.RunsFilter(tags={RUN_KEY_TAG: key}), limit=1)
        if not found:
            break
        runs.append(found[0])
    return runs


def _waiting_message(
    pipeline: Pipeline,
    report: PollReport,
    instance: dg.DagsterInstance,
    results_key: dg.AssetKey,
    partitions_def: dg.PartitionsDefinition | None,
) -> str:
    """What the pipeline waits for, day by day, e.g. 'Waiting: 1 batch in flight for
    2026-11-20 (attempt 1 of 3, 40 of 41 requests done, expires 2026-11-21 01:00 UTC).'"""
    open_days = [record.partition for record in pipeline.partitions() if record.settled_at is None]
    awaiting, stuck = [], []
    for record in _days_needing_results(instance, pipeline, results_key, partitions_def):
        runs = _results_runs(instance, pipeline.spec.name, record)
        (stuck if len(runs) >= MAX_RESULTS_REQUESTS else awaiting).append(record.partition)
    max_attempts = pipeline.spec.retry.max_attempts
    parts = [
        _describe_day(pipeline.status(partition)[0], max_attempts)
        for partition in open_days[:MAX_PARTITIONS_IN_MESSAGE]
    ]
    if len(open_days) > MAX_PARTITIONS_IN_MESSAGE:
        parts.append(f"{len(open_days) - MAX_PARTITIONS_IN_MESSAGE} more days")
    if awaiting:
        parts.append(f"results runs requested for {_days(awaiting)}")
    if stuck:
        parts.append(
            f"a person to look at {', '.join(stuck[:MAX_PARTITIONS_IN_MESSAGE])}, whose "
            f"results runs failed {MAX_RESULTS_REQUESTS} times (see the last one's error; "
            "rebuild the day with a run tagged batch_pipeline/rebuild=true)"
        )
    if not parts:
        return f"Nothing to wait for: no day of {pipeline.spec.name} has batches in flight."
    message = "Waiting: " + "; ".join(parts) + "."
    if report.timed_out:
        message += " The poll stopped at its time budget; the next tick goes on."
    return message


def _days(days: list[str]) -> str:
    more = len(days) - MAX_PARTITIONS_IN_MESSAGE
    shown = ", ".join(days[:MAX_PARTITIONS_IN_MESSAGE])
    return shown + (f" and {more} more days" if more > 0 else "")


def _describe_day(status: PartitionStatus, max_attempts: int) -> str:
    in_flight = status.shards.get(ShardState.SUBMITTED, 0)
    queued = status.shards.get(ShardState.QUEUED, 0) + status.shards.get(ShardState.SUBMITTING, 0)
    parts = []
    if in_flight:
        parts.append(f"{_count(in_flight, 'batch', 'batches')} in flight")
    if queued:
        why = f" ({status.waiting[0]})" if status.waiting else ""
        parts.append(f"{_count(queued, 'shard', 'shards')} queued{why}")
    if built := status.shards.get(ShardState.BUILT, 0):
        parts.append(f"{_count(built, 'shard', 'shards')} built, not asked to be submitted")
    if not parts:
        parts.append(status.state)
    note = _batches_note(status.batches, max_attempts) if in_flight else ""
    return f"{' and '.join(parts)} for {status.partition}{note}"


def _batches_note(batches: list[dict[str, Any]], max_attempts: int) -> str:
    """' (attempt 1 of 3, 40 of 41 requests done, expires 2026-11-21 01:00 UTC)' for the
    day's unfinished batches: the latest attempt, their progress, the last window's end."""
    running = [b for b in batches if not BatchStatus(b["status"]).is_terminal]
    if not running:
        return ""
    notes = [f"attempt {max(b['attempt'] for b in running)} of {max_attempts}"]
    total = sum(b["total"] for b in running)
    if total:
        done = sum(b["completed"] + b["failed"] for b in running)
        notes.append(f"{done:,} of {total:,} requests done")
    expiries = [b["expires_at"] for b in running if b.get("expires_at")]
    if expiries:
        notes.append(f"expires {readable_time(max(expiries))}")
    return f" ({', '.join(notes)})"


def readable_time(timestamp: float, *, seconds: bool = False) -> str:
    """A Unix time as a person reads it on the sensor page: '2026-11-21 01:00 UTC'."""
    pattern = "%Y-%m-%d %H:%M:%S UTC" if seconds else "%Y-%m-%d %H:%M UTC"
    return time.strftime(pattern, time.gmtime(timestamp))


def _poll_summary(report: PollReport) -> str:
    """What this tick's poll did, e.g. 'Polled: 2 batches finished, 2 shards collected.'"""
    finished = sum(1 for _, status in report.changed if BatchStatus(status).is_terminal)
    counts = [
        (finished, "batch finished", "batches finished"),
        (report.collected_shards, "shard collected", "shards collected"),
        (report.retry_shards, "retry shard made", "retry shards made"),
        (len(report.submitted_batch_ids), "batch submitted", "batches submitted"),
        (len(report.errors), "poll error (in the tick's logs)", "poll errors (in the tick's logs)"),
    ]
    said = [_count(n, one, many) for n, one, many in counts if n]
    return f"Polled: {', '.join(said)}." if said else "Polled: no batch changed."


def _count(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


def _remove_intermediates(context: dg.SensorEvaluationContext, pipeline: Pipeline) -> float | None:
    """One bounded gc pass; when it went through every due day, the time it started. A
    storage that fails is logged: the tick goes on, and the next one tries again."""
    started = time.time()
    try:
        report = pipeline.gc(time_budget_seconds=GC_TIME_BUDGET_SECONDS)
    except OSError as exc:
        context.log.warning(f"gc: intermediates not removed: {exc}")
        return None
    for cleaned in report.partitions:
        context.log.info(
            f"gc: removed {len(cleaned.files)} intermediate files of {cleaned.partition} "
            f"({cleaned.bytes / 1e6:,.1f} MB)"
        )
    if report.timed_out:
        context.log.info("gc: stopped at its time budget; the next tick goes on")
        return None
    return started


def _log_report(context: dg.SensorEvaluationContext, report: PollReport) -> None:
    for batch_id, status in report.changed:
        context.log.info(f"batch {batch_id} is now {status}")
    # Poll errors are only logged, on this tick: neither the ledger nor the cursor keeps them.
    # The shards they hit stay as the ledger has them, so the next tick tries them again.
    for error in report.errors:
        context.log.warning(f"poll: {error}")
    context.log.info(
        f"poll: {report.collected_shards} shards collected, {report.retry_shards} retry shards, "
        f"{len(report.submitted_batch_ids)} batches submitted, {report.in_flight} in flight, "
        f"{report.queued} queued" + (" (time budget used up)" if report.timed_out else "")
    )


def _read_cursor(context: dg.SensorEvaluationContext) -> BatchPipelineSensorCursor:
    if not context.cursor:
        return BatchPipelineSensorCursor()
    try:
        return deserialize_value(context.cursor, BatchPipelineSensorCursor)
    except Exception as exc:  # an old or foreign cursor: start afresh, the ledger has the truth
        context.log.warning(f"ignoring an unreadable sensor cursor: {exc}")
        return BatchPipelineSensorCursor()
