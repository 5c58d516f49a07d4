"""Daily, weekly, monthly and no partitions: which rows each partition holds, where its
results go, how keys and ranges are read, and the command line's refusals."""

from __future__ import annotations

from datetime import date, timedelta
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa
import yaml

from batch_pipeline.cli import EXIT_ERROR
from batch_pipeline.cli import main as cli_main
from batch_pipeline.core.layout import results_path
from batch_pipeline.core.partition import Partitioning, PartitionKind
from batch_pipeline.core.pipeline import load_pipeline
from batch_pipeline.core.sources import iter_partition_batches
from batch_pipeline.core.spec import PipelineSpec, SpecError
from batch_pipeline_tests.batch_apis import MemoryApi
from batch_pipeline_tests.conftest import ticket_spec, write_tickets

# Sunday 2026-11-01 to Tuesday 2026-12-01: weeks from Monday 2026-11-02, and two months' edges.
DAYS = [date(2026, 10, 31), *(date(2026, 11, 1) + timedelta(days=n) for n in range(31))]
UNREACHABLE = "http://127.0.0.1:9/v1"


def rows(days: list[date], *, as_type=lambda day: day) -> list[dict]:
    """Two tickets a day, dated by `as_type(day)`."""
    return [
        {"ticket_id": f"T{day:%m%d}-{n}", "subject": "Late", "body": "where", "created_at": value}
        for day in days
        for n, value in enumerate([as_type(day)] * 2)
    ]


def spec_of(tmp_path: Path, api_url: str, partitions, table: list[dict], **more) -> PipelineSpec:
    write_tickets(tmp_path / "tickets.parquet", table)
    data = ticket_spec(tmp_path, api_url, partitions=partitions, **more)
    return PipelineSpec.from_dict(data, base_dir=tmp_path)


def keys_in(pipeline, partition: str) -> set[str]:
    return set(pipeline.read_results(partition)["ticket_id"])


def expected(days: list[date]) -> set[str]:
    return {row["ticket_id"] for row in rows(days)}


def test_a_weekly_partition_holds_the_rows_of_its_seven_days(tmp_path, memory_api: MemoryApi):
    spec = spec_of(
        tmp_path, memory_api.base_url, {"kind": "weekly", "start": "2026-11-02"}, rows(DAYS)
    )
    with memory_api.pipeline(spec) as pipeline:
        for week in ("2026-11-02", "2026-11-09"):
            summary = pipeline.run(week, poll_interval=60)
            assert summary.path.endswith(results_path(week))
        first = keys_in(pipeline, "2026-11-02")
        second = keys_in(pipeline, "2026-11-09")
        every = pipeline.read_results()
    week = [date(2026, 11, 2) + timedelta(days=n) for n in range(7)]
    assert first == expected(week)
    assert second == expected([day + timedelta(days=7) for day in week])
    assert sorted(set(every["partition"])) == ["2026-11-02", "2026-11-09"]
    assert len(every) == len(set(every["ticket_id"])) == 28


def test_a_monthly_partition_holds_its_calendar_month(tmp_path, memory_api: MemoryApi):
    """Timestamps in a zone fall on their day in the schedule's zone: 23:30 UTC on 31 October
    is already November in Paris, and 23:30 UTC on 30 November is December there."""
    at_half_past_eleven = lambda day: pd.Timestamp(f"{day} 23:30", tz="UTC")  # noqa: E731
    spec = spec_of(
        tmp_path,
        memory_api.base_url,
        {"kind": "monthly", "start": "2026-10-01"},
        rows(DAYS, as_type=at_half_past_eleven),
        schedule={"timezone": "Europe/Paris"},
    )
    with memory_api.pipeline(spec) as pipeline:
        pipeline.run("2026-11-01", poll_interval=60)
        november = keys_in(pipeline, "2026-11-01")
    assert november == expected(DAYS[:-2])  # 31 Oct to 29 Nov in UTC: 1 to 30 Nov in Paris


def test_an_unpartitioned_pipeline_reads_every_row_into_one_partition(
    tmp_path, memory_api: MemoryApi
):
    table = [*rows(DAYS[:3]), {"ticket_id": "undated", "subject": "s", "body": "b"}]
    write_tickets(tmp_path / "tickets.parquet", table)
    data = ticket_spec(tmp_path, memory_api.base_url, partitions="none")
    del data["source"]["partition_column"]
    spec = PipelineSpec.from_dict(data, base_dir=tmp_path)
    with memory_api.pipeline(spec) as pipeline:
        summary = pipeline.run("all", poll_interval=60)
        every = pipeline.read_results()
    assert summary.path.endswith("results/partition=all/part-0.parquet")
    assert summary.counts["succeeded"] == len(table) == 7
    assert set(every["ticket_id"]) == {row["ticket_id"] for row in table}
    assert set(every["partition"]) == {"all"}


