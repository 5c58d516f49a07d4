"""The ledger through an outage of its PostgreSQL: waited out, bounded, and only for
connection failures; a transaction cut midway runs again whole."""

from __future__ import annotations

import logging
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
import yaml

from batch_pipeline.core.ledger import Ledger
from batch_pipeline.core.reconnect import LedgerUnavailableError
from batch_pipeline.core.types import ShardInfo
from batch_pipeline_tests.conftest import ticket_spec, write_tickets
from batch_pipeline_tests.throwaway_postgres import ThrowawayPostgres

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

DAY = "2026-11-20"
PASSWORD = "pw-never-shown-5e1d"
OUTAGE_SECONDS = 2.0


@pytest.fixture
def ledger(throwaway_postgres: ThrowawayPostgres) -> Iterator[Ledger]:
    """A ledger on the throwaway server, reached with a password in its URL."""
    opened = Ledger(throwaway_postgres.url(password=PASSWORD), reconnect_seconds=30)
    yield opened
    opened.close()


def outage_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "batch_pipeline.core.reconnect"]


def test_an_operation_waits_through_a_short_outage_and_then_succeeds(
    ledger: Ledger, throwaway_postgres: ThrowawayPostgres, caplog: pytest.LogCaptureFixture
) -> None:
    generation = ledger.start_generation("tickets", DAY, rebuild=False)
    throwaway_postgres.stop()
    back = threading.Timer(OUTAGE_SECONDS, throwaway_postgres.start)
    started = time.monotonic()
    back.start()
    with caplog.at_level(logging.WARNING):
        settled = ledger.mark_settled("tickets", DAY, generation)
    back.join()

    assert settled is True
    assert time.monotonic() - started >= OUTAGE_SECONDS
    [record] = ledger.list_partitions("tickets")
    assert record.settled_at is not None
    where = f"127.0.0.1:{throwaway_postgres.port}/postgres"
    lines = outage_lines(caplog)
    assert len(lines) == 2, lines
    assert lines[0].startswith(f"the ledger's database at {where} is unreachable")
    assert lines[1].startswith(f"the ledger's database at {where} answers again after")
    assert PASSWORD not in caplog.text


def test_an_outage_longer_than_the_bound_ends_with_one_line_naming_the_host(
    throwaway_postgres: ThrowawayPostgres, caplog: pytest.LogCaptureFixture
) -> None:
    ledger = Ledger(throwaway_postgres.url(password=PASSWORD), reconnect_seconds=OUTAGE_SECONDS)
    try:
        throwaway_postgres.stop()
        started = time.monotonic()
        with pytest.raises(LedgerUnavailableError) as raised:
            ledger.list_partitions("tickets")
        waited = time.monotonic() - started
    finally:
        ledger.close()

    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith(
        f"the ledger's database at 127.0.0.1:{throwaway_postgres.port}/postgres has not "
        f"answered for {OUTAGE_SECONDS:.0f} s (ledger.reconnect_seconds): "
    )
    assert PASSWORD not in message and PASSWORD not in caplog.text
    assert OUTAGE_SECONDS <= waited < OUTAGE_SECONDS + 10


@pytest.mark.parametrize("fault", ["missing table", "not-null violation"])
def test_a_statement_error_is_raised_at_once_and_not_tried_again(
    ledger: Ledger, caplog: pytest.LogCaptureFixture, fault: str
) -> None:
    shard = ShardInfo(
        "tickets_s0", "tickets", DAY, 1, 0, 0, "s0.jsonl", 1, 10, "0" * 64, 5, "m", "/v1/x"
    )
    ledger.add_shards([shard])
    statements: list[str] = []
    if fault == "missing table":
        with ledger.engine.begin() as conn:
            conn.execute(sa.text("DROP TABLE bp_batches"))
    sa.event.listen(
        ledger.engine, "before_cursor_execute", lambda *args: statements.append(args[2])
    )
    started = time.monotonic()
    with pytest.raises((sa.exc.ProgrammingError, sa.exc.IntegrityError)):
        if fault == "missing table":
            ledger.batches("tickets")
        else:
            ledger.update_shard(shard.shard_id, state=None)

    assert time.monotonic() - started < 5
    assert len([s for s in statements if "bp_" in s]) == 1  # run once
    assert outage_lines(caplog) == []


def test_a_transaction_cut_midway_runs_again_as_a_whole(
    own_postgres_database: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The server ends the session between the operation's read and its write: the whole
    operation runs again, so the rebuild makes one new generation, not two."""
    ledger = Ledger(own_postgres_database, reconnect_seconds=30)
    admin = sa.create_engine(own_postgres_database)
    cuts: list[int] = []

    def cut_after_the_read(conn, cursor, statement, *_: object) -> None:
        if not cuts and statement.lstrip().startswith("SELECT bp_partitions.generation"):
            cuts.append(cursor.connection.get_backend_pid())
            with admin.connect() as other:
                other.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": cuts[0]})

    try:
        assert ledger.start_generation("tickets", DAY, rebuild=False) == 1
        sa.event.listen(ledger.engine, "after_cursor_execute", cut_after_the_read)
        with caplog.at_level(logging.WARNING):
            assert ledger.start_generation("tickets", DAY, rebuild=True) == 2
        [record] = ledger.list_partitions("tickets")
    finally:
        ledger.close()
        admin.dispose()
    assert cuts, "the session was never cut"
    assert record.generation == 2
    assert len(outage_lines(caplog)) == 2


def test_a_ledger_never_reached_is_not_waited_for_the_run_stops_at_once(
    tmp_path: Path,
) -> None:
    """A database the process never reached is a wrong address, not an outage."""
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    row = {"ticket_id": "T1", "subject": "Order 1", "body": "late", "created_at": f"{DAY} 09:00"}
    write_tickets(tmp_path / "tickets.parquet", [row])
    spec = ticket_spec(tmp_path, "http://127.0.0.1:9/v1", ledger={"url_env": "BP_TEST_LEDGER"})
    path = tmp_path / "tickets.yaml"
    path.write_text(yaml.safe_dump(spec))
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "batch_pipeline.cli", "run", str(path), "--partition", DAY],
        capture_output=True,
        text=True,
        timeout=120,
        env={"BP_TEST_LEDGER": f"postgresql://bp:{PASSWORD}@127.0.0.1:{port}/ledger"},
    )

    assert done.returncode == 1, done.stderr
    assert time.monotonic() - started < 30  # not the 300 s of an outage
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("error: database: connection to server at") and f"{port}" in line
    assert PASSWORD not in done.stdout + done.stderr
