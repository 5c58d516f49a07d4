"""The Batch API misbehaving: per-request failures, hangs, a cancel from another process, 429 on
create, 500 on download, a restart mid-batch, a batch failed at validation, an output file gone
before download. Each ends with every row once, retryable ones retried (attempt counts), the
rest with a clear status and error, and one paid batch per shard."""

from __future__ import annotations

import re
import socket
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from batch_pipeline.core.ledger import Ledger
from batch_pipeline.core.pipeline import Pipeline, PollReport
from batch_pipeline.core.spec import PipelineSpec
from batch_pipeline.core.tuning import Tuning
from batch_pipeline.core.types import ShardState
from batch_pipeline_tests.reliability_tests.helpers import (
    CHILD_TIMEOUT,
    DAY,
    Services,
    Tally,
    by_key,
    check_files_whole,
    check_paid_once,
    cli_command,
    finish_child,
    keys_of,
    rows_with_bodies,
    run_child,
    run_partition,
    sdk,
    start_child,
    ticket_rows,
    wait_until,
    write_pipeline,
)

pytestmark = [pytest.mark.reliability, pytest.mark.slow]

MAX_ATTEMPTS = 3
# HTTP status -> (final status, attempts): 429 and 5xx are retried until attempts run out.
FAIL_CODES = {
    400: ("failed", 1),
    401: ("failed", 1),
    429: ("failed", MAX_ATTEMPTS),
    500: ("failed", MAX_ATTEMPTS),
    503: ("failed", MAX_ATTEMPTS),
}


def quick_and(faulty: dict[str, str], quick: int = 3) -> dict[str, str]:
    """Bodies: `quick` ordinary requests and the given faulty ones."""
    return {**{f"OK{i}": f"an ordinary request {i}" for i in range(quick)}, **faulty}


def finish(
    spec: PipelineSpec, base_url: str, tally: Tally, rows: list[dict[str, Any]], **options: Any
) -> pd.DataFrame:
    """Run to the results; rows once, batches once, files whole. Returns rows by key."""
    _, results = run_partition(spec, tally, keys_of(rows), **options)
    with Pipeline(spec) as pipeline:
        check_paid_once(base_url, pipeline, tally)
    check_files_whole(spec.pipeline_dir, tally)
    return by_key(results)


def outcome(results: pd.DataFrame, key: str) -> tuple[str, int]:
    row = results.loc[key]
    return row["status"], int(row["attempts"])


def test_per_request_failures_end_with_their_status_and_attempts(
    tmp_path: Path, keyed_api: str, name: str, tally: Tally
) -> None:
    rows = rows_with_bodies(quick_and({f"F{code}": f"<<fail:{code}>>" for code in FAIL_CODES}))
    spec_path = write_pipeline(
        tmp_path, keyed_api, name, rows, retry={"max_attempts": MAX_ATTEMPTS}
    )
    results = finish(PipelineSpec.from_yaml(spec_path), keyed_api, tally, rows)
    for i in range(3):
        assert outcome(results, f"OK{i}") == ("succeeded", 1)
    for code, expected in FAIL_CODES.items():
        row = results.loc[f"F{code}"]
        assert outcome(results, f"F{code}") == expected, code
        assert row["http_status"] == code
        assert row["error_code"] and f"HTTP status {code}" in row["error_message"]


def test_hanging_requests_expire_and_are_retried_until_attempts_run_out(
    tmp_path: Path, keyed_api: str, name: str, tally: Tally
) -> None:
    """The service's completion window is 2 s: each attempt of a `<<hang>>` expires."""
    rows = rows_with_bodies(quick_and({"HANG0": "<<hang>>", "HANG1": "wait <<hang>>"}))
    spec_path = write_pipeline(tmp_path, keyed_api, name, rows, retry={"max_attempts": 2})
    results = finish(PipelineSpec.from_yaml(spec_path), keyed_api, tally, rows)
    for key in ("HANG0", "HANG1"):
        assert outcome(results, key) == ("expired", 2)
        assert results.loc[key, "error_code"] == "batch_expired"
    assert all(outcome(results, f"OK{i}") == ("succeeded", 1) for i in range(3))


