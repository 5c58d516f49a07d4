"""A pipeline's place in the asset graph upstream of it: the assets its rows come from.

`source.asset_key` names them: each is an input of the `requests` step, so Dagster shows the
source upstream, and refuses, when it loads the code location, a key naming no asset there.
Without `source.path` or `source.sql`, the one named asset's partition is loaded through that
asset's own IO manager and read as the pipeline's rows (the `results` step, which joins every
source row with its answer, loads it too); otherwise the inputs load nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import dagster as dg

from batch_pipeline.core.spec import PipelineSpec

if TYPE_CHECKING:  # the sources load in the step that reads the rows
    from batch_pipeline.core.sources import Table

ROWS_INPUT = "source_rows"  # the input of the asset the rows come from
LINEAGE_ONLY_KEY = "batch_pipeline_lineage_only"  # the input manager of the other source assets


def upstream_keys(spec: PipelineSpec) -> list[dg.AssetKey]:
    """The asset keys `source.asset_key` names, in order."""
    return [dg.AssetKey.from_user_string(key) for key in spec.source.asset_key]


def upstream_partition_mapping(
    partitions_def: dg.PartitionsDefinition | None,
) -> dg.PartitionMapping | None:
    """How a partition of a pipeline partitioned by `partitions_def` maps to the partitions
    of its source asset: a time-window pipeline reads the source partitions its window
    overlaps (a daily source to a daily pipeline: the same day), whatever the source's own
    time window; an unpartitioned source, or an unpartitioned pipeline, reads every row
    (Dagster's default for them, None here)."""
    if isinstance(partitions_def, dg.TimeWindowPartitionsDefinition):
        return dg.TimeWindowPartitionMapping()
    return None


def with_upstream_deps(
    asset_spec: dg.AssetSpec,
    spec: PipelineSpec,
    partitions_def: dg.PartitionsDefinition | None,
    *,
    rows_only: bool = False,
) -> dg.AssetSpec:
    """`asset_spec` depending on the source assets (only the one the rows are loaded from,
    with `rows_only`), each through `upstream_partition_mapping(partitions_def)`."""
    keys = upstream_keys(spec)
    if rows_only:
        keys = [key for key in keys if key.to_user_string() == spec.source.from_asset]
    mapping = upstream_partition_mapping(partitions_def)
    kept = [dep for dep in asset_spec.deps if dep.asset_key not in keys]
    added = [dg.AssetDep(key, partition_mapping=mapping) for key in keys]
    return asset_spec.replace_attributes(deps=[*kept, *added])


def source_ins(spec: PipelineSpec, *, rows_only: bool = False) -> dict[str, dg.AssetIn]:
    """An input for each source asset: the one the rows come from under `ROWS_INPUT`,
    loaded through its own IO manager; the others (left out with `rows_only`) through
    `lineage_only`, which loads nothing. An input, not only a dependency, so Dagster refuses
    a key naming no asset of the code location. Their partition mappings are the
    dependencies' (see `with_upstream_deps`)."""
    ins: dict[str, dg.AssetIn] = {}
    for index, key in enumerate(upstream_keys(spec)):
        if key.to_user_string() == spec.source.from_asset:
            ins[ROWS_INPUT] = dg.AssetIn(key)
        elif not rows_only:
            ins[f"lineage_{index}"] = dg.AssetIn(key, input_manager_key=LINEAGE_ONLY_KEY)
    return ins


@dg.input_manager(description="Loads nothing: the source asset is named for lineage only.")
def lineage_only(_: dg.InputContext) -> None:
    return None


def lineage_resources(ins: dict[str, dg.AssetIn]) -> dict[str, dg.ResourceDefinition]:
    """`lineage_only` under its key, where one of `ins` loads through it (one definition,
    shared by every pipeline of a code location)."""
    if any(asset_in.input_manager_key == LINEAGE_ONLY_KEY for asset_in in ins.values()):
        return {LINEAGE_ONLY_KEY: lineage_only}
    return {}


def source_rows(spec: PipelineSpec, value: object) -> Table:
    """The rows an upstream asset's IO manager loaded, as a table the core reads; a
    SourceError naming the asset when it is not a table."""
    from batch_pipeline.core.sources import as_table

    return as_table(
        value, what=f"source.asset_key {spec.source.from_asset}: what its IO manager loaded"
    )


def automation_condition(spec: PipelineSpec, role: str) -> dg.AutomationCondition | None:
    """The condition that materializes `requests` and `batches` when the source asset
    updates (`source.automation`): eager, or at the schedule's cron once it has."""
    if spec.source.automation is None or role not in ("requests", "batches"):
        return None
    if spec.source.automation == "eager":
        return dg.AutomationCondition.eager()
    return dg.AutomationCondition.on_cron(spec.schedule.cron, spec.schedule.timezone)
