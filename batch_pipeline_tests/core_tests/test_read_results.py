"""`read_results` over days whose columns were typed differently by their sources."""

from __future__ import annotations

import re
from pathlib import Path

import duckdb
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batch_pipeline import PipelineSpec, read_results
from batch_pipeline.core.results import ResultsError
from batch_pipeline.core.results import read_results as read_results_dir
from batch_pipeline_tests.batch_apis import BatchApi, on_both_apis
from batch_pipeline_tests.conftest import ticket_spec

DAY, OTHER_DAY = "2026-11-20", "2026-11-21"


@on_both_apis
def test_days_from_a_dataframe_and_from_csv_read_together(tmp_path: Path, api: BatchApi) -> None:
    """The DataFrame day has integer keys and amounts; the CSV day's keys and amounts hold
    text. Both read back whole, the disagreeing columns as text, as DuckDB reads them."""
    (tmp_path / "tickets.csv").write_text(
        "ticket_id,subject,body,created_at,amount\n"
        f"A-1,Late,Where is it?,{OTHER_DAY} 09:00:00,about 3\n"
        f"A-2,Thanks,All good,{OTHER_DAY} 10:00:00,\n"
    )
    source = {"path": "tickets.csv", "key": "ticket_id", "partition_column": "created_at"}
    spec = PipelineSpec.from_dict(
        ticket_spec(tmp_path, api.base_url, source=source), base_dir=tmp_path
    )
    frame = pd.DataFrame(
        {
            "ticket_id": [7, 8],
            "subject": ["Refund", "Broken"],
            "body": ["Please refund.", "It broke."],
            "created_at": pd.to_datetime([f"{DAY} 09:00", f"{DAY} 11:00"]),
            "amount": [12, 5],
        }
    )
    with api.pipeline(spec, dataframe=frame) as pipeline:
        pipeline.run(DAY, poll_interval=0.1, timeout=60)
    with api.pipeline(spec) as pipeline:
        pipeline.run(OTHER_DAY, poll_interval=0.1, timeout=60)

    results = read_results(spec).sort_values("ticket_id")
    assert results["ticket_id"].tolist() == ["7", "8", "A-1", "A-2"]
    assert results["amount"].tolist() == ["12", "5", "about 3", ""]  # CSV reads "" as text
    assert set(results["status"]) == {"succeeded"}
    assert results["partition"].tolist() == [DAY, DAY, OTHER_DAY, OTHER_DAY]
    assert read_results(spec, OTHER_DAY)["ticket_id"].tolist() == ["A-1", "A-2"]
    pattern = str(spec.pipeline_dir / "results" / "*" / "*.parquet")
    query = f"select count(*) from read_parquet('{pattern}', union_by_name = true)"
    assert duckdb.sql(query).fetchall() == [(4,)]


def write_day(results: Path, day: str, table: pa.Table) -> None:
    """A results file in the layout `collect_results` writes."""
    folder = results / f"partition={day}"
    folder.mkdir(parents=True)
    pq.write_table(table, folder / "part-0.parquet")


def test_promotable_types_are_promoted_and_missing_columns_are_null(tmp_path: Path) -> None:
    write_day(
        tmp_path,
        DAY,
        pa.table({"id": pa.array([1], pa.int32()), "score": [0.5], "note": ["x"]}),
    )
    write_day(tmp_path, OTHER_DAY, pa.table({"id": pa.array([2], pa.int64()), "score": [3]}))
    frame = read_results_dir(tmp_path).sort_values("id")
    assert str(frame["id"].dtype) == "Int64" and frame["id"].tolist() == [1, 2]
    assert frame["score"].tolist() == [0.5, 3.0]
    assert frame["note"].tolist()[0] == "x" and pd.isna(frame["note"].tolist()[1])


def test_timestamps_with_and_without_a_zone_read_as_text(tmp_path: Path) -> None:
    at = pd.Timestamp(f"{DAY} 09:30")
    write_day(tmp_path, DAY, pa.table({"at": pa.array([at], pa.timestamp("us"))}))
    write_day(tmp_path, OTHER_DAY, pa.table({"at": pa.array([at], pa.timestamp("us", "UTC"))}))
    frame = read_results_dir(tmp_path).sort_values("partition")
    assert frame["at"].tolist() == ["2026-11-20 09:30:00.000000", "2026-11-20 09:30:00.000000Z"]
    assert read_results_dir(tmp_path, DAY)["at"].tolist() == [at]  # alone: its own type


def test_a_column_with_no_common_type_is_named_with_its_days_and_types(tmp_path: Path) -> None:
    write_day(tmp_path, DAY, pa.table({"tags": pa.array([[1, 2]], pa.list_(pa.int64()))}))
    write_day(tmp_path, OTHER_DAY, pa.table({"tags": ["a, b"]}))
    with pytest.raises(ResultsError) as caught:
        read_results_dir(tmp_path)
    message = str(caught.value)
    assert "'tags'" in message and "string" in message
    assert re.search(r"list<\w+: int64>", message)
    assert f"partition={DAY}" in message and f"partition={OTHER_DAY}" in message
    assert read_results_dir(tmp_path, OTHER_DAY)["tags"].tolist() == ["a, b"]  # one day alone reads
