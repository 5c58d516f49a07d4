"""`batch-pipeline report`: what a pipeline's batches cost and saved, per partition and in
total, as a table, CSV or JSON, and optionally a picture of the daily spend (`spend_plot`).

It reads the ledger only (see `core.report`): no source, no provider, nothing written but the
picture asked for.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from batch_pipeline.core.report import Spend, SpendReport, parse_day, spend_report, usd
from batch_pipeline.core.types import RowStatus

if TYPE_CHECKING:
    from batch_pipeline.core.spec import PipelineSpec

FORMATS = ("table", "csv", "json")


def add_report_arguments(parser: argparse.ArgumentParser) -> None:
    """The `report` command's options."""
    parser.add_argument("spec", help="Path of the pipeline's YAML spec.")
    day = "YYYY-MM-DD"
    parser.add_argument("--from", dest="start", metavar=day, help="First day to include.")
    parser.add_argument("--to", dest="end", metavar=day, help="Last day to include.")
    parser.add_argument(
        "--format",
        default="table",
        metavar="table|csv|json",
        help="What to print on stdout (default: an aligned table).",
    )
    parser.add_argument(
        "--plot",
        type=Path,
        metavar="FILE",
        help="Also write a picture of the daily spend and saving: .html or .svg (self-"
        "contained, no extra needed) or .png (needs the [report] extra, matplotlib).",
    )


def report_command(spec: PipelineSpec, args: argparse.Namespace, out: TextIO) -> int:
    """Print the report of `spec`'s pipeline in `args.format`; write `args.plot` if given.
    A bad option is a ValueError (one line), raised before the ledger is opened."""
    render = _RENDERERS.get(args.format)
    if render is None:
        raise ValueError(f"unknown format {args.format!r}: choose table, csv or json")
    start = None if args.start is None else parse_day(args.start, "--from")
    end = None if args.end is None else parse_day(args.end, "--to")
    if start is not None and end is not None and start > end:
        raise ValueError(f"--from {start} is after --to {end}")
    if args.plot is not None:
        from batch_pipeline.spend_plot import check_plot_path

        check_plot_path(args.plot)
    report = read_report(spec, start, end)
    out.write(render(report))
    if args.plot is not None:
        from batch_pipeline.spend_plot import write_plot

        write_plot(report, args.plot)
        print(f"wrote {args.plot}", file=sys.stderr)
    return 0


def read_report(spec: PipelineSpec, start: date | None, end: date | None) -> SpendReport:
    """The report from the pipeline's ledger (an empty one if its SQLite file does not exist
    yet: nothing is created to read it)."""
    from batch_pipeline.core.database_url import database_url, sqlite_file
    from batch_pipeline.core.ledger import Ledger

    database = sqlite_file(database_url(spec.ledger_url))
    if database is not None and not database.exists():
        return SpendReport(spec.name, [], [], start, end)
    ledger = Ledger(spec.ledger_url, reconnect_seconds=spec.ledger.reconnect_seconds)
    try:
        return spend_report(ledger, spec.name, start=start, end=end)
    finally:
        ledger.close()


def render_table(report: SpendReport) -> str:
    """An aligned table, a row per partition and one of totals, and what was left out."""
    statuses = _shown_statuses(report.total)
    header = ["partition", "rows", *statuses, "input tokens", "output tokens"]
    header += ["batch cost", "live cost", "saved"]
    rows = [_table_row(p.partition, p.spend, statuses) for p in report.partitions]
    lines = [_title(report)]
    if rows:
        body = [header, *rows, _table_row("total", report.total, statuses)]
        widths = [max(len(row[i]) for row in body) for i in range(len(header))]
        for index, row in enumerate(body):
            if index == len(body) - 1:
                lines.append("  ".join("-" * width for width in widths))
            cells = [row[0].ljust(widths[0])] + [
                cell.rjust(width) for cell, width in zip(row[1:], widths[1:], strict=True)
            ]
            lines.append("  ".join(cells).rstrip())
        saved = report.total.saved_percent
        if saved is not None:
            lines.append(f"saved {saved:.1f}% of the live price")
        else:
            lines.append("cost unknown: no price for the model; add one under `prices:`")
    if report.pending:
        lines.append(
            f"not counted: {len(report.pending)} partition(s) without results yet "
            f"({', '.join(report.pending)})"
        )
    return "\n".join(lines) + "\n"


def render_csv(report: SpendReport) -> str:
    """A header and a row per partition, then the `total` row; costs in USD, empty if
    unknown."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    names = ["partition", "day", "generation", *Spend().fields()]
    writer.writerow(names)
    for item in report.partitions:
        day = "" if item.day is None else item.day.isoformat()
        writer.writerow([item.partition, day, item.generation, *_csv_values(item.spend)])
    writer.writerow(["total", "", "", *_csv_values(report.total)])
    return buffer.getvalue()


def render_json(report: SpendReport) -> str:
    """One JSON document: the range, each partition, the total, and the pending keys."""
    document = {
        "pipeline": report.pipeline,
        "from": None if report.start is None else report.start.isoformat(),
        "to": None if report.end is None else report.end.isoformat(),
        "partitions": [
            {
                "partition": item.partition,
                "day": None if item.day is None else item.day.isoformat(),
                "generation": item.generation,
                **item.spend.fields(),
            }
            for item in report.partitions
        ],
        "total": report.total.fields(),
        "pending": report.pending,
    }
    return json.dumps(document, indent=2) + "\n"


_RENDERERS: dict[str, Callable[[SpendReport], str]] = {
    "table": render_table,
    "csv": render_csv,
    "json": render_json,
}


def _title(report: SpendReport) -> str:
    span = ""
    if report.start or report.end:
        span = f", {report.start or 'first'} to {report.end or 'last'}"
    count = len(report.partitions)
    if not count:
        return f"{report.pipeline}{span}: no partition with results written"
    return f"{report.pipeline}{span}: {count} partition(s) with results"


def _shown_statuses(total: Spend) -> list[str]:
    """`succeeded`, and every other status some row has."""
    return [
        status.value
        for status in RowStatus
        if status is RowStatus.SUCCEEDED or total.counts.get(status.value)
    ]


def _table_row(name: str, spend: Spend, statuses: list[str]) -> list[str]:
    counts = [f"{spend.counts.get(status, 0):,}" for status in statuses]
    return [
        name,
        f"{spend.rows:,}",
        *counts,
        f"{spend.input_tokens:,}",
        f"{spend.output_tokens:,}",
        usd(spend.cost_batch_usd),
        usd(spend.cost_live_usd),
        usd(spend.saved_usd),
    ]


def _csv_values(spend: Spend) -> list[Any]:
    """The spend's values, USD written out in full (no `5.6e-05`), empty when unknown."""
    return [_csv_value(value) for value in spend.fields().values()]


def _csv_value(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.10f}".rstrip("0").rstrip(".") or "0"
    return value
