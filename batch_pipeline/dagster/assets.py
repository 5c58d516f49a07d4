"""`build_batch_pipeline_assets`: the three partitioned assets of one pipeline (daily by
default; weekly, monthly, or unpartitioned with `partitions: none`).

- `requests` builds and validates the day's JSONL shards (nothing is paid for);
- `batches` submits them and returns at once (the sensor watches the batches);
- `results` writes the day's Parquet once every batch has settled (the sensor asks for it).

Materializing `requests` again for a day reuses its current build, whatever state it is in,
so a retried or repeated run (a re-executed backfill, a manual run over the nightly one) never
pays twice for the same rows. A run tagged `batch_pipeline/rebuild=true` builds a settled day
afresh from its source rows as they are now, as a new generation whose batches are submitted
and whose results are collected again (the sensor's run keys carry the generation); a day
still in flight is refused then: cancel it first (`batch-pipeline cancel`).
"""

import json
from collections.abc import Callable, Iterator, Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import dagster as dg

from batch_pipeline.core.partition import Partition
from batch_pipeline.core.report import spend_report
from batch_pipeline.core.spec import PipelineSpec
from batch_pipeline.dagster.metadata import batches_metadata, requests_metadata, results_metadata
from batch_pipeline.dagster.partitions import build_partitions_def, partition_key_of
from batch_pipeline.dagster.resources import BatchBackendResource
from batch_pipeline.dagster.results_io import results_io_manager, results_io_manager_key
from batch_pipeline.dagster.translator import ROLES, BatchPipelineTranslator
from batch_pipeline.dagster.upstream import (
    ROWS_INPUT,
    automation_condition,
    lineage_resources,
    source_ins,
    source_rows,
    with_upstream_deps,
)

if TYPE_CHECKING:  # the pipeline loads in the step that uses it
    from batch_pipeline.core.pipeline import Pipeline

DEFAULT_BACKEND_RESOURCE_KEY = "batch_backend"


def backend_resource_key_for(spec: PipelineSpec) -> str:
    """The backend's resource key in a pipeline's own Definitions: named after the pipeline,
    so that the Definitions of pipelines on different providers merge into one location."""
    return f"{spec.name}_{DEFAULT_BACKEND_RESOURCE_KEY}"


SUBMISSION_POOL = "batch_pipeline_submission"
REBUILD_TAG = "batch_pipeline/rebuild"  # "true" on a run: build settled days afresh

# A step's materialization, or None when it has nothing to materialize yet (results only).
Step = Callable[["Pipeline", Partition, dg.AssetExecutionContext], dg.MaterializeResult | None]


def build_asset_specs(
    spec: PipelineSpec, translator: BatchPipelineTranslator | None = None
) -> dict[str, dg.AssetSpec]:
    """The asset spec of each role, from the translator (the base one by default)."""
    translator = translator or BatchPipelineTranslator()
    return {role: translator.get_asset_spec(spec, role) for role in ROLES}


def build_batch_pipeline_assets(
    *,
    spec: PipelineSpec,
    translator: BatchPipelineTranslator | None = None,
    backend_resource_key: str = DEFAULT_BACKEND_RESOURCE_KEY,
    op_tags: Mapping[str, Any] | None = None,
    retry_policy: dg.RetryPolicy | None = None,
    submission_pool: str | None = SUBMISSION_POOL,
    backfill_policy: dg.BackfillPolicy | None = None,
) -> list[dg.AssetsDefinition]:
    """The `requests`, `batches` and `results` assets of the pipeline `spec`.

    They need a `BatchBackendResource` under `backend_resource_key`. The `batches` step runs
    in the concurrency pool `submission_pool`, which bounds uploads across every run, however
    launched (set its limit in dagster.yaml or with `dagster instance concurrency set`).
    With a `backfill_policy`, one run may cover a range of days (a backfill, `dg launch
    --partition-range`): each step then works through the days of the range in turn.
    """
    partitions_def = build_partitions_def(spec)
    specs = build_asset_specs(spec, translator)
    steps: dict[str, Step] = {
        "requests": _build_requests,
        "batches": _submit_batches,
        "results": _collect_results,
    }
    # A run that selects results with the other steps (the UI's "Materialize all") reaches
    # it before the day has settled: it is skipped then, and the sensor asks for it later.
    specs["results"] = (
        specs["results"]
        .replace_attributes(skippable=True)
        .with_io_manager_key(results_io_manager_key(spec))
    )
    for role in ("requests", "batches"):
        condition = automation_condition(spec, role)
        if condition is not None:
            specs[role] = specs[role].replace_attributes(automation_condition=condition)
    specs["requests"] = with_upstream_deps(specs["requests"], spec, partitions_def)
    specs["results"] = with_upstream_deps(specs["results"], spec, partitions_def, rows_only=True)
    ins = {"requests": source_ins(spec), "batches": {}, "results": source_ins(spec, rows_only=True)}
    resource_defs = {
        "requests": lineage_resources(ins["requests"]),
        "batches": {},
        "results": results_io_manager(spec),
    }
    return [
        _pipeline_asset(
            spec,
            specs[role],
            steps[role],
            name=f"{spec.name}_{role}",
            ins=ins[role],
            partitions_def=partitions_def,
            backend_resource_key=backend_resource_key,
            op_tags=op_tags,
            retry_policy=retry_policy,
            pool=submission_pool if role == "batches" else None,
            backfill_policy=backfill_policy,
            resource_defs=resource_defs[role],
        )
        for role in ROLES
    ]


