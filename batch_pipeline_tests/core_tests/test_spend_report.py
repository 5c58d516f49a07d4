"""`batch-pipeline report`: the spend of a pipeline run through the local Batch API over three
days, as a table, CSV and JSON, adding up to its results files, and its pictures."""

from __future__ import annotations

import csv
import io
import json
import sys
import xml.etree.ElementTree as ET
from datetime import UTC, date, datetime
from pathlib import Path

import pytest
import yaml

from batch_pipeline import cli
from batch_pipeline.core.ledger_records import PartitionRecord
from batch_pipeline.core.pipeline import read_results
from batch_pipeline.core.prices import cost_usd
from batch_pipeline.core.report import partition_day, spend_report
from batch_pipeline.core.types import RowStatus
from batch_pipeline.spend_report import render_table
from batch_pipeline_tests.conftest import ticket_spec, write_tickets

DAYS = ("2026-11-18", "2026-11-19", "2026-11-20")
NOT_RUN_DAY = "2026-11-21"  # in the source, never run: the report leaves it out


@pytest.fixture(scope="module")
def spec_path(tmp_path_factory: pytest.TempPathFactory, batch_api: str) -> Path:
    """A pipeline run with `batch-pipeline run` over three days of tickets, each day with a
    different number of rows, one rejected row and one that the service fails."""
    folder = tmp_path_factory.mktemp("spend")
    rows = []
    for index, day in enumerate((*DAYS, NOT_RUN_DAY)):
        for n in range(4 + 3 * index):
            body = f"Order {index}-{n} has not arrived, it was due {n + 1} days ago."
            rows.append(
                {
                    "ticket_id": f"T{index}-{n}",
                    "subject": f"Order {n}",
                    "body": body,
                    "created_at": f"{day} 09:{n:02d}",
                }
            )
    rows[0]["body"] = None  # rejected on the first day
    rows[4 + 7 + 2]["body"] = "<<fail:400>> refused by the service"  # failed on the third day
    write_tickets(folder / "tickets.parquet", rows)
    path = folder / "tickets.yaml"
    path.write_text(yaml.safe_dump(ticket_spec(folder, batch_api)))
    for day in DAYS:
        code = cli.main(["run", str(path), "--partition", day, "--poll-interval", "0.2"])
        assert code == 0
    return path


def report(path: Path, capsys: pytest.CaptureFixture[str], *options: str) -> str:
    capsys.readouterr()
    code = cli.main(["report", str(path), *options])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return captured.out


def expected_spend(path: Path) -> dict[str, dict[str, object]]:
    """Per day, what its results file holds: rows per status, tokens, and their cost."""
    spec = yaml.safe_load(path.read_text())
    results = read_results(path)
    spend: dict[str, dict[str, object]] = {}
    for day, rows in results.groupby("partition"):
        tokens_in, tokens_out = int(rows["input_tokens"].sum()), int(rows["output_tokens"].sum())
        model = spec["request"]["model"]
        spend[str(day)] = {
            "rows": len(rows),
            **{s.value: int((rows["status"] == s.value).sum()) for s in RowStatus},
            "input_tokens": tokens_in,
            "output_tokens": tokens_out,
            "cost_usd": cost_usd(model, tokens_in, tokens_out, batch=True),
            "live_cost_usd": cost_usd(model, tokens_in, tokens_out, batch=False),
        }
    return spend


