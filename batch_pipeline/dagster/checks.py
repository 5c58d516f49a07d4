"""Asset checks on `results`, read back from the Parquet file the results run wrote.

Arrow and the ledger load in the check that reads the results, not with the definitions.
"""

from typing import TYPE_CHECKING

import dagster as dg

from batch_pipeline.core.spec import PipelineSpec
from batch_pipeline.core.types import RowStatus
from batch_pipeline.dagster.assets import DEFAULT_BACKEND_RESOURCE_KEY, build_asset_specs
from batch_pipeline.dagster.metadata import failures_table
from batch_pipeline.dagster.partitions import build_partitions_def, partition_key_of
from batch_pipeline.dagster.resources import BatchBackendResource
from batch_pipeline.dagster.translator import BatchPipelineTranslator

if TYPE_CHECKING:
    import pyarrow as pa

    from batch_pipeline.core.ledger import PartitionRecord

ROWS_ONCE_CHECK = "every_source_row_once"
FAILED_SHARE_CHECK = "failed_share_within_limit"
SAMPLE_SIZE = 5


def build_results_checks(
    *,
    spec: PipelineSpec,
    translator: BatchPipelineTranslator | None = None,
    backend_resource_key: str = DEFAULT_BACKEND_RESOURCE_KEY,
) -> list[dg.AssetChecksDefinition]:
    """Two checks on the day's results: every source row exactly once (blocking, error), and
    the share of rows without an answer at most `checks.max_failed_share` (warning), which
    says what the failures were (rows per status and error code, with a sample message).

    They read the day's ledger record through the `BatchBackendResource` under
    `backend_resource_key`, on the step's ledger connection. They are partitioned like the
    asset, so the UI shows each day's outcome; Dagster 1.13 calls partitioned checks a
    preview and warns so once when they are defined (filter `dg.PreviewWarning` to hide it).
    """
    results_key = build_asset_specs(spec, translator)["results"].key
    partitions_def = build_partitions_def(spec)

    @dg.asset_check(
        asset=results_key,
        name=ROWS_ONCE_CHECK,
        blocking=True,
        partitions_def=partitions_def,
        required_resource_keys={backend_resource_key},
        description="The results hold every source row of the day exactly once: as many rows "
        "as the source had, and every row sent to the Batch API under its own custom_id "
        "(a rejected duplicate key shares the id of the row it repeats).",
    )
    def every_source_row_once(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
        import pyarrow.compute as pc

        record, table = _written_results(context, spec, backend_resource_key, ["custom_id"])
        sent = table.filter(pc.not_equal(table.column("status"), RowStatus.REJECTED.value))
        ids = sent.column("custom_id")
        repeated = [key for key, n in _value_counts(ids).items() if n > 1 and key is not None]
        passed = table.num_rows == record.source_rows and not repeated and not ids.null_count
        return dg.AssetCheckResult(
            passed=passed,
            severity=dg.AssetCheckSeverity.ERROR,
            description=f"{table.num_rows:,} result rows for {record.source_rows:,} source rows"
            + (
                ""
                if passed
                else f"; {len(repeated)} custom_ids answered more than once, "
                f"{ids.null_count} without id"
            ),
            metadata={
                "source_rows": record.source_rows,
                "result_rows": table.num_rows,
                # what went wrong, only when something did: zeros and empty lists say nothing
                **({"repeated_custom_ids": len(repeated)} if repeated else {}),
                **(
                    {"repeated_sample": dg.MetadataValue.json(repeated[:SAMPLE_SIZE])}
                    if repeated
                    else {}
                ),
                **({"rows_without_custom_id": ids.null_count} if ids.null_count else {}),
            },
        )

    limit = spec.checks.max_failed_share

    @dg.asset_check(
        asset=results_key,
        name=FAILED_SHARE_CHECK,
        partitions_def=partitions_def,
        required_resource_keys={backend_resource_key},
        description=f"At most {limit:.1%} of the day's rows end without an answer "
        "(failed, expired, cancelled or rejected).",
    )
    def failed_share_within_limit(
        context: dg.AssetCheckExecutionContext,
    ) -> dg.AssetCheckResult:
        from batch_pipeline.core.failures import failure_groups

        _, table = _written_results(
            context, spec, backend_resource_key, ["error_code", "error_message"]
        )
        groups = failure_groups(table)
        unanswered = sum(group["rows"] for group in groups)
        share = unanswered / table.num_rows if table.num_rows else 0.0
        passed = share <= limit
        return dg.AssetCheckResult(
            passed=passed,
            severity=dg.AssetCheckSeverity.WARN,
            description=f"{unanswered:,} of {table.num_rows:,} rows without an answer "
            f"({share:.1%}), {'within' if passed else 'above'} the limit of {limit:.1%}",
            metadata={
                "failed_share": dg.MetadataValue.float(round(share, 6)),
                "unanswered_rows": unanswered,
                **({"failures": failures_table(groups)} if groups else {}),
            },
        )

    return [every_source_row_once, failed_share_within_limit]


def _written_results(
    context: dg.AssetCheckExecutionContext,
    spec: PipelineSpec,
    backend_resource_key: str,
    columns: list[str],
) -> tuple["PartitionRecord", "pa.Table"]:
    """The day's ledger record, read on the step's backend resource, and its results table
    (status and `columns` only)."""
    from batch_pipeline.core.layout import results_path
    from batch_pipeline.core.parquet_files import read_parquet

    partition = partition_key_of(context)
    backend: BatchBackendResource = getattr(context.resources, backend_resource_key)
    with backend.open_pipeline(spec) as pipeline:
        record = pipeline.get_partition(partition)
        if record is None or record.results_path is None:
            raise dg.Failure(f"{spec.name} {partition}: no results have been written for this day")
        return record, read_parquet(pipeline.storage, results_path(partition), ["status", *columns])


def _value_counts(column: "pa.ChunkedArray") -> dict[object, int]:
    import pyarrow.compute as pc

    counts = pc.value_counts(column)
    return dict(
        zip(counts.field("values").to_pylist(), counts.field("counts").to_pylist(), strict=True)
    )