def test_a_range_is_submitted_whole_before_any_partition_is_waited_for(
    tmp_path, memory_api: MemoryApi
):
    spec = spec_of(tmp_path, memory_api.base_url, {"start": "2026-11-01"}, rows(DAYS))
    days = ["2026-11-01", "2026-11-02", "2026-11-03"]
    seen: list[str] = []
    with memory_api.pipeline(spec) as pipeline:
        outcomes = pipeline.run_all(
            spec.partitioning.parse_range("2026-11-01..2026-11-03"),
            poll_interval=60,
            on_progress=lambda status, _report: seen.append(status.partition),
        )
        every = pipeline.read_results()
    batches = memory_api.batches(spec.name)
    assert len(batches) == 3 and len({batch.created_at for batch in batches}) == 1
    assert [outcome.partition for outcome in outcomes] == days
    assert seen[:3] == days  # each partition's progress, from the first poll on
    assert sorted(every["ticket_id"]) == sorted(expected(DAYS[1:4]))  # every row once


@pytest.mark.parametrize("form", ["parquet", "sqlite"])
def test_file_and_sql_sources_read_a_weeks_rows_or_every_row(tmp_path, form):
    table = rows(DAYS, as_type=lambda day: f"{day}T08:00:00")
    write_tickets(tmp_path / "tickets.parquet", table)
    source = {"path": "tickets.parquet"}
    if form == "sqlite":
        pd.DataFrame(table).to_sql("tickets", sa.create_engine(f"sqlite:///{tmp_path / 't.db'}"))
        source = {"path": None, "sql": {"url": "sqlite:///t.db", "query": "SELECT * FROM tickets"}}

    def read(partitions, key: str) -> set[str]:
        data = ticket_spec(tmp_path, UNREACHABLE, partitions=partitions, source=source)
        spec = PipelineSpec.from_dict(data, base_dir=tmp_path)
        batches = iter_partition_batches(spec, key, columns=["ticket_id"])
        return {key for batch in batches for key in batch.column("ticket_id").to_pylist()}

    week = [date(2026, 11, 16) + timedelta(days=n) for n in range(7)]
    assert read({"kind": "weekly", "start": "2026-11-02"}, "2026-11-16") == expected(week)
    assert read("none", "all") == expected(DAYS)


@pytest.mark.parametrize(
    ("partitions", "key", "message"),
    [
        (
            "weekly",
            "2026-11-04",
            "partition '2026-11-04' is not the first day of a weekly "
            "partition; the day falls in 2026-11-02",
        ),
        ("monthly", "2026-11-02", "partition '2026-11-02' is not the first day of a monthly"),
        ("none", "2026-11-02", "partition '2026-11-02': this pipeline is not partitioned"),
        ("daily", "all", "partition 'all' is not a day in the form YYYY-MM-DD"),
    ],
)
def test_a_key_of_another_kind_is_refused(partitions, key, message) -> None:
    with pytest.raises(ValueError, match=message):
        Partitioning(PartitionKind(partitions)).parse(key)


def test_weeks_begin_on_the_weekday_of_the_start() -> None:
    wednesdays = Partitioning(PartitionKind.WEEKLY, start=date(2026, 11, 4))
    assert [p.key for p in wednesdays.parse_range("2026-11-04..2026-11-18")] == [
        "2026-11-04",
        "2026-11-11",
        "2026-11-18",
    ]
    assert wednesdays.containing(date(2026, 11, 10)).key == "2026-11-04"


@pytest.mark.parametrize(
    ("partitions", "message"),
    [
        ({"kind": "monthly", "start": "2026-11-02"}, "monthly partitions start on the 1st"),
        ({"kind": "none", "start": "2026-11-01"}, "partitions none covers the whole source"),
        ({"start": "2026-11-05", "end": "2026-11-01"}, "partitions.end: 2026-11-01 is before"),
        ({"kind": "hourly"}, "partitions.kind: Input should be 'none', 'daily'"),
    ],
)
def test_a_spec_with_partitions_that_cannot_be_is_refused(tmp_path, partitions, message) -> None:
    with pytest.raises(SpecError, match=message):
        spec_of(tmp_path, UNREACHABLE, partitions, rows(DAYS[:1]))


def test_a_partitioned_pipeline_needs_its_partition_column(tmp_path) -> None:
    data = ticket_spec(tmp_path, UNREACHABLE, partitions="weekly")
    del data["source"]["partition_column"]
    with pytest.raises(SpecError, match=r"source\.partition_column: required key is missing"):
        PipelineSpec.from_dict(data, base_dir=tmp_path)


# -- the command line's refusals: one line each, nothing submitted --------------------------


def write_spec(tmp_path: Path, partitions) -> Path:
    write_tickets(tmp_path / "tickets.parquet", rows(DAYS))
    data = ticket_spec(tmp_path, UNREACHABLE, partitions=partitions)
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(data), "utf-8")
    return path


