"""A partition's key is parsed once, where it enters, into a `Partition` the steps pass on;
a key that names no day is refused with the same message at every entry point."""

from __future__ import annotations

from datetime import date

import pytest
import yaml

from batch_pipeline import Partition, PipelineSpec
from batch_pipeline.cli import EXIT_ERROR
from batch_pipeline.cli import main as cli_main
from batch_pipeline.core.pipeline import Pipeline
from batch_pipeline.core.sources import iter_partition_batches, parse_partition
from batch_pipeline_tests.batch_apis import MemoryApi
from batch_pipeline_tests.conftest import ticket_spec, write_tickets

DAY = "2026-11-20"
BAD = {
    "2026-13-45": "partition '2026-13-45' is not a valid date",
    "20261120": "partition '20261120' is not a day in the form YYYY-MM-DD",
}


def rows() -> list[dict]:
    """Good rows and one the Batch API fails with a retryable 500, so the path makes retry
    shards too."""
    good = [{"ticket_id": f"T{i}", "subject": f"Order {i}", "body": "late"} for i in range(4)]
    flaky = [{"ticket_id": "F500", "subject": "Flaky", "body": "<<fail:500>>"}]
    return [{**row, "created_at": f"{DAY} 09:30"} for row in good + flaky]


@pytest.fixture
def parses(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every text `Partition.parse` is given from now on."""
    seen: list[str] = []
    parse = Partition.parse.__func__  # type: ignore[attr-defined]

    def counted(cls: type[Partition], text: str) -> Partition:
        seen.append(text)
        return parse(cls, text)

    monkeypatch.setattr(Partition, "parse", classmethod(counted))
    return seen


def make_pipeline(tmp_path, memory_api: MemoryApi) -> Pipeline:
    write_tickets(tmp_path / "tickets.parquet", rows())
    spec = ticket_spec(tmp_path, memory_api.base_url)
    return memory_api.pipeline(PipelineSpec.from_dict(spec, base_dir=tmp_path))


def test_a_run_parses_its_partition_once(tmp_path, memory_api, parses) -> None:
    with make_pipeline(tmp_path, memory_api) as pipeline:
        summary = pipeline.run(DAY, poll_interval=60)
        attempts = pipeline.read_results(DAY).set_index("ticket_id")["attempts"]
    assert summary.counts["succeeded"] == 4 and summary.counts["failed"] == 1
    assert attempts["F500"] > 1  # its retry shards were built, submitted and collected
    assert parses == [DAY]


def test_build_submit_poll_and_collect_parse_nothing_given_a_partition(
    tmp_path, memory_api, parses
) -> None:
    day = Partition.parse(DAY)
    with make_pipeline(tmp_path, memory_api) as pipeline:
        built = pipeline.build_requests(day)
        pipeline.submit(day)
        while not pipeline.status(day)[0].state.is_settled:
            memory_api.sleep(60)
            pipeline.poll()
        results = pipeline.collect_results(day)
        read = pipeline.read_results(day)
    assert built.partition == DAY and results.partition == DAY and len(read) == 5
    assert read["attempts"].max() > 1  # a retry shard was written on the way
    assert parses == [DAY]


def test_a_partition_holds_its_key_and_day() -> None:
    day = Partition.parse(DAY)
    assert (day.key, day.day, str(day)) == (DAY, date(2026, 11, 20), DAY)
    assert Partition.of(day) is day and Partition.of(DAY) == day
    assert parse_partition(day) == parse_partition(DAY) == date(2026, 11, 20)


@pytest.mark.parametrize("bad", sorted(BAD))
def test_a_key_of_no_day_gets_the_same_message_at_every_entry(tmp_path, memory_api, bad) -> None:
    message = BAD[bad]
    with make_pipeline(tmp_path, memory_api) as pipeline:
        entries = [
            lambda: pipeline.build_requests(bad),
            lambda: pipeline.submit(bad),
            lambda: pipeline.cancel(bad),
            lambda: pipeline.collect_results(bad),
            lambda: pipeline.status(bad),
            lambda: pipeline.run(bad),
            lambda: list(iter_partition_batches(pipeline.spec, bad)),
            lambda: Partition.parse(bad),
        ]
        for entry in entries:
            with pytest.raises(ValueError) as raised:
                entry()
            assert str(raised.value).startswith(message)
        assert pipeline.partitions() == []  # nothing of it reached the ledger


@pytest.mark.parametrize("bad", sorted(BAD))
@pytest.mark.parametrize("command", ["run", "status", "cancel"])
def test_the_command_line_names_a_key_of_no_day(tmp_path, capsys, command, bad) -> None:
    write_tickets(tmp_path / "tickets.parquet", rows())
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(ticket_spec(tmp_path, "http://127.0.0.1:9/v1")), "utf-8")
    assert cli_main([command, str(path), "--partition", bad]) == EXIT_ERROR
    assert capsys.readouterr().err.startswith(f"error: {BAD[bad]}")
