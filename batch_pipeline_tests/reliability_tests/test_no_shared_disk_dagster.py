"""The demo pipeline through Dagster where no two processes share a disk: each submission run,
each sensor tick and each results run is launched in a process of its own (`dg launch`, and a
sensor evaluation as the daemon's code server makes), with an empty working folder, HOME,
TMPDIR and DAGSTER_HOME removed when it ends. Dagster's instance is PostgreSQL (the repo's
dagster.yaml, copied into each DAGSTER_HOME, on a fresh database), the pipeline's storage is
the S3 server and its ledger PostgreSQL.

Dagster writes its compute logs under DAGSTER_HOME and `dg` its telemetry id under HOME: those
are let be (a deployment ships compute logs to object storage or drops them), and nothing of
the pipeline's is there, since every later process finds what it needs without them.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import sqlalchemy as sa

from batch_pipeline.dagster import ROWS_ONCE_CHECK
from batch_pipeline.demo import DEMO_DAYS, DEMO_PIPELINE, demo_rows
from batch_pipeline_tests.conftest import _new_postgres_database
from batch_pipeline_tests.reliability_tests.helpers import (
    API_URL_ENV,
    REPO_ROOT,
    ROOT_ENV,
    OnStore,
    Tally,
    assert_no_leak,
    check_objects_whole,
    child_command,
    demo_on_store,
    put_table,
    scan_dagster,
)
from batch_pipeline_tests.reliability_tests.isolated import (
    IsolatedRun,
    Isolation,
    check_read_rows,
    last_json,
)

pytestmark = [pytest.mark.reliability, pytest.mark.slow, pytest.mark.postgres]

DAYS = DEMO_DAYS[:2]
MODULE = "batch_pipeline_tests.reliability_tests.s3_definitions"
TICKS = 30
# What Dagster itself keeps on a local disk: compute logs, and dg's telemetry id.
DAGSTER_LOCAL = ("dagster_home/*", "home/.dagster/*")
IN_PROCESS = json.dumps({"execution": {"config": {"in_process": {}}}})


@pytest.fixture
def dagster_database() -> Iterator[str]:
    """A fresh PostgreSQL database for Dagster's runs, events and ticks."""
    with _new_postgres_database() as url:
        yield url


def dagster_pg_env(url: str) -> dict[str, str]:
    """The variables the repo's dagster.yaml reads, for the database at `url`."""
    parts = sa.engine.make_url(url)
    return {
        "DAGSTER_PG_HOST": parts.host or "127.0.0.1",
        "DAGSTER_PG_PORT": str(parts.port or 5432),
        "DAGSTER_PG_USER": parts.username or "postgres",
        "DAGSTER_PG_DB": parts.database or "",
    }


def dg_launch(*args: str) -> list[str]:
    return [str(Path(sys.executable).with_name("dg")), "launch", "-m", MODULE, *args]


def tick_command() -> list[str]:
    tick = "batch_pipeline_tests.reliability_tests.sensor_tick"
    return [sys.executable, "-m", tick, MODULE, f"{DEMO_PIPELINE}_batch_sensor"]


def results_runs_launched(isolation: Isolation, tick: IsolatedRun, collected: list[str]) -> bool:
    """Launch each run a sensor tick asked for, each in a process of its own; whether every
    day's results run has run."""
    for request in last_json(tick):
        day, assets = request["partition"], ",".join(request["assets"])
        isolation.run(
            f"results-{day}",
            dg_launch("--assets", assets, "--partition", day, "--config-json", IN_PROCESS),
            may_leave=DAGSTER_LOCAL,
        )
        collected.append(day)
    return set(collected) >= set(DAYS)


def test_dagster_runs_and_sensor_ticks_share_no_disk(
    tmp_path: Path,
    on_store: OnStore,
    dagster_database: str,
    tally: Tally,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rows = demo_rows()
    put_table(on_store.store, f"{on_store.root}/tickets.parquet", rows)
    spec = str(on_store.write_spec(demo_on_store(on_store.root, on_store.base_url)))
    pg = dagster_pg_env(dagster_database)
    shared = {
        **on_store.environment(),
        ROOT_ENV: on_store.root,
        API_URL_ENV: on_store.base_url,
        **pg,
    }
    isolation = Isolation(tmp_path / "processes", tally, shared, REPO_ROOT / "dagster.yaml")

    for day in DAYS:
        job = f"{DEMO_PIPELINE}_submit_job"
        isolation.run(
            f"submit-{day}",
            dg_launch("--job", job, "--partition", day, "--config-json", IN_PROCESS),
            may_leave=DAGSTER_LOCAL,
        )
    collected: list[str] = []
    isolation.repeat(
        "tick",
        tick_command(),
        lambda tick: results_runs_launched(isolation, tick, collected),
        tries=TICKS,
        pause=1.0,
        may_leave=DAGSTER_LOCAL,
    )
    assert sorted(collected) == sorted(DAYS), "a day's results run was asked for twice"
    read = isolation.run(
        "read", child_command(spec, "--step", "read", *[f"--partition={d}" for d in DAYS])
    )

    check_read_rows(read, rows, DAYS, tally)
    check_objects_whole(on_store.store, on_store.bucket, tally)
    for variable, value in pg.items():
        monkeypatch.setenv(variable, value)
    home = tmp_path / "observer_home"
    home.mkdir()
    (home / "dagster.yaml").write_text((REPO_ROOT / "dagster.yaml").read_text())
    with dg.DagsterInstance.from_config(str(home)) as instance:
        runs = instance.get_runs()
        assert len(runs) == 2 * len(DAYS)
        assert {run.status for run in runs} == {dg.DagsterRunStatus.SUCCESS}
        assert all(rows_once_passed(instance, runs, day) for day in DAYS)
        assert_no_leak(scan_dagster(instance, tally))


def rows_once_passed(instance: dg.DagsterInstance, runs: list[Any], day: str) -> bool:
    """Whether the runs evaluated the every-row-once check of `day`, and it passed."""
    evaluations = [
        entry.dagster_event.event_specific_data
        for run in runs
        for entry in instance.all_logs(
            run.run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION
        )
    ]
    verdicts = [
        e.passed for e in evaluations if (e.partition, e.check_name) == (day, ROWS_ONCE_CHECK)
    ]
    return verdicts == [True]