BOUNDED = {"start": "2026-11-01", "end": "2026-11-30"}
REFUSED = {
    "on an unpartitioned pipeline": (
        "none",
        ["--partition", "2026-11-02"],
        "pipeline tickets is not partitioned (partitions: none): leave out --partition",
    ),
    "missing on a partitioned one": (
        BOUNDED,
        [],
        "pipeline tickets has daily partitions: give --partition YYYY-MM-DD (or a range",
    ),
    "a range ending before its start": (
        BOUNDED,
        ["--partition", "2026-11-07..2026-11-01"],
        "partition range '2026-11-07..2026-11-01' ends before it starts",
    ),
    "a range past the end": (
        BOUNDED,
        ["--partition", "2026-11-28..2026-12-02"],
        "partition 2026-12-02 is outside the pipeline's partitions, which run from "
        "2026-11-01 to 2026-11-30",
    ),
    "a range before the start": (
        BOUNDED,
        ["--partition", "2026-10-30..2026-11-02"],
        "partition 2026-10-30 is outside the pipeline's partitions",
    ),
    "a week that starts on another day": (
        {"kind": "weekly", "start": "2026-11-02"},
        ["--partition", "2026-11-02..2026-11-10"],
        "partition '2026-11-10' is not the first day of a weekly partition",
    ),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_the_command_line_refuses_a_partition_it_cannot_run(tmp_path, capsys, case) -> None:
    partitions, arguments, message = REFUSED[case]
    path = write_spec(tmp_path, partitions)
    assert cli_main(["run", str(path), *arguments]) == EXIT_ERROR
    err = capsys.readouterr().err
    assert err.startswith(f"error: {message}") and err.count("\n") == 1, err
    assert not (tmp_path / "out").exists()  # no ledger, no shard: nothing built or submitted


def test_the_core_builds_nothing_outside_the_partitions(tmp_path) -> None:
    """The core refuses it too, for callers other than the command line."""
    spec = spec_of(tmp_path, UNREACHABLE, BOUNDED, rows(DAYS))
    with load_pipeline(spec) as pipeline:
        with pytest.raises(ValueError, match="2026-12-01 is outside the pipeline's partitions"):
            pipeline.build_requests("2026-12-01")
        assert pipeline.partitions() == []


def test_keys_name_the_first_day_as_dagster_names_its_time_windows() -> None:
    monthly = Partitioning(PartitionKind.MONTHLY)
    assert monthly.containing(date(2026, 2, 28)).key == "2026-02-01"
    assert monthly.containing(date(2026, 2, 28)).end == date(2026, 3, 1)
    assert Partitioning(PartitionKind.WEEKLY).containing(date(2026, 11, 8)).key == "2026-11-02"


# -- the command line end to end, on the local Batch API ------------------------------------


@pytest.mark.slow
def test_an_unpartitioned_pipeline_runs_without_a_partition(tmp_path, batch_api, capsys):
    write_tickets(tmp_path / "tickets.parquet", rows(DAYS[:2]))
    data = ticket_spec(tmp_path, batch_api, name="fixed_set", partitions="none")
    del data["source"]["partition_column"]
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(data), "utf-8")
    assert cli_main(["run", str(path), "--poll-interval", "0.2", "--timeout", "60"]) == 0
    out = capsys.readouterr()
    assert "results: " in out.out and "partition=all/part-0.parquet" in out.out
    with load_pipeline(PipelineSpec.from_yaml(path)) as pipeline:
        results = pipeline.read_results()
    assert sorted(results["ticket_id"]) == sorted(expected(DAYS[:2]))
    assert set(results["partition"]) == {"all"}


@pytest.mark.slow
def test_a_range_of_three_days_runs_every_row_once(tmp_path, batch_api, capsys):
    write_tickets(tmp_path / "tickets.parquet", rows(DAYS[:5]))
    data = ticket_spec(tmp_path, batch_api, name="three_days", partitions={"start": "2026-10-31"})
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(data), "utf-8")
    command = ["run", str(path), "--partition", "2026-11-01..2026-11-03", "--poll-interval", "0.2"]
    assert cli_main(command) == 0
    out = capsys.readouterr()
    days = ["2026-11-01", "2026-11-02", "2026-11-03"]
    progress = [line.split(" ")[0] for line in out.err.splitlines()]
    assert progress[:3] == days and set(progress) == set(days)  # one line per partition
    assert [line for line in out.out.splitlines() if line.startswith("results: ")] == [
        f"results: {tmp_path / 'out' / 'three_days' / results_path(day)}" for day in days
    ]
    with load_pipeline(PipelineSpec.from_yaml(path)) as pipeline:
        results = pipeline.read_results()
    assert sorted(results["ticket_id"]) == sorted(expected(DAYS[1:4]))
