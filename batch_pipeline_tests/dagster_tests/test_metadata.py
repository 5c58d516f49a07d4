"""The metadata a person reads on the assets' pages: short labels, USD and a saving share that
stay numbers, readable sizes, one path, a failures table, nothing constant or empty."""

from __future__ import annotations

import dagster as dg
import pytest

from batch_pipeline.core.report import PartitionSpend, Spend, SpendReport
from batch_pipeline.core.types import RequestsSummary, ResultsSummary
from batch_pipeline.dagster.metadata import readable_size, requests_metadata, results_metadata


def results_summary(**changes: object) -> ResultsSummary:
    values: dict = {
        "pipeline": "ticket_triage",
        "partition": "2026-11-20",
        "generation": 1,
        "path": "/data/out/ticket_triage/results/partition=2026-11-20/part-0.parquet",
        "rows": 100,
        "counts": {"succeeded": 92, "failed": 8},
        "input_tokens": 4240,
        "output_tokens": 1840,
        "cost_batch_usd": 0.00087,
        "cost_live_usd": 0.00174,
        "saved_usd": 0.00087,
        "columns": [("ticket_id", "string"), ("status", "string")],
        "preview": [{"ticket_id": "TCK-00201", "status": "failed"}],
        "failures": [
            {
                "status": "failed",
                "error_code": "invalid_request",
                "rows": 8,
                "sample_message": "Simulated failure with HTTP status 400",
            }
        ],
    }
    return ResultsSummary(**{**values, **changes})


@pytest.mark.parametrize(
    ("size", "text"),
    [(0, "0 bytes"), (1023, "1,023 bytes"), (41438, "40.5 KB"), (3 * 1024**3, "3.0 GB")],
)
def test_sizes_read_as_a_file_browser_shows_them(size: int, text: str) -> None:
    assert readable_size(size) == text


def test_results_have_short_labels_usd_floats_and_one_path() -> None:
    metadata = results_metadata(results_summary())
    assert not [key for key in metadata if key.startswith("batch_pipeline/")]
    assert metadata["cost_usd"] == dg.MetadataValue.float(0.00087)
    assert metadata["live_cost_usd"] == dg.MetadataValue.float(0.00174)
    assert metadata["saved_percent"] == dg.MetadataValue.float(50.0)
    paths = [v for v in metadata.values() if "part-0.parquet" in str(getattr(v, "value", v))]
    assert len(paths) == 1
    assert (metadata["failed"], metadata["expired"]) == (8, 0)
    assert "generation" not in metadata  # the first generation says nothing


def test_the_failures_table_has_a_row_per_status_and_code() -> None:
    table = results_metadata(results_summary())["failures"]
    assert [column.name for column in table.schema.columns] == [
        "status",
        "error_code",
        "rows",
        "sample_message",
    ]
    (record,) = table.records
    assert record.data == {
        "status": "failed",
        "error_code": "invalid_request",
        "rows": 8,
        "sample_message": "Simulated failure with HTTP status 400",
    }
    assert "failures" not in results_metadata(results_summary(failures=[]))


def test_a_rebuilt_day_says_its_generation_and_an_unknown_price_no_cost() -> None:
    metadata = results_metadata(
        results_summary(generation=2, cost_batch_usd=None, cost_live_usd=None, saved_usd=None)
    )
    assert metadata["generation"] == 2
    assert not [key for key in metadata if "usd" in key or "percent" in key]


def test_requests_show_what_was_built_and_leave_out_what_did_not_happen() -> None:
    summary = RequestsSummary(
        pipeline="ticket_triage",
        partition="2026-11-20",
        generation=1,
        source_rows=101,
        requests=99,
        rejected=2,
        shards=1,
        bytes=41438,
        estimated_input_tokens=4300,
        estimated_cost_live_usd=0.0012,
        estimated_cost_batch_usd=0.0006,
        manifest_path="/data/out/manifest.json",
        already_built=False,
    )
    metadata = requests_metadata(summary)
    assert metadata["size"] == "40.5 KB"
    assert metadata["estimated_saved_percent"] == dg.MetadataValue.float(50.0)
    for nothing_to_say in ("rows_without_day", "reused_build", "generation", "spec_changed"):
        assert nothing_to_say not in metadata


def test_results_carry_the_totals_of_the_report_as_numbers_dagster_plots() -> None:
    days = [
        results_summary(partition=day, cost_batch_usd=cost, cost_live_usd=2 * cost)
        for day, cost in (("2026-11-18", 0.001), ("2026-11-19", 0.002))
    ]
    report = SpendReport(
        "ticket_triage",
        [PartitionSpend(day.partition, None, 1, Spend.of(day)) for day in days],
        pending=[],
    )
    metadata = results_metadata(days[-1], report)
    assert isinstance(metadata["cost_usd"], dg.FloatMetadataValue)
    assert metadata["cost_usd"].value == pytest.approx(0.002)
    assert metadata["saved_usd"].value == pytest.approx(0.002)
    assert metadata["total_partitions"] == 2
    assert metadata["total_rows"] == 200
    assert metadata["total_input_tokens"] == 2 * 4240
    for name, value in (("cost_usd", 0.003), ("live_cost_usd", 0.006), ("saved_usd", 0.003)):
        assert isinstance(metadata[f"total_{name}"], dg.FloatMetadataValue)
        assert metadata[f"total_{name}"].value == pytest.approx(value)
    assert metadata["total_saved_percent"] == dg.MetadataValue.float(50.0)
    assert "total_rows" not in results_metadata(days[-1])
