"""The materialization metadata of the three assets, built from the core's summaries.

Labels are short and plain, as dagster-dbt's and dagster-sling's materializations are
(`row_count`, `elapsed_time`): a unit in the name (`cost_usd`), numbers kept numbers so that
Dagster plots them, sizes written for a person. A value that would say nothing (a zero that
is always zero, an empty list, the first generation) is left out rather than plotted flat.
The results carry the partition's cost and saving and, as `total_*`, those of every partition
written up to it (by key; see `core.report`, which `batch-pipeline report` prints from).
Dagster's standard keys (`dagster/row_count`, `dagster/column_schema`) are written by name, so
no private import is needed. Everything here is plain data from the core: never a secret.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import dagster as dg

from batch_pipeline.core.report import Spend, SpendReport
from batch_pipeline.core.types import RequestsSummary, ResultsSummary, SubmitSummary

ROW_COUNT = "dagster/row_count"
COLUMN_SCHEMA = "dagster/column_schema"
PREVIEW_CELL_CHARS = 60
_SIZE_UNITS = ("bytes", "KB", "MB", "GB", "TB")


def requests_metadata(summary: RequestsSummary) -> dict[str, Any]:
    """Rows, rejections, shards, size, token and cost estimates of a built partition."""
    return _without_none(
        {
            ROW_COUNT: summary.requests,
            "source_rows": summary.source_rows,
            "rejected_rows": summary.rejected,
            "rows_without_day": summary.rows_without_day or None,
            "shards": summary.shards,
            "size": readable_size(summary.bytes),
            "estimated_input_tokens": summary.estimated_input_tokens,
            **_costs(
                Spend(
                    cost_batch_usd=summary.estimated_cost_batch_usd,
                    cost_live_usd=summary.estimated_cost_live_usd,
                ),
                prefix="estimated_",
            ),
            "manifest": dg.MetadataValue.path(summary.manifest_path),
            "reused_build": True if summary.already_built else None,
            **_generation(summary.generation),
            "spec_changed": summary.spec_changed,
        }
    )


def batches_metadata(summary: SubmitSummary) -> dict[str, Any]:
    """The batches a submission created, those already in flight, and what still waits."""
    return _without_none(
        {
            "submitted_batches": len(summary.submitted_batch_ids),
            "batch_ids": _json_list(summary.submitted_batch_ids),
            "in_flight_batch_ids": _json_list(summary.in_flight_batch_ids),
            "waiting_shards": summary.waiting_shards or None,
            "refused_shards": len(summary.refused_reasons) or None,
        }
    )


def results_metadata(summary: ResultsSummary, totals: SpendReport | None = None) -> dict[str, Any]:
    """Rows per status, what the failures were, tokens, cost and saving, the Parquet file, its
    schema, a preview with the rows that have no answer first, and the `totals` if given."""
    spend = Spend.of(summary)
    return _without_none(
        {
            ROW_COUNT: spend.rows,
            **spend.counts,
            "failures": failures_table(summary.failures),
            **_tokens_and_costs(spend),
            "path": dg.MetadataValue.path(summary.path),
            COLUMN_SCHEMA: dg.MetadataValue.table_schema(column_schema(summary.columns)),
            "preview": dg.MetadataValue.md(markdown_table(summary.preview)),
            **_generation(summary.generation),
            "spec_changed": summary.spec_changed,
            **(totals_metadata(totals) if totals is not None else {}),
        }
    )


def failures_table(groups: Sequence[Mapping[str, Any]]) -> dg.MetadataValue | None:
    """Rows without an answer per status and error code, with one sample message each (the
    core's failure groups); None when every row has an answer."""
    if not groups:
        return None
    schema = dg.TableSchema(
        columns=[
            dg.TableColumn("status", "string"),
            dg.TableColumn("error_code", "string"),
            dg.TableColumn("rows", "int"),
            dg.TableColumn("sample_message", "string"),
        ]
    )
    records = [
        dg.TableRecord(
            {
                "status": group["status"],
                "error_code": group["error_code"] or "",
                "rows": group["rows"],
                "sample_message": group["sample_message"] or "",
            }
        )
        for group in groups
    ]
    return dg.MetadataValue.table(records=records, schema=schema)


def readable_size(size: int) -> str:
    """`41438` -> `40.5 KB` (powers of 1024, as file browsers show them)."""
    if size < 1024:
        return f"{size:,} bytes"
    value = size / 1024
    for unit in _SIZE_UNITS[1:-1]:
        if value < 1024:
            return f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:,.1f} {_SIZE_UNITS[-1]}"


def column_schema(columns: Sequence[tuple[str, str]]) -> dg.TableSchema:
    """A Dagster table schema from (name, Arrow type) pairs."""
    return dg.TableSchema(columns=[dg.TableColumn(name, type_) for name, type_ in columns])


def markdown_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """A small Markdown table of `rows`, long cells shortened; empty when there are none."""
    if not rows:
        return "_no rows_"
    header = list(rows[0].keys())
    lines = [
        "| " + " | ".join(header) + " |",
        "| " + " | ".join("---" for _ in header) + " |",
    ]
    lines += ["| " + " | ".join(_cell(row.get(name)) for name in header) + " |" for row in rows]
    return "\n".join(lines)


def _costs(spend: Spend, *, prefix: str = "") -> dict[str, Any]:
    """The batch cost, what the same calls cost live, and the saving in USD and percent
    (floats, so Dagster plots them); nothing for a model without a known price."""
    if spend.cost_batch_usd is None or spend.cost_live_usd is None:
        return {}
    return {
        f"{prefix}cost_usd": dg.MetadataValue.float(round(spend.cost_batch_usd, 6)),
        f"{prefix}live_cost_usd": dg.MetadataValue.float(round(spend.cost_live_usd, 6)),
        f"{prefix}saved_usd": dg.MetadataValue.float(round(spend.saved_usd or 0.0, 6)),
        f"{prefix}saved_percent": dg.MetadataValue.float(round(spend.saved_percent or 0.0, 1)),
    }


def _tokens_and_costs(spend: Spend, *, prefix: str = "") -> dict[str, Any]:
    return {
        f"{prefix}input_tokens": spend.input_tokens,
        f"{prefix}output_tokens": spend.output_tokens,
        **_costs(spend, prefix=prefix),
    }


def totals_metadata(report: SpendReport) -> dict[str, Any]:
    """The `total_` figures of every partition of the report (those written up to this one):
    partitions, rows, tokens, cost, live cost and saving, as numbers Dagster plots."""
    total = report.total
    return {
        "total_partitions": len(report.partitions),
        "total_rows": total.rows,
        **_tokens_and_costs(total, prefix="total_"),
    }


def _generation(generation: int) -> dict[str, int]:
    """The generation, once a day was rebuilt (the first one says nothing)."""
    return {"generation": generation} if generation > 1 else {}


def _json_list(values: Sequence[str]) -> dg.MetadataValue | None:
    return dg.MetadataValue.json(list(values)) if values else None


def _cell(value: Any) -> str:
    text = "" if value is None else str(value)
    text = text.replace("\n", " ").replace("|", "\\|")
    if len(text) > PREVIEW_CELL_CHARS:
        text = text[: PREVIEW_CELL_CHARS - 1] + "…"
    return text


def _without_none(metadata: dict[str, Any]) -> dict[str, Any]:
    """Unknown or empty values (no price for the model, say) are left out, not shown as 0."""
    return {key: value for key, value in metadata.items() if value is not None}