@pytest.mark.slow
def test_the_json_report_adds_up_the_results_files_per_day_and_in_total(
    spec_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    document = json.loads(report(spec_path, capsys, "--format", "json"))
    expected = expected_spend(spec_path)
    assert [p["partition"] for p in document["partitions"]] == list(DAYS)
    assert set(expected) == set(DAYS)
    for item in document["partitions"]:
        want = expected[item["partition"]]
        for name, value in want.items():
            assert item[name] == pytest.approx(value), (item["partition"], name)
        assert item["saved_usd"] == pytest.approx(item["live_cost_usd"] - item["cost_usd"])
    total = document["total"]
    for name in ("rows", "input_tokens", "output_tokens", *(s.value for s in RowStatus)):
        assert total[name] == sum(day[name] for day in expected.values()), name
    for name in ("cost_usd", "live_cost_usd"):
        assert total[name] == pytest.approx(sum(day[name] for day in expected.values()))
    assert total["rows"] == len(read_results(spec_path))
    assert total["succeeded"] > 0 and total["rejected"] == 1 and total["failed"] == 1
    assert total["saved_percent"] == 50.0
    assert document["pending"] == []


@pytest.mark.slow
def test_the_table_and_the_csv_say_the_same_as_the_json(
    spec_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    document = json.loads(report(spec_path, capsys, "--format", "json"))
    rows = list(csv.DictReader(io.StringIO(report(spec_path, capsys, "--format", "csv"))))
    assert [row["partition"] for row in rows] == [*DAYS, "total"]
    for row, item in zip(rows, [*document["partitions"], document["total"]], strict=True):
        assert int(row["rows"]) == item["rows"]
        assert int(row["input_tokens"]) == item["input_tokens"]
        assert float(row["cost_usd"]) == pytest.approx(item["cost_usd"])

    table = report(spec_path, capsys).splitlines()
    assert table[0] == "tickets: 3 partition(s) with results"
    header = table[1].split()
    assert header[:5] == ["partition", "rows", "succeeded", "failed", "rejected"]
    total_line = next(line for line in table if line.startswith("total"))
    total = document["total"]
    assert total_line.split()[1:4] == [f"{total['rows']:,}", f"{total['succeeded']:,}", "1"]
    assert f"${total['cost_usd']:,.6f}" in total_line
    assert f"${total['saved_usd']:,.6f}" in total_line
    assert [line.split()[0] for line in table[2:5]] == list(DAYS)
    assert table[-1] == "saved 50.0% of the live price"


@pytest.mark.slow
def test_from_and_to_keep_the_days_between_them(
    spec_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    options = ("--from", DAYS[1], "--to", DAYS[2], "--format", "json")
    document = json.loads(report(spec_path, capsys, *options))
    assert [p["partition"] for p in document["partitions"]] == list(DAYS[1:])
    assert (document["from"], document["to"]) == DAYS[1:]
    later = json.loads(report(spec_path, capsys, "--from", NOT_RUN_DAY, "--format", "json"))
    assert later["partitions"] == [] and later["total"]["rows"] == 0
    assert report(spec_path, capsys, "--to", "2026-11-01").startswith(
        "tickets, first to 2026-11-01: no partition with results written"
    )


@pytest.mark.slow
def test_the_html_picture_is_one_file_that_loads_nothing(
    spec_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    page = tmp_path / "spend.html"
    report(spec_path, capsys, "--plot", str(page))
    text = page.read_text()
    assert text.startswith("<!doctype html>") and "<svg" in text
    for outside in ("http://", "https://", "//", "src=", "<script", "<link", "url("):
        assert outside not in text, outside
    for day in DAYS:
        assert day in text
    assert text.count("<rect") >= 2 * len(DAYS)  # a paid and a saved bar per day
    svg = tmp_path / "spend.svg"
    report(spec_path, capsys, "--plot", str(svg))
    root = ET.fromstring(svg.read_text())
    assert root.tag == "{http://www.w3.org/2000/svg}svg"


@pytest.mark.slow
def test_the_png_picture_is_a_png(
    spec_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    picture = tmp_path / "spend.png"
    printed = report(spec_path, capsys, "--plot", str(picture), "--format", "csv")
    assert printed.startswith("partition,day,")  # the picture's note is not on stdout
    data = picture.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 5_000


@pytest.mark.slow
def test_a_png_without_matplotlib_names_the_extra_in_one_line(
    spec_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if it were not installed
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    picture = tmp_path / "spend.png"
    capsys.readouterr()
    assert cli.main(["report", str(spec_path), "--plot", str(picture)]) == 1
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "batch_pipeline[report]" in line and ".html" in line
    assert not picture.exists()


def spec_without_runs(tmp_path: Path) -> Path:
    path = tmp_path / "tickets.yaml"
    path.write_text(yaml.safe_dump(ticket_spec(tmp_path, "http://127.0.0.1:9/v1")))
    return path


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--from", "2026-11-20", "--to", "2026-11-18"], "--from 2026-11-20 is after --to"),
        (["--format", "xml"], "unknown format 'xml': choose table, csv or json"),
        (["--from", "2026-02-30"], "--from '2026-02-30' is not a date in the form YYYY-MM-DD"),
        (["--to", "yesterday"], "--to 'yesterday' is not a date in the form YYYY-MM-DD"),
        (["--plot", "spend.gif"], "the picture is written as .html, .svg or .png"),
    ],
    ids=["from-after-to", "format", "bad-day", "not-a-day", "plot-suffix"],
)
def test_bad_options_are_one_line_each_and_touch_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], options: list[str], message: str
) -> None:
    path = spec_without_runs(tmp_path)
    assert cli.main(["report", str(path), *options]) == 1
    captured = capsys.readouterr()
    (line,) = captured.err.strip().splitlines()
    assert line.startswith("error: ") and message in line
    assert captured.out == ""
    assert not (tmp_path / "out").exists()  # no ledger made to read


def test_a_pipeline_never_run_reports_nothing_and_creates_no_ledger(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = spec_without_runs(tmp_path)
    assert cli.main(["report", str(path)]) == 0
    assert capsys.readouterr().out == "tickets: no partition with results written\n"
    assert not (tmp_path / "out").exists()
    assert cli.main(["report", str(path), "--plot", str(tmp_path / "spend.html")]) == 1
    assert "no partition with results" in capsys.readouterr().err


def record(key: str, rows: int, *, cost: float | None, collected_at: float | None = 0.0):
    """A ledger partition whose results summary holds `rows` answered rows at `cost`."""
    summary = {
        "rows": rows,
        "counts": {"succeeded": rows},
        "input_tokens": 10 * rows,
        "output_tokens": 5 * rows,
        "cost_batch_usd": cost,
        "cost_live_usd": None if cost is None else 2 * cost,
    }
    return PartitionRecord(
        pipeline="p",
        partition=key,
        generation=1,
        source_rows=rows,
        requests=rows,
        rejected=0,
        build_owner=None,
        build_lease_expires_at=None,
        built_at=0.0,
        settled_at=collected_at,
        collected_at=collected_at,
        cancelled_at=None,
        results_path=None,
        summary=None if collected_at is None else summary,
    )


class Partitions:
    def __init__(self, *records: PartitionRecord) -> None:
        self.records = sorted(records, key=lambda r: r.partition)

    def list_partitions(self, pipeline: str) -> list[PartitionRecord]:
        return [r for r in self.records if r.pipeline == pipeline]


NOV_21_NOON = datetime(2026, 11, 21, 12, tzinfo=UTC).timestamp()


@pytest.mark.parametrize(
    ("key", "day"),
    [
        ("2026-11-16", date(2026, 11, 16)),  # a day, or the first day of a week
        ("2026-11", date(2026, 11, 1)),  # a month
        ("all", date(2026, 11, 21)),  # no day in the key: the day its results were written
    ],
)
def test_any_partition_key_is_placed_on_a_day(key: str, day: date) -> None:
    assert partition_day(record(key, 1, cost=0.1, collected_at=NOV_21_NOON)) == day


def test_a_range_counts_written_partitions_and_names_the_others() -> None:
    ledger = Partitions(
        record("2026-11-01", 3, cost=0.3),
        record("2026-11-08", 4, cost=0.4),
        record("2026-11-15", 5, cost=None, collected_at=None),
        record("2026-12-01", 6, cost=0.6),
    )
    report = spend_report(ledger, "p", start=date(2026, 11, 2), end=date(2026, 11, 30))
    assert [p.partition for p in report.partitions] == ["2026-11-08"]
    assert report.pending == ["2026-11-15"]
    everything = spend_report(ledger, "p")
    assert everything.total.rows == 13 and everything.total.input_tokens == 130
    assert everything.total.cost_batch_usd == pytest.approx(1.3)
    assert everything.total.saved_usd == pytest.approx(1.3)
    assert everything.total.saved_percent == pytest.approx(50.0)
    up_to = spend_report(ledger, "p", through="2026-11-08")
    assert [p.partition for p in up_to.partitions] == ["2026-11-01", "2026-11-08"]
    with pytest.raises(ValueError, match="start 2026-12-01 is after its end 2026-11-01"):
        spend_report(ledger, "p", start=date(2026, 12, 1), end=date(2026, 11, 1))


def test_a_partition_without_a_price_makes_the_total_cost_unknown_not_smaller() -> None:
    report = spend_report(Partitions(record("a", 2, cost=0.2), record("b", 3, cost=None)), "p")
    assert report.total.rows == 5
    assert report.total.cost_batch_usd is None and report.total.saved_usd is None
    table = render_table(report)
    assert "unknown" in table.splitlines()[-2]  # the total line
    assert table.splitlines()[-1].startswith("cost unknown")


def test_days_of_several_partitions_add_up_in_the_daily_series() -> None:
    report = spend_report(
        Partitions(
            record("2026-11-01", 1, cost=0.1),
            record("2026-11-01-eu", 2, cost=0.2),
            record("2026-11-03", 3, cost=0.3),
        ),
        "p",
    )
    daily = report.daily()
    assert [day for day, _ in daily] == [date(2026, 11, 1), date(2026, 11, 3)]
    assert daily[0][1].cost_batch_usd == pytest.approx(0.3)
