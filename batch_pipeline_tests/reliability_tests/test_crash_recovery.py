"""A submitting process SIGKILLed at any step is finished by the next run: one paid batch per
shard, every row once in the Parquet, and never a half-written file under a final name.

The core tests kill a run right after `upload_file` or `create_batch` of the first shard; these
kill it at the other steps (building, a later shard, inside the ledger transaction on SQLite
and PostgreSQL, mid-download, mid-Parquet), several times in a row, and before a cancel.
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from batch_pipeline.core.pipeline import Pipeline
from batch_pipeline.core.spec import PipelineSpec
from batch_pipeline_tests.reliability_tests.helpers import (
    DAY,
    Services,
    Tally,
    broken_files,
    check_paid_once,
    child_command,
    keys_of,
    ledger_url_for,
    run_child,
    run_partition,
    ticket_rows,
    write_pipeline,
)

pytestmark = [pytest.mark.reliability, pytest.mark.slow]

ROWS = 10
PER_FILE = 4  # three shards: 4, 4 and 2 requests


def crash(spec_path: Path, point: str, nth: int, tally: Tally) -> None:
    """Run the pipeline in a child that SIGKILLs itself at `point` (its `nth` time there)."""
    command = child_command(str(spec_path), "--partition", DAY, "--crash", point, "--nth", str(nth))
    crashed = run_child(command, tally)
    code, stderr = crashed.returncode, crashed.stderr
    assert code == -signal.SIGKILL, (
        f"the child was not killed at {point} #{nth} (exit {code}):\n{stderr[-2000:]}"
    )
    tally.crashes += 1


def rerun_and_check(
    spec_path: Path, base_url: str, tally: Tally, rows: list[dict], after_crash: list[str]
) -> None:
    """Run again in this process; every row once, succeeded at the first attempt; one batch
    and one upload per shard; no broken file visible after the crash nor after the rerun."""
    spec = PipelineSpec.from_yaml(spec_path)
    summary, results = run_partition(spec, tally, keys_of(rows))
    assert summary.counts["succeeded"] == len(rows), summary.counts
    assert (results["attempts"] == 1).all()
    with Pipeline(spec) as pipeline:
        check_paid_once(base_url, pipeline, tally)
    after_rerun = broken_files(spec.pipeline_dir, tally)
    assert not after_crash and not after_rerun, (
        "half-written or stray files visible\n  after the crash: "
        + "\n    ".join(after_crash or ["none"])
        + "\n  after the rerun: "
        + "\n    ".join(after_rerun or ["none"])
    )


@pytest.mark.parametrize(
    ("point", "nth", "ledger"),
    [
        pytest.param("shard_written", 1, "sqlite", id="after-the-first-shard-file-is-written"),
        pytest.param("upload", 2, "sqlite", id="after-the-second-shards-upload"),
        pytest.param("create", 2, "sqlite", id="after-the-second-shards-create"),
        pytest.param("ledger_write", 2, "sqlite", id="before-the-ledger-write-commits-sqlite"),
        pytest.param(
            "ledger_write",
            2,
            "postgresql",
            id="before-the-ledger-write-commits-postgresql",
            marks=pytest.mark.postgres,
        ),
        pytest.param(
            "download",
            1,
            "sqlite",
            id="during-the-results-download",
        ),
        pytest.param(
            "results_write",
            1,
            "sqlite",
            id="during-the-parquet-write",
        ),
    ],
)
def test_a_killed_run_is_finished_by_the_next(
    tmp_path: Path,
    keyed_api: str,
    name: str,
    tally: Tally,
    request: pytest.FixtureRequest,
    point: str,
    nth: int,
    ledger: str,
) -> None:
    postgres = request.getfixturevalue("postgres_database") if ledger == "postgresql" else None
    rows = ticket_rows(ROWS)
    spec_path = write_pipeline(
        tmp_path,
        keyed_api,
        name,
        rows,
        limits={"max_requests_per_file": PER_FILE},
        ledger=ledger_url_for(ledger, postgres),
    )
    crash(spec_path, point, nth, tally)
    after_crash = broken_files(PipelineSpec.from_yaml(spec_path).pipeline_dir, tally)
    rerun_and_check(spec_path, keyed_api, tally, rows, after_crash)


def test_a_cancel_after_a_kill_settles_every_row(
    tmp_path: Path, services: Services, name: str, tally: Tally
) -> None:
    """Killed after uploading the second shard (the first shard's batch hangs on one request,
    the third shard is queued), then cancelled by the user: the next run ends with every row,
    the shards that never became a batch as cancelled, and no batch created after the cancel."""
    service = services.start(completion_window_seconds=120)
    rows = ticket_rows(ROWS, body=lambda i: "<<hang>>" if i == 0 else f"request {i}")
    spec_path = write_pipeline(
        tmp_path, service.url, name, rows, limits={"max_requests_per_file": PER_FILE}
    )
    crash(spec_path, "upload", 2, tally)
    spec = PipelineSpec.from_yaml(spec_path)
    with Pipeline(spec) as pipeline:
        assert len(pipeline.cancel(DAY)) == 1
    _, results = run_partition(spec, tally, keys_of(rows))
    by_status = results.groupby("status")["attempts"].count().to_dict()
    assert by_status == {"succeeded": PER_FILE - 1, "cancelled": ROWS - PER_FILE + 1}
    with Pipeline(spec) as pipeline:
        check_paid_once(service.url, pipeline, tally)
        assert len(pipeline.ledger.batches(name)) == 1


def test_three_kills_in_a_row_still_pay_once(
    tmp_path: Path, keyed_api: str, name: str, tally: Tally
) -> None:
    """Killed after an upload, then the takeover killed after its create, then the next
    takeover killed inside its ledger write: the fourth run adopts what each left behind."""
    rows = ticket_rows(ROWS)
    spec_path = write_pipeline(
        tmp_path, keyed_api, name, rows, limits={"max_requests_per_file": PER_FILE}
    )
    for point in ("upload", "create", "ledger_write"):
        crash(spec_path, point, 1, tally)
    after_crashes = broken_files(PipelineSpec.from_yaml(spec_path).pipeline_dir, tally)
    rerun_and_check(spec_path, keyed_api, tally, rows, after_crashes)