def _pipeline_asset(
    spec: PipelineSpec,
    asset_spec: dg.AssetSpec,
    step: Step,
    *,
    name: str,
    ins: Mapping[str, dg.AssetIn],
    partitions_def: dg.PartitionsDefinition | None,
    backend_resource_key: str,
    op_tags: Mapping[str, Any] | None,
    retry_policy: dg.RetryPolicy | None,
    pool: str | None,
    backfill_policy: dg.BackfillPolicy | None,
    resource_defs: Mapping[str, dg.ResourceDefinition],
) -> dg.AssetsDefinition:
    @dg.multi_asset(
        specs=[asset_spec],
        name=name,
        ins=dict(ins),
        partitions_def=partitions_def,
        required_resource_keys={backend_resource_key},
        op_tags=op_tags,
        retry_policy=retry_policy,
        pool=pool,
        backfill_policy=backfill_policy,
        resource_defs=dict(resource_defs),
    )
    def _asset(context: dg.AssetExecutionContext, **inputs: Any) -> Iterator[dg.MaterializeResult]:
        backend: BatchBackendResource = getattr(context.resources, backend_resource_key)
        rows = source_rows(spec, inputs[ROWS_INPUT]) if ROWS_INPUT in inputs else None
        with backend.open_pipeline(spec, dataframe=rows) as pipeline:
            if context.has_partition_key_range and not context.has_partition_key:
                result = _step_over_range(step, pipeline, context)
            else:
                partition = spec.partitioning.parse(partition_key_of(context))
                result = step(pipeline, partition, context)
        if result is not None:
            yield result

    return _asset


def _step_over_range(
    step: Step, pipeline: "Pipeline", context: dg.AssetExecutionContext
) -> dg.MaterializeResult | None:
    """`step` for each day of a ranged run, in order. The run materializes the whole range,
    so its metadata holds each day's; a day whose results cannot be collected yet skips
    the results of the range (the sensor asks for each day's once it has settled)."""
    days: dict[str, dict[str, Any]] = {}
    for key in context.partition_keys:
        result = step(pipeline, pipeline.spec.partitioning.parse(key), context)
        if result is None:
            return None
        days[key] = {name: _plain(value) for name, value in (result.metadata or {}).items()}
    return dg.MaterializeResult(
        metadata={
            "days": len(days),
            "batch_pipeline/days": dg.MetadataValue.json(days),
        }
    )


def _plain(value: Any) -> Any:
    """A metadata value as JSON: its value when it is a MetadataValue, text when not JSON."""
    value = getattr(value, "value", value)
    try:
        return json.loads(json.dumps(value))
    except (TypeError, ValueError):
        return str(value)


def _build_requests(
    pipeline: "Pipeline", partition: Partition, context: dg.AssetExecutionContext
) -> dg.MaterializeResult:
    rebuild = context.run.tags.get(REBUILD_TAG, "").lower() == "true"
    record = pipeline.get_partition(partition)
    # A generation whose build never finished (its run died) is built by this run, tag or not.
    built = record is not None and record.built_at is not None
    summary = pipeline.build_requests(partition, rebuild=rebuild and built)
    context.log.info(
        f"{partition} generation {summary.generation}: {summary.requests} requests in "
        f"{summary.shards} shards, {summary.rejected} rows rejected"
        + (_reuse_note(pipeline, partition) if summary.already_built else "")
    )
    for note in summary.notes:
        context.log.warning(note)
    _warn_of_spec_change(summary.spec_changed, context)
    return dg.MaterializeResult(metadata=requests_metadata(summary))


def _reuse_note(pipeline: "Pipeline", partition: Partition) -> str:
    """How a reused build stands: still in progress, or settled (a rebuild starts afresh)."""
    record = pipeline.get_partition(partition)
    if record is not None and record.settled_at is not None:
        return f" (reused its settled build; a run tagged {REBUILD_TAG}=true builds it afresh)"
    return " (reused the build in progress)"


def _warn_of_spec_change(note: str | None, context: dg.AssetExecutionContext) -> None:
    if note:
        context.log.warning(note)


def _submit_batches(
    pipeline: "Pipeline", partition: Partition, context: dg.AssetExecutionContext
) -> dg.MaterializeResult:
    summary = pipeline.submit(partition)
    context.log.info(
        f"{partition}: {len(summary.submitted_batch_ids)} batches submitted, "
        f"{len(summary.in_flight_batch_ids)} in flight, {summary.waiting_shards} shards waiting"
    )
    for reason in summary.waiting_reasons:
        context.log.info(f"waiting: {reason}")
    for reason in summary.refused_reasons:
        context.log.warning(f"refused, its rows settled as failed: {reason}")
    return dg.MaterializeResult(metadata=batches_metadata(summary))


def _collect_results(
    pipeline: "Pipeline", partition: Partition, context: dg.AssetExecutionContext
) -> dg.MaterializeResult | None:
    record = pipeline.get_partition(partition)
    if record is not None and record.is_in_flight:
        context.log.info(
            f"{partition}: its batches have not been submitted (materialize its batches "
            "first); results skipped for now"
            if pipeline.awaits_submission(partition)
            else f"{partition}: its batches have not all finished; results skipped for now "
            "(the sensor asks for them once the day has settled)"
        )
        return None
    summary = pipeline.collect_results(partition)
    summary = replace(summary, spec_changed=pipeline.spec_change(partition))
    context.log.info(f"{partition}: {summary.rows} rows written to {summary.path}")
    _warn_of_spec_change(summary.spec_changed, context)
    # The totals of the partitions written up to this one, so they grow along the keys.
    totals = spend_report(pipeline.ledger, pipeline.spec.name, through=summary.partition)
    return dg.MaterializeResult(metadata=results_metadata(summary, totals))
