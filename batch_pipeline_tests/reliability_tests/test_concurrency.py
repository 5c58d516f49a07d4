"""Two processes and a Dagster backfill run the same two days at once, on a SQLite and on a
PostgreSQL ledger: no shard paid twice, no update lost, nothing stuck (everything bounded).

A token budget lets two shards be in flight at a time, so the three keep racing to submit the
queued shards as batches finish, and all three poll and collect the same batches.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest

from batch_pipeline.core.ledger import Ledger
from batch_pipeline.core.pipeline import Pipeline
from batch_pipeline.core.sharding import load_manifest
from batch_pipeline.core.spec import PipelineSpec
from batch_pipeline.core.types import BatchStatus, ShardState
from batch_pipeline_tests import ledger_audit
from batch_pipeline_tests.reliability_tests.helpers import (
    DAY,
    OTHER_DAY,
    Tally,
    assert_no_leak,
    check_files_whole,
    check_paid_once,
    child_command,
    dagster_backfill,
    finish_child,
    keys_of,
    ledger_url_for,
    scan_dagster,
    service_batches,
    start_child,
    ticket_rows,
    write_pipeline,
)

pytestmark = [pytest.mark.reliability, pytest.mark.slow]

DAYS = (DAY, OTHER_DAY)
ROWS_PER_DAY = 9
SHARD_ROWS = 3  # three shards a day, 80 estimated tokens each
BUDGET = 200  # two shards in flight at once
BACKFILL_TIMEOUT = 90.0


def slow_every_third(i: int) -> str:
    return "slow <<slow:1>>" if i % 3 == 0 else f"My parcel {i} is late."


class BudgetWatch:
    """Samples the ledger's enqueued tokens while the others run: the most ever seen."""

    def __init__(self, spec: PipelineSpec) -> None:
        self.ledger = Ledger(spec.ledger_url)
        self.model = spec.request.model
        self.highest = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, name="budget-watch", daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.05):
            self.highest = max(self.highest, self.ledger.enqueued_tokens(self.model))

    def __enter__(self) -> BudgetWatch:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self.ledger.close()


@pytest.fixture
def instance() -> Iterator[dg.DagsterInstance]:
    with dg.DagsterInstance.ephemeral() as ephemeral:
        yield ephemeral


def check_nothing_lost(pipeline: Pipeline, base_url: str) -> None:
    """The ledger agrees with the service batch by batch, every shard of the manifests is
    registered and collected with its counts, every day is collected whole, once."""
    name = pipeline.spec.name
    live = {batch.id: batch for batch in service_batches(base_url, name)}
    for record in pipeline.ledger.batches(name):
        batch = live[record["batch_id"]]
        counts = batch.request_counts
        assert (record["status"], record["request_completed"], record["request_failed"]) == (
            batch.status,
            counts.completed,
            counts.failed,
        ), record["batch_id"]
    shards = {shard.shard_id: shard for shard in pipeline.ledger.shards(name)}
    for day in DAYS:
        manifest = load_manifest(pipeline.storage, day, 1, 1)
        assert {s.shard_id for s in manifest.shards} == {
            s.shard_id for s in shards.values() if s.partition == day
        }
        record = pipeline.ledger.get_partition(name, day)
        assert record is not None and record.generation == 1 and record.collected_at
        assert record.summary and record.summary["counts"]["succeeded"] == ROWS_PER_DAY
    for shard in shards.values():
        assert shard.state is ShardState.COLLECTED and shard.lease_owner is None, shard
        # Every request answered; a batch finalized just past its 2 s window on a loaded
        # machine ends `expired` with all of them, which loses nothing either.
        assert shard.batch_status in {BatchStatus.COMPLETED, BatchStatus.EXPIRED}, shard
        assert (shard.succeeded, shard.failed, shard.retried) == (shard.rows, 0, 0), shard


@pytest.mark.parametrize(
    "ledger", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
)
def test_two_processes_and_a_dagster_backfill_pay_once_and_lose_nothing(
    tmp_path: Path,
    keyed_api: str,
    name: str,
    tally: Tally,
    instance: dg.DagsterInstance,
    request: pytest.FixtureRequest,
    ledger: str,
) -> None:
    # A database of its own: the test adds an audit table and a trigger to the ledger.
    postgres = request.getfixturevalue("own_postgres_database") if ledger == "postgresql" else None
    rows = [
        *ticket_rows(ROWS_PER_DAY, prefix="A", day=DAY, body=slow_every_third),
        *ticket_rows(ROWS_PER_DAY, prefix="B", day=OTHER_DAY, body=slow_every_third),
    ]
    spec_path = write_pipeline(
        tmp_path,
        keyed_api,
        name,
        rows,
        limits={"max_requests_per_file": SHARD_ROWS, "enqueued_tokens": BUDGET},
        partitions={"start": "2026-11-01"},
        ledger=ledger_url_for(ledger, postgres),
    )
    spec = PipelineSpec.from_yaml(spec_path)
    days_forward = [arg for day in DAYS for arg in ("--partition", day)]
    days_backward = [arg for day in reversed(DAYS) for arg in ("--partition", day)]
    actors = {os.getpid(): "the Dagster backfill"}
    with ledger_audit.recorded(spec.ledger_url, actors) as race, BudgetWatch(spec) as watch:
        children = [
            start_child(child_command(str(spec_path), *days_forward)),
            start_child(child_command(str(spec_path), *days_backward)),
        ]
        actors.update({child.pid: f"process {n}" for n, child in enumerate(children, 1)})
        ledger_audit.wait_for_a_claim(spec.ledger_url, {c.pid for c in children}, timeout=120)
        runs = dagster_backfill(spec, DAYS, instance, timeout=BACKFILL_TIMEOUT)
        finished = [finish_child(child, tally) for child in children]
    for child in finished:
        assert child.returncode == 0, child.stderr[-3000:]
        assert json.loads(child.stdout) == dict.fromkeys(DAYS, ROWS_PER_DAY)
    assert all(run.success for run in runs), [run.run_id for run in runs if not run.success]
    for day in DAYS:
        results = pd.read_parquet(spec.pipeline_dir / "results" / f"partition={day}")
        tally.check_rows_once(results, keys_of(rows, day))
        assert (results["status"] == "succeeded").all() and (results["attempts"] == 1).all()
    with Pipeline(spec) as pipeline:
        check_paid_once(keyed_api, pipeline, tally)
        check_nothing_lost(pipeline, keyed_api)
    check_files_whole(spec.pipeline_dir, tally)
    assert_no_leak(scan_dagster(instance, tally))
    race.check(shards=len(DAYS) * ROWS_PER_DAY // SHARD_ROWS)
    assert 0 < watch.highest <= BUDGET, (
        f"{watch.highest} estimated tokens were enqueued at once, against a budget of {BUDGET}"
    )
