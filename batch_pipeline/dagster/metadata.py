"""The materialization metadata of the three assets, built from the core's summaries.

Keys of our own start with `batch_pipeline/`; Dagster's standard keys (`dagster/row_count`,
`dagster/column_schema`, `dagster/uri`) are written by name, so no private import is needed.
Everything here is plain data from the core: no config, so never a secret.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import dagster as dg

from batch_pipeline.core.pipeline import RequestsSummary, ResultsSummary, SubmitSummary
from batch_pipeline.core.types import RowStatus

PREFIX = "batch_pipeline/"
ROW_COUNT = "dagster/row_count"
COLUMN_SCHEMA = "dagster/column_schema"
URI = "dagster/uri"
PREVIEW_CELL_CHARS = 60


def requests_metadata(summary: RequestsSummary) -> dict[str, Any]:
    """Rows, rejections, shards, bytes, token and cost estimates of a built partition."""
    return _without_none(
        {
            ROW_COUNT: summary.requests,
            PREFIX + "generation": summary.generation,
            PREFIX + "source_rows": summary.source_rows,
            PREFIX + "requests": summary.requests,
            PREFIX + "rejected_rows": summary.rejected,
            PREFIX + "rows_without_day": summary.rows_without_day,
            PREFIX + "shards": summary.shards,
            PREFIX + "bytes": summary.bytes,
            PREFIX + "estimated_input_tokens": summary.estimated_input_tokens,
            PREFIX + "estimated_cost_live_usd": _usd(summary.estimated_cost_live_usd),
            PREFIX + "estimated_cost_batch_usd": _usd(summary.estimated_cost_batch_usd),
            PREFIX + "manifest": dg.MetadataValue.path(summary.manifest_path),
            PREFIX + "reused_existing_build": summary.already_built,
            PREFIX + "spec_changed": summary.spec_changed,
        }
    )


def batches_metadata(summary: SubmitSummary) -> dict[str, Any]:
    """The batches a submission created, those already in flight, and what still waits."""
    return {
        PREFIX + "submitted_batch_ids": dg.MetadataValue.json(list(summary.submitted_batch_ids)),
        PREFIX + "in_flight_batch_ids": dg.MetadataValue.json(list(summary.in_flight_batch_ids)),
        PREFIX + "submitted_batches": len(summary.submitted_batch_ids),
        PREFIX + "waiting_shards": summary.waiting_shards,
        PREFIX + "refused_shards": len(summary.refused_reasons),
    }


def results_metadata(summary: ResultsSummary) -> dict[str, Any]:
    """Counts per status, tokens, cost and saving, the Parquet file, its schema, a preview."""
    counts = {status.value: summary.counts.get(status.value, 0) for status in RowStatus}
    return _without_none(
        {
            ROW_COUNT: summary.rows,
            URI: summary.path,
            COLUMN_SCHEMA: dg.MetadataValue.table_schema(column_schema(summary.columns)),
            PREFIX + "path": dg.MetadataValue.path(summary.path),
            PREFIX + "generation": summary.generation,
            **{PREFIX + f"rows_{status}": count for status, count in counts.items()},
            PREFIX + "input_tokens": summary.input_tokens,
            PREFIX + "output_tokens": summary.output_tokens,
            PREFIX + "cost_batch_usd": _usd(summary.cost_batch_usd),
            PREFIX + "cost_live_usd": _usd(summary.cost_live_usd),
            PREFIX + "saved_usd": _usd(summary.saved_usd),
            PREFIX + "preview": dg.MetadataValue.md(markdown_table(summary.preview)),
            PREFIX + "spec_changed": summary.spec_changed,
        }
    )


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


def _cell(value: Any) -> str:
    text = "" if value is None else str(value)
    text = text.replace("\n", " ").replace("|", "\\|")
    if len(text) > PREVIEW_CELL_CHARS:
        text = text[: PREVIEW_CELL_CHARS - 1] + "…"
    return text


def _usd(value: float | None) -> float | None:
    return None if value is None else round(value, 6)


def _without_none(metadata: dict[str, Any]) -> dict[str, Any]:
    """Unknown values (no price for the model, say) are left out rather than shown as 0."""
    return {key: value for key, value in metadata.items() if value is not None}