def test_cancel_from_another_process_settles_the_running_partition(
    tmp_path: Path, services: Services, name: str, tally: Tally
) -> None:
    """`batch-pipeline run` is waiting on a batch with hanging requests and a shard held back
    by the token budget when `batch-pipeline cancel` runs: the run ends with its results, done
    rows succeeded, the rest cancelled, nothing retried."""
    service = services.start(completion_window_seconds=120)
    bodies = {
        "Q0": "quick",
        "H0": "<<hang>>",
        "Q1": "quick",
        "Q2": "quick",
        "H1": "<<hang>>",
        "Q3": "quick",
    }
    rows = rows_with_bodies(bodies)
    spec_path = write_pipeline(
        tmp_path,
        service.url,
        name,
        rows,
        limits={"max_requests_per_file": 3, "enqueued_tokens": 100},  # one 73-token shard at once
    )
    spec = PipelineSpec.from_yaml(spec_path)
    run = start_child(
        cli_command(
            "-v",
            "run",
            str(spec_path),
            "--partition",
            DAY,
            "--poll-interval",
            "0.2",
            "--timeout",
            "60",
        )
    )
    ledger = Ledger(spec.ledger_url)
    try:
        submitted = wait_until(
            lambda: [s for s in ledger.shards(name) if s.state is ShardState.SUBMITTED],
            "the first shard's batch",
        )
        client = sdk(service.url)
        wait_until(
            lambda: client.batches.retrieve(submitted[0].batch_id).request_counts.completed == 2,
            "the quick requests of the first batch",
        )
        assert [s.state for s in ledger.shards(name)][1] is ShardState.QUEUED
    finally:
        ledger.close()
    cancel = run_child(cli_command("cancel", str(spec_path), "--partition", DAY), tally)
    assert cancel.returncode == 0, cancel.stderr
    assert "cancel requested for 1 batch(es)" in cancel.stdout
    done = finish_child(run, tally, timeout=CHILD_TIMEOUT)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr[-3000:]
    results = finish(spec, service.url, tally, rows)  # already collected: reads it back
    assert {k: outcome(results, k) for k in bodies} == {
        "Q0": ("succeeded", 1),
        "H0": ("cancelled", 1),
        "Q1": ("succeeded", 1),
        "Q2": ("cancelled", 1),
        "H1": ("cancelled", 1),
        "Q3": ("cancelled", 1),
    }
    assert results.loc["Q2", "error_code"] == "batch_cancelled"


def test_cancel_after_the_batch_finished_unseen_still_cancels_the_rest(
    tmp_path: Path, keyed_api: str, name: str, tally: Tally
) -> None:
    """The user cancels after the running batch completed but before a poll noticed (the
    ledger still says in progress): the queued shards are cancelled, the finished rows kept."""
    rows = ticket_rows(6)
    spec = PipelineSpec.from_yaml(
        write_pipeline(
            tmp_path,
            keyed_api,
            name,
            rows,
            limits={"max_requests_per_file": 3, "enqueued_tokens": 100},  # one shard at once
        )
    )
    client = sdk(keyed_api)
    with Pipeline(spec) as pipeline:
        pipeline.build_requests(DAY)
        (running,) = pipeline.submit(DAY).submitted_batch_ids
        wait_until(
            lambda: client.batches.retrieve(running).status == "completed", "the first batch"
        )
        pipeline.cancel(DAY)
    results = finish(spec, keyed_api, tally, rows)
    assert Counter(zip(results["status"], results["attempts"], strict=True)) == {
        ("succeeded", 1): 3,
        ("cancelled", 1): 3,
    }


def http_answers(caplog: pytest.LogCaptureFixture, path_end: str, status: int) -> list[str]:
    """The client's log lines of answers with `status` to requests whose path ends so."""
    pattern = re.compile(rf'HTTP Request: \w+ \S+{re.escape(path_end)} "HTTP/1.1 {status} ')
    return [r.getMessage() for r in caplog.records if pattern.search(r.getMessage())]


