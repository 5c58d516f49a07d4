"""The ledger's PostgreSQL restarted in the middle of `batch-pipeline run`, as a managed
database's failover does: the run waits for it, finishes, and pays for each shard once."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from batch_pipeline.core.pipeline import Pipeline, read_results
from batch_pipeline.core.spec import PipelineSpec
from batch_pipeline_tests.reliability_tests.helpers import (
    DAY,
    Services,
    Tally,
    check_paid_once,
    cli_command,
    finish_child,
    keys_of,
    start_child,
    ticket_rows,
    wait_until,
    write_pipeline,
)
from batch_pipeline_tests.throwaway_postgres import ThrowawayPostgres

pytestmark = [pytest.mark.reliability, pytest.mark.slow, pytest.mark.postgres]

LEDGER_ENV = "BP_FAILOVER_LEDGER_URL"
PASSWORD = "failover-pw-never-shown-77c1"
ROWS = 12
PER_FILE = 4  # three shards
SLOW_SECONDS = 10  # one request is answered this late: the run is still polling meanwhile
DOWN_SECONDS = 6.0
BOUND_SECONDS = 2.0


def submitted_shards(url: str) -> int:
    """Shards the ledger shows with a batch (0 before its tables exist)."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return int(
                conn.execute(
                    sa.text("SELECT count(*) FROM bp_shards WHERE batch_id IS NOT NULL")
                ).scalar()
            )
    except sa.exc.ProgrammingError:
        return 0
    finally:
        engine.dispose()


@dataclass
class PollingRun:
    """`batch-pipeline run` started on a ledger of its own, past its first submission."""

    process: subprocess.Popen[str]
    spec_path: Path
    rows: list[dict[str, Any]]
    service_url: str


@pytest.fixture
def start_run(
    tmp_path: Path,
    services: Services,
    throwaway_postgres: ThrowawayPostgres,
    name: str,
    monkeypatch: pytest.MonkeyPatch,
) -> Callable[[float], PollingRun]:
    """Start the run on the throwaway server with `ledger.reconnect_seconds` as given; it
    returns once a shard is submitted and the run is waiting for the late request."""

    def start(bound: float) -> PollingRun:
        service = services.start(completion_window_seconds=120)
        rows = ticket_rows(
            ROWS, body=lambda i: f"<<slow:{SLOW_SECONDS}>> late" if i == 0 else f"parcel {i}"
        )
        url = throwaway_postgres.url(password=PASSWORD)
        monkeypatch.setenv(LEDGER_ENV, url)  # as production hands it over: a variable
        spec_path = write_pipeline(
            tmp_path,
            service.url,
            name,
            rows,
            limits={"max_requests_per_file": PER_FILE},
            ledger={"url_env": LEDGER_ENV, "reconnect_seconds": bound},
        )
        process = start_child(
            cli_command("run", str(spec_path), "--partition", DAY, "--poll-interval", "0.2")
        )
        try:
            wait_until(lambda: submitted_shards(url), "a first shard submitted", timeout=60)
        except AssertionError:
            process.kill()
            raise
        assert process.poll() is None, "the run ended before the database went away"
        return PollingRun(process, spec_path, rows, service.url)

    return start


def test_a_run_rides_through_a_restart_of_the_ledgers_postgresql(
    start_run: Callable[[float], PollingRun], throwaway_postgres: ThrowawayPostgres, tally: Tally
) -> None:
    run = start_run(60)
    try:
        throwaway_postgres.stop()
        time.sleep(DOWN_SECONDS)
        assert run.process.poll() is None, "the run did not wait for the database"
        throwaway_postgres.start()
    finally:
        done = finish_child(run.process, tally)

    assert done.returncode == 0, done.stderr[-3000:]
    down = [line for line in done.stderr.splitlines() if "is unreachable" in line]
    back = [line for line in done.stderr.splitlines() if "answers again after" in line]
    assert len(down) == len(back) == 1, done.stderr[-3000:]
    assert f"127.0.0.1:{throwaway_postgres.port}/postgres" in down[0]
    assert PASSWORD not in done.stdout + done.stderr
    spec = PipelineSpec.from_yaml(run.spec_path)
    results = read_results(spec, DAY)
    tally.check_rows_once(results, keys_of(run.rows))
    assert (results["status"] == "succeeded").all(), results["status"].value_counts()
    with Pipeline(spec) as pipeline:
        check_paid_once(run.service_url, pipeline, tally)


def test_a_run_whose_ledger_stays_away_stops_with_one_line_naming_the_host(
    start_run: Callable[[float], PollingRun], throwaway_postgres: ThrowawayPostgres, tally: Tally
) -> None:
    run = start_run(BOUND_SECONDS)
    try:
        throwaway_postgres.stop()
    finally:
        done = finish_child(run.process, tally)

    assert done.returncode == 1, done.stderr[-3000:]
    *_, error = done.stderr.strip().splitlines()
    assert error.startswith(
        f"error: the ledger's database at 127.0.0.1:{throwaway_postgres.port}/postgres has "
        f"not answered for {BOUND_SECONDS:.0f} s (ledger.reconnect_seconds): "
    )
    assert "Traceback" not in done.stderr
    assert PASSWORD not in done.stdout + done.stderr