def test_429_on_create_queues_the_shard_again_and_submits_it_once(
    tmp_path: Path,
    services: Services,
    name: str,
    tally: Tally,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    service = services.start(fault_create_429_every=3)
    rows = ticket_rows(10)
    spec_path = write_pipeline(
        tmp_path, service.url, name, rows, limits={"max_requests_per_file": 4}
    )
    spec = PipelineSpec.from_yaml(spec_path)
    results = finish(spec, service.url, tally, rows, tuning=Tuning(requeue_backoff_seconds=0.2))
    assert (results["status"] == "succeeded").all() and (results["attempts"] == 1).all()
    assert len(http_answers(caplog, "/batches", 429)) == 1
    with Pipeline(spec) as pipeline:
        shards = pipeline.ledger.shards(name)
    deferred = [s.last_error for s in shards if s.last_error]
    assert len(deferred) == 1 and "HTTP 429" in deferred[0], deferred
    assert sorted(s.submissions for s in shards) == [1, 1, 2]  # the refused one went again


@pytest.mark.parametrize(
    ("sdk_retries", "every"),
    [pytest.param(3, 2, id="retried-by-the-sdk"), pytest.param(0, 3, id="retried-by-the-poller")],
)
def test_500_on_download_is_retried_and_nothing_is_lost(
    tmp_path: Path,
    services: Services,
    name: str,
    tally: Tally,
    caplog: pytest.LogCaptureFixture,
    sdk_retries: int,
    every: int,
) -> None:
    service = services.start(fault_download_500_every=every)
    rows = ticket_rows(10)
    spec_path = write_pipeline(
        tmp_path,
        service.url,
        name,
        rows,
        limits={"max_requests_per_file": 4},
        backend={"max_retries": sdk_retries},
    )
    errors: list[str] = []

    def note(_status: object, report: PollReport | None) -> None:
        errors.extend(report.errors if report else [])

    results = finish(PipelineSpec.from_yaml(spec_path), service.url, tally, rows, on_progress=note)
    assert (results["status"] == "succeeded").all() and (results["attempts"] == 1).all()
    assert http_answers(caplog, "/content", 500), "the fault never fired"
    if sdk_retries:
        assert errors == []  # the SDK's own retries hid it
    else:
        assert any("HTTP 500" in error for error in errors), errors


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_service_restarted_mid_batch_finishes_the_same_batch(
    tmp_path: Path, services: Services, name: str, tally: Tally
) -> None:
    """The service stops while a batch is half done and starts again on the same state dir and
    port; the batch resumes and the waiting run collects it. Nothing is submitted again."""
    service = services.start(port=free_port(), completion_window_seconds=60)
    rows = ticket_rows(6, body=lambda i: "slow <<slow:1.5>>" if i % 2 else "quick")
    spec = PipelineSpec.from_yaml(write_pipeline(tmp_path, service.url, name, rows))
    outcome_box: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome_box["results"] = finish(spec, service.url, tally, rows)
        except BaseException as exc:
            outcome_box["error"] = exc

    runner = threading.Thread(target=run, name="pipeline-run")
    runner.start()
    client = sdk(service.url)
    half_done = wait_until(
        lambda: [
            b
            for b in client.batches.list()
            if b.request_counts
            and 0 < b.request_counts.completed < b.request_counts.total
            and (b.metadata or {}).get("batch_pipeline_pipeline") == name
        ],
        "a half-done batch",
    )
    service.restart()
    runner.join(60)
    assert not runner.is_alive(), "the run did not finish after the restart"
    if "error" in outcome_box:
        raise outcome_box["error"]
    results = outcome_box["results"]
    assert (results["status"] == "succeeded").all() and (results["attempts"] == 1).all()
    batch = client.batches.retrieve(half_done[0].id)
    assert batch.status == "completed" and batch.request_counts.completed == len(rows)


def test_batch_failed_at_validation_fails_its_rows_with_the_reason(
    tmp_path: Path, services: Services, name: str, tally: Tally
) -> None:
    """The service takes at most 3 requests a batch and the spec cuts shards of 4: that shard's
    batch fails validation (not retryable), the other shard's rows succeed."""
    service = services.start(max_requests_per_batch=3)
    rows = ticket_rows(6)
    spec_path = write_pipeline(
        tmp_path, service.url, name, rows, limits={"max_requests_per_file": 4}
    )
    results = finish(PipelineSpec.from_yaml(spec_path), service.url, tally, rows)
    failed = results[results["status"] == "failed"]
    assert Counter(results["status"]) == {"failed": 4, "succeeded": 2}
    assert (results["attempts"] == 1).all()
    assert set(failed["error_code"]) == {"too_many_requests"}
    assert all("failed validation" in message for message in failed["error_message"])


def test_output_file_deleted_before_download_is_resubmitted(
    tmp_path: Path, keyed_api: str, name: str, tally: Tally
) -> None:
    """A batch completes, its output file disappears before the poll: its rows are missing
    results, retried in a second attempt; the other shard is untouched."""
    rows = ticket_rows(8)
    spec = PipelineSpec.from_yaml(
        write_pipeline(tmp_path, keyed_api, name, rows, limits={"max_requests_per_file": 4})
    )
    client = sdk(keyed_api)
    with Pipeline(spec) as pipeline:
        pipeline.build_requests(DAY)
        first, second = pipeline.submit(DAY).submitted_batch_ids
    done = wait_until(
        lambda: (b := client.batches.retrieve(first)).status == "completed" and b,
        "the first batch to complete",
    )
    client.files.delete(done.output_file_id)
    results = finish(spec, keyed_api, tally, rows)
    assert (results["status"] == "succeeded").all()
    assert Counter(zip(results["batch_id"] != second, results["attempts"], strict=True)) == {
        (True, 2): 4,
        (False, 1): 4,
    }
