"""A crash at any step of submission, or two runs at once, never pays for a batch twice."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import time
from datetime import datetime
from pathlib import Path

import openai
import pandas as pd
import pytest

from batch_pipeline import PipelineSpec
from batch_pipeline.core import sharding, submission
from batch_pipeline.core.backends.base import BackendError, NotFound, TransientBackendError
from batch_pipeline.core.pipeline import Pipeline
from batch_pipeline.core.tuning import Tuning
from batch_pipeline.core.types import ShardState
from batch_pipeline_tests import ledger_audit
from batch_pipeline_tests.batch_apis import HttpApi
from batch_pipeline_tests.conftest import ticket_spec, write_tickets

DAY = "2026-11-20"
ROWS = 9
PER_FILE = 4  # three shards

# A child process that runs the pipeline and kills itself (SIGKILL: no cleanup, no finally)
# right after the backend step named on its command line.
CRASHING_CHILD = textwrap.dedent(
    """
    import json, os, signal, sys
    from batch_pipeline import PipelineSpec
    from batch_pipeline.core.backends import openai as backend_module
    from batch_pipeline.core.pipeline import Pipeline

    spec_path, step, day = sys.argv[1], sys.argv[2], sys.argv[3]
    real = getattr(backend_module.OpenAIBackend, step)

    def crash_after(self, *args, **kwargs):
        result = real(self, *args, **kwargs)
        os.kill(os.getpid(), signal.SIGKILL)
        return result

    setattr(backend_module.OpenAIBackend, step, crash_after)
    spec = PipelineSpec.from_yaml(spec_path)
    Pipeline(spec).run(day, poll_interval=0.2, timeout=60)
    """
)

# A child process that runs the pipeline once told to go: it says it is ready (`GO.pid`) and
# starts when the file GO appears, so that two children start racing at the same instant.
RUNNING_CHILD = textwrap.dedent(
    """
    import os, sys, time
    from pathlib import Path
    # what a run loads on first use, loaded before the race: neither child may lose it to imports
    import openai, pyarrow.dataset, pyarrow.parquet, sqlalchemy
    from batch_pipeline import PipelineSpec
    from batch_pipeline.core.pipeline import Pipeline

    spec_path, day, go = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    with Pipeline(PipelineSpec.from_yaml(spec_path)) as pipeline:
        Path(f"{go}.{os.getpid()}").touch()
        while not go.exists():
            time.sleep(0.005)
        summary = pipeline.run(day, poll_interval=0.2, timeout=90)
    print(summary.rows)
    """
)


def write_spec(tmp_path: Path, base_url: str, **overrides) -> Path:
    at = datetime(2026, 11, 20, 10)
    rows = [
        {"ticket_id": f"R{i}", "subject": "s", "body": f"request {i}", "created_at": at}
        for i in range(ROWS)
    ]
    write_tickets(tmp_path / "tickets.parquet", rows)
    overrides.setdefault("limits", {"max_requests_per_file": PER_FILE})
    spec = ticket_spec(tmp_path, base_url, **overrides)
    path = tmp_path / "pipeline.yaml"
    path.write_text(json.dumps(spec))
    return path


POSTGRES_SLOW = [pytest.mark.postgres, pytest.mark.slow]


def run_child(script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=120
    )


@pytest.mark.slow
@pytest.mark.parametrize("step", ["upload_file", "create_batch"])
def test_crash_after_a_step_then_rerun_leaves_one_batch_per_shard(tmp_path, batch_api, step):
    spec_path = write_spec(tmp_path, batch_api, name=f"crash_{step}")
    crashed = run_child(CRASHING_CHILD, str(spec_path), step, DAY)
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr

    spec = PipelineSpec.from_yaml(spec_path)
    with Pipeline(spec) as pipeline:
        summary = pipeline.run(DAY, poll_interval=0.2, timeout=60)
        assert summary.counts["succeeded"] == ROWS
        batches = pipeline.ledger.batches(spec.name)
    results = pd.read_parquet(summary.path)
    assert sorted(results["ticket_id"]) == sorted(f"R{i}" for i in range(ROWS))

    client = openai.OpenAI(base_url=batch_api, api_key="local")
    mine = [
        b
        for b in client.batches.list(limit=100)
        if (b.metadata or {}).get("batch_pipeline_pipeline") == spec.name
    ]
    identities = [b.metadata["batch_pipeline_submission"] for b in mine]
    assert len(identities) == len(set(identities)) == 3, identities
    assert {b["batch_id"] for b in batches} == {b.id for b in mine}


@pytest.mark.slow
def test_crash_before_the_ledger_write_is_adopted_not_paid_again(tmp_path, batch_api):
    """`create_batch` returned but the ledger never heard of the batch: the rerun finds the
    batch through the shard identity in its metadata."""
    spec_path = write_spec(tmp_path, batch_api, name="crash_ledger")
    crashed = run_child(CRASHING_CHILD, str(spec_path), "create_batch", DAY)
    assert crashed.returncode == -signal.SIGKILL
    spec = PipelineSpec.from_yaml(spec_path)
    with Pipeline(spec) as pipeline:
        assert pipeline.ledger.batches(spec.name) == []  # the write never happened
        pipeline.run(DAY, poll_interval=0.2, timeout=60)
        recorded = pipeline.ledger.batches(spec.name)
    client = openai.OpenAI(base_url=batch_api, api_key="local")
    mine = [
        b
        for b in client.batches.list(limit=100)
        if (b.metadata or {}).get("batch_pipeline_pipeline") == spec.name
    ]
    assert len(mine) == 3
    first = min(mine, key=lambda b: b.created_at)
    assert first.id in {b["batch_id"] for b in recorded}


def start_together(count: int, *args: str, go: Path) -> list[subprocess.Popen]:
    """Start `count` running children and release them at once, when all are ready."""
    children = [
        subprocess.Popen(
            [sys.executable, "-c", RUNNING_CHILD, *args, str(go)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(count)
    ]
    deadline = time.monotonic() + 60
    while not all(Path(f"{go}.{child.pid}").exists() for child in children):
        assert time.monotonic() < deadline and all(c.poll() is None for c in children)
        time.sleep(0.01)
    go.touch()
    return children


@pytest.mark.slow
@pytest.mark.parametrize(
    "ledger", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
)
def test_two_concurrent_runs_of_one_partition_pay_once(tmp_path, batch_api, ledger, request):
    """The day is built first, and both runs start submitting its shards at the same instant:
    each shard is submitted by one of them, the two share the shards, and each shard is one
    batch and one upload on the service."""
    name = f"concurrent_{ledger}"
    overrides = {"name": name, "output": {"keep_provider_files": True}}
    if ledger == "postgresql":  # a database of its own: the audit adds a table and a trigger
        overrides["ledger"] = {"url": request.getfixturevalue("own_postgres_database")}
    spec_path = write_spec(tmp_path, batch_api, limits={"max_requests_per_file": 1}, **overrides)
    spec = PipelineSpec.from_yaml(spec_path)
    with Pipeline(spec) as pipeline:
        pipeline.build_requests(DAY)
    actors: dict[int, str] = {}
    with ledger_audit.recorded(spec.ledger_url, actors) as race:
        children = start_together(2, str(spec_path), DAY, go=tmp_path / "go")
        actors.update({child.pid: f"run {n}" for n, child in enumerate(children, 1)})
        for child in children:
            out, err = child.communicate(timeout=120)
            assert child.returncode == 0, err
            assert out.strip() == str(ROWS)
    race.check(shards=ROWS)
    mine = HttpApi(batch_api).batches(name)
    assert sorted(b.metadata["batch_pipeline_submission"] for b in mine) == sorted(
        f"{shard}#1" for shard in race.submitters()[DAY]
    )
    client = openai.OpenAI(base_url=batch_api, api_key="local")
    files = [f for f in client.files.list(purpose="batch") if f.filename.startswith(name)]
    assert len(files) == ROWS


class Intercepted:
    """A backend whose calls named in `hooks` first run the hook with the call's arguments
    (a hook may raise, or let time pass)."""

    def __init__(self, inner, **hooks) -> None:
        self._inner = inner
        self._hooks = hooks

    def __getattr__(self, name: str):
        method = getattr(self._inner, name)
        hook = self._hooks.get(name)
        if hook is None:
            return method

        def call(*args, **kwargs):
            hook(*args, **kwargs)
            return method(*args, **kwargs)

        return call


def nonzero(counts: dict[str, int]) -> dict[str, int]:
    return {status: count for status, count in counts.items() if count}


LEASE_OUTLASTED = 400.0  # seconds: longer than a claim's lease


@pytest.mark.parametrize("slow_call", ["upload_file", "create_batch"])
def test_a_call_that_outlasts_the_lease_while_another_process_takes_over_pays_once(
    tmp_path, api, slow_call
):
    """Process A's upload (or batch creation) takes longer than its lease; a sensor tick (B)
    takes the shard over meanwhile. Only one batch per shard stays alive and the ledger
    follows it; the rows all come back once."""
    spec = PipelineSpec.from_yaml(
        write_spec(tmp_path, api.base_url, name=f"lease_{slow_call}", limits={})
    )
    now = [api.now()]
    taken_over: list[list[str]] = []
    sensor = api.pipeline(spec, backend=api.backend(spec), clock=lambda: now[0])

    def outlast_the_lease(*args, **kwargs) -> None:
        now[0] += LEASE_OUTLASTED
        taken_over.append(sensor.submit(DAY).submitted_batch_ids)

    cancels: list[str] = []
    slow = Intercepted(
        api.backend(spec), **{slow_call: outlast_the_lease}, cancel_batch=cancels.append
    )
    with api.pipeline(spec, backend=slow, clock=lambda: now[0]) as first:
        first.build_requests(DAY)
        assert first.submit(DAY).submitted_batch_ids == []  # it lost the shard
        assert len(taken_over) == 1 and len(taken_over[0]) == 1
        (shard,) = first.ledger.shards(spec.name)
        assert shard.batch_id == taken_over[0][0]

    batches = api.batches(spec.name)
    # A's extra batch is cancelled by A; the local service may finish it before the cancel.
    live = [b for b in batches if b.status not in ("cancelling", "cancelled")]
    assert [b.id for b in live if b.id not in cancels] == taken_over[0]
    assert len(batches) == (2 if slow_call == "create_batch" else 1)
    assert len(cancels) == (1 if slow_call == "create_batch" else 0)

    with api.pipeline(spec) as pipeline:
        summary = pipeline.run(DAY, poll_interval=0.2, timeout=60)
    assert nonzero(summary.counts) == {"succeeded": ROWS}
    assert sorted(pd.read_parquet(summary.path)["ticket_id"]) == sorted(
        f"R{i}" for i in range(ROWS)
    )


def _refuse_first_shard(*, input_file_id: str, endpoint: str, metadata: dict) -> None:
    if metadata["batch_pipeline_submission"].split("#")[0].endswith("s00000"):
        raise BackendError(
            "create a batch failed: HTTP 400 (invalid_request): the file holds no requests",
            status_code=400,
            code="invalid_request",
        )


def test_a_shard_the_provider_refuses_fails_its_rows_and_the_others_still_run(tmp_path, api):
    spec = PipelineSpec.from_yaml(write_spec(tmp_path, api.base_url, name="refused"))
    backend = Intercepted(api.backend(spec), create_batch=_refuse_first_shard)
    with api.pipeline(spec, backend=backend) as pipeline:
        pipeline.build_requests(DAY)
        submitted = pipeline.submit(DAY)
        assert len(submitted.submitted_batch_ids) == 2  # the shards after it went ahead
        assert len(submitted.refused_reasons) == 1
        assert "the file holds no requests" in submitted.refused_reasons[0]
        summary = pipeline.run(DAY, poll_interval=0.2, timeout=60)
    results = pd.read_parquet(summary.path)
    assert len(results) == ROWS and results["ticket_id"].is_unique
    failed = results[results["status"] == "failed"]
    assert sorted(failed["ticket_id"]) == [f"R{i}" for i in range(PER_FILE)]
    assert set(failed["error_code"]) == {"invalid_request"}
    assert failed["error_message"].str.contains("the provider refused the batch").all()
    assert nonzero(summary.counts) == {"succeeded": ROWS - PER_FILE, "failed": PER_FILE}


def test_an_input_file_that_expired_before_a_later_create_is_uploaded_again(tmp_path, api):
    """The first create is deferred (the provider was busy); by the next attempt the uploaded
    file has expired. The shard uploads it again rather than failing or looping."""
    tuning = Tuning(deferral_backoff_seconds=(0.1,))
    spec = PipelineSpec.from_yaml(write_spec(tmp_path, api.base_url, name="file_gone", limits={}))
    inner = api.backend(spec)
    creates: list[str] = []

    def busy_then_expired(*, input_file_id: str, endpoint: str, metadata: dict) -> None:
        creates.append(input_file_id)
        if len(creates) == 1:
            raise TransientBackendError("create a batch failed: HTTP 503", status_code=503)
        if len(creates) == 2:
            inner.delete_file(input_file_id)  # it expired meanwhile

    backend = Intercepted(inner, create_batch=busy_then_expired)
    with api.pipeline(spec, backend=backend, tuning=tuning) as pipeline:
        pipeline.build_requests(DAY)
        assert "provider busy" in pipeline.submit(DAY).waiting_reasons[0]
        api.sleep(0.2)
        assert "input file gone" in pipeline.submit(DAY).waiting_reasons[0]
        summary = pipeline.run(DAY, poll_interval=0.2, timeout=60)
    assert nonzero(summary.counts) == {"succeeded": ROWS}
    (batch,) = api.batches(spec.name)
    assert creates[0] == creates[1] != batch.input_file_id == creates[2]


@pytest.mark.parametrize("ledger", ["sqlite", pytest.param("postgresql", marks=POSTGRES_SLOW)])
def test_submitters_that_both_saw_room_in_the_token_budget_do_not_overshoot_it_together(
    tmp_path, api, ledger, request
):
    """Submitter A read the enqueued tokens before submitter B claimed a shard: A's claim,
    checked in its own transaction, must not take a second shard past the budget."""
    overrides = {"name": f"budget_race_{ledger}"}
    if ledger == "postgresql":
        overrides["ledger"] = {"url": request.getfixturevalue("postgres_database")}
    unlimited = PipelineSpec.from_yaml(write_spec(tmp_path, api.base_url, **overrides))
    with api.pipeline(unlimited) as builder:
        builder.build_requests(DAY)
        tokens = [s.estimated_input_tokens for s in builder.ledger.shards(unlimited.name)]
    budget = max(tokens) + min(tokens) - 1  # room for any one shard, never for two
    limits = unlimited.limits.model_copy(update={"enqueued_tokens": budget})
    spec = unlimited.model_copy(update={"limits": limits})

    with api.pipeline(spec) as first, api.pipeline(spec) as second:
        read_before_the_other_claimed = first.ledger.enqueued_tokens(spec.request.model)
        other_submitted: list[str] = []

        def stale_read(model: str) -> int:
            if not other_submitted:
                other_submitted.extend(second.submit(DAY).submitted_batch_ids)
            return read_before_the_other_claimed

        first.ledger.enqueued_tokens = stale_read
        submitted = first.submit(DAY)
        assert len(other_submitted) == 1 and submitted.submitted_batch_ids == []
        assert submitted.waiting_shards == len(tokens)  # one taken, two held back
        assert len(api.batches(spec.name)) == 1

        summary = second.run(DAY, poll_interval=0.2, timeout=60)
    assert nonzero(summary.counts) == {"succeeded": ROWS}
    assert len(api.batches(spec.name)) == len(tokens)


def test_a_collect_that_outlasts_the_lease_leaves_the_shard_to_the_process_that_took_it(
    tmp_path, api
):
    """A's download takes longer than its lease; B's poll takes the shard over, settles it and
    deletes the provider's files. A then writes nothing: no outcomes over B's, no retries of
    the answers it could no longer read (which would pay for them again)."""
    spec = PipelineSpec.from_yaml(
        write_spec(tmp_path, api.base_url, name="collect_lease", limits={})
    )
    now = [api.now()]
    taker = api.pipeline(spec, backend=api.backend(spec), clock=lambda: now[0])
    reports = []

    def outlast_the_lease(*args, **kwargs) -> None:
        if not reports:
            now[0] += LEASE_OUTLASTED
            reports.append(taker.poll())

    slow = Intercepted(api.backend(spec), download_file=outlast_the_lease)
    with api.pipeline(spec, backend=slow, clock=lambda: now[0]) as first:
        first.build_requests(DAY)
        (batch_id,) = first.submit(DAY).submitted_batch_ids
        deadline = api.now() + 30
        while not slow.retrieve_batch(batch_id).status.is_terminal:
            assert api.now() < deadline
            api.sleep(0.1)
        report = first.poll()
        assert report.collected_shards == 0 and report.retry_shards == 0  # B collected it
        assert reports[0].collected_shards == 1
        (shard,) = first.ledger.shards(spec.name)  # no retry shard was added
        assert shard.state.value == "collected" and shard.succeeded == ROWS
        summary = first.collect_results(DAY)
    assert nonzero(summary.counts) == {"succeeded": ROWS}
    assert len(api.batches(spec.name)) == 1


def test_a_create_not_found_right_after_its_upload_stops_instead_of_looping(tmp_path, api):
    """No batches endpoint at that URL, say: uploading again would not help, so the error
    reaches the caller (a poll's errors) instead of deferring the shard forever."""
    spec = PipelineSpec.from_yaml(write_spec(tmp_path, api.base_url, name="no_batches", limits={}))
    uploads: list[str] = []

    def no_batches_here(*, input_file_id: str, endpoint: str, metadata: dict) -> None:
        uploads.append(input_file_id)
        raise NotFound(
            "create a batch failed: HTTP 404 (not_found): no such route", status_code=404
        )

    backend = Intercepted(api.backend(spec), create_batch=no_batches_here)
    with api.pipeline(spec, backend=backend) as pipeline:
        pipeline.build_requests(DAY)
        with pytest.raises(NotFound):
            pipeline.submit(DAY)
        assert "no such route" in pipeline.poll().errors[0]
    assert len(uploads) == 2 and len(set(uploads)) == 1  # two creates, one upload


def test_a_create_refused_with_429_is_queued_again_and_its_rows_fail_after_the_last_try(
    tmp_path, api
):
    """A 429 answer means no batch was made: the shard goes back to the queue, as a new
    submission of the file already uploaded, waiting longer each time, and after the last
    submission its rows end failed with the provider's reason instead of being retried
    forever."""
    tuning = Tuning(requeue_backoff_seconds=0.05, max_submissions=3)
    spec = PipelineSpec.from_yaml(write_spec(tmp_path, api.base_url, name="busy", limits={}))
    inner = api.backend(spec)
    uploads: list[str] = []
    creates: list[str] = []

    def count_upload(path, filename) -> None:
        uploads.append(filename)

    def rate_limited(*, input_file_id: str, endpoint: str, metadata: dict) -> None:
        creates.append(input_file_id)
        raise TransientBackendError(
            "create a batch failed: HTTP 429 (rate_limit_exceeded): slow down", status_code=429
        )

    backend = Intercepted(inner, upload_file=count_upload, create_batch=rate_limited)
    with api.pipeline(spec, backend=backend, tuning=tuning) as pipeline:
        pipeline.build_requests(DAY)
        started = api.now()
        assert "HTTP 429" in pipeline.submit(DAY).waiting_reasons[0]
        (shard,) = pipeline.ledger.shards(spec.name)
        assert (shard.state.value, shard.submissions) == ("queued", 1)
        assert 0 < shard.not_before - started < 5
        assert "submission 1 refused" in shard.last_error
        summary = pipeline.run(DAY, poll_interval=0.05, timeout=60)
        (shard,) = pipeline.ledger.shards(spec.name)
    assert shard.submissions == 3 and len(creates) == 3
    assert len(uploads) == 1 and len(set(creates)) == 1  # one upload for every try
    results = pd.read_parquet(summary.path)
    assert len(results) == ROWS and set(results["status"]) == {"failed"}
    assert results["error_message"].str.contains("HTTP 429").all()
    assert api.batches(spec.name) == []
    assert not api.has_file(creates[0])  # the unused upload was tidied away


def test_a_try_cut_short_waits_longer_each_time_until_a_new_submission():
    waits = [submission.deferral_backoff_seconds(n) for n in range(1, 10)]
    assert waits == [5, 15, 60, 300, 600, 1200, 2400, 3600, 3600]


def test_each_try_cut_short_is_counted_and_waits_longer(tmp_path, api):
    """No answer, or a 5xx, may hide a batch that was made: the shard stays `submitting`
    (the next try looks for that batch first) and the wait grows with each such try."""
    tuning = Tuning(deferral_backoff_seconds=(0.05, 30.0))
    spec = PipelineSpec.from_yaml(write_spec(tmp_path, api.base_url, name="flaky", limits={}))

    def unavailable(*, input_file_id: str, endpoint: str, metadata: dict) -> None:
        raise TransientBackendError("create a batch failed: HTTP 503", status_code=503)

    backend = Intercepted(api.backend(spec), create_batch=unavailable)
    with api.pipeline(spec, backend=backend, tuning=tuning) as pipeline:
        pipeline.build_requests(DAY)
        pipeline.submit(DAY)
        api.sleep(0.1)
        before = api.now()
        assert "provider busy" in pipeline.submit(DAY).waiting_reasons[0]
        (shard,) = pipeline.ledger.shards(spec.name)
    assert (shard.state.value, shard.submissions, shard.deferrals) == ("submitting", 1, 2)
    assert 29 < shard.not_before - before < 31


@pytest.mark.parametrize("during", ["upload_file", "create_batch"])
def test_a_day_cancelled_while_a_shard_is_uploaded_pays_for_no_batch_of_it(tmp_path, api, during):
    """`cancel` cannot take a shard another process holds for its upload. The holder sees the
    cancel before it creates the batch (or, cancelled during the create, cancels the batch it
    made), and the shard's rows end `cancelled`."""
    spec = PipelineSpec.from_yaml(write_spec(tmp_path, api.base_url, name=f"cancel_{during}"))
    inner = api.backend(spec)
    cancelled: list[list[str]] = []

    def cancel_meanwhile(*args, **kwargs) -> None:
        if not cancelled:
            with api.pipeline(spec) as other:
                cancelled.append(other.cancel(DAY))

    cancels: list[str] = []
    backend = Intercepted(inner, **{during: cancel_meanwhile}, cancel_batch=cancels.append)
    with api.pipeline(spec, backend=backend) as pipeline:
        pipeline.build_requests(DAY)
        submitted = pipeline.submit(DAY)
        summary = pipeline.run(DAY, poll_interval=0.1, timeout=60)
    assert cancelled == [[]]  # the other process found nothing it could cancel itself
    batches = api.batches(spec.name)
    if during == "upload_file":
        assert submitted.submitted_batch_ids == [] and batches == []
    else:
        assert len(submitted.submitted_batch_ids) == 1
        assert cancels == submitted.submitted_batch_ids  # the creator cancelled its batch
        # The service may finish a batch of 4 before the cancel reaches it.
        assert [b.status for b in batches] in (["cancelled"], ["completed"])
    results = pd.read_parquet(summary.path).set_index("ticket_id")["status"]
    assert len(results) == ROWS and set(results.iloc[PER_FILE:]) == {"cancelled"}
    # The first shard's requests answered before the cancel keep their answers, as they
    # would on the provider; with no batch, all of them are cancelled.
    first = set(results.iloc[:PER_FILE])
    assert (
        first == {"cancelled"} if during == "upload_file" else first <= {"cancelled", "succeeded"}
    )


VANISHED_HOLDER = "another-host:4242:vanished"


def build_with_a_shard_held_elsewhere(pipeline: Pipeline):
    """Build DAY and let a process of another host (so not known to be dead) take its first
    shard for an upload, as if it then vanished; returns that shard."""
    name = pipeline.spec.name
    pipeline.build_requests(DAY)
    pipeline.ledger.queue_built(name, DAY, pipeline.get_partition(DAY).generation)
    held = pipeline.ledger.shards(name, partition=DAY)[0]
    assert pipeline.ledger.claim(
        held.shard_id,
        VANISHED_HOLDER,
        from_states=[ShardState.QUEUED],
        to_state=ShardState.SUBMITTING,
        lease_seconds=600,
        new_submission=True,
    )
    return held


def let_the_lease_run_out(pipeline: Pipeline, shard_id: str, now: float) -> None:
    assert pipeline.ledger.update_shard(shard_id, VANISHED_HOLDER, lease_expires_at=now - 1)


def test_a_cancelled_day_whose_uploader_vanished_settles_once_the_lease_runs_out(tmp_path, api):
    """A process on another host took a shard for its upload and vanished. `cancel` cannot
    take the shard while that lease runs; once it has run out, a poll settles the shard as
    `cancelled`, so the day settles and every row has its result."""
    spec = PipelineSpec.from_yaml(write_spec(tmp_path, api.base_url, name="cancel_vanished"))
    with api.pipeline(spec) as pipeline:
        held = build_with_a_shard_held_elsewhere(pipeline)
        assert pipeline.cancel(DAY) == []
        pipeline.poll()
        assert pipeline.get_partition(DAY).settled_at is None  # the lease still runs
        let_the_lease_run_out(pipeline, held.shard_id, api.now())
        pipeline.poll()
        assert pipeline.get_partition(DAY).settled_at is not None
        summary = pipeline.collect_results(DAY)
    results = pd.read_parquet(summary.path)
    assert len(results) == ROWS and set(results["status"]) == {"cancelled"}
    assert api.batches(spec.name) == []


def test_a_left_over_shard_that_cannot_be_settled_is_reported_and_the_poll_goes_on(tmp_path, api):
    """A cancelled day's left-over shard whose request file has gone cannot be settled: the
    poll reports it instead of raising, and the day waits, its other shards settled."""
    spec = PipelineSpec.from_yaml(write_spec(tmp_path, api.base_url, name="cancel_unreadable"))
    with api.pipeline(spec) as pipeline:
        held = build_with_a_shard_held_elsewhere(pipeline)
        pipeline.cancel(DAY)
        for path in (held.path, sharding.shard_ids_path(held.path)):
            pipeline.storage.local_path(path).unlink()
        let_the_lease_run_out(pipeline, held.shard_id, api.now())
        report = pipeline.poll()
        assert [e for e in report.errors if held.shard_id in e]
        assert pipeline.get_partition(DAY).settled_at is None
        states = {s.shard_id: s.state for s in pipeline.ledger.shards(spec.name, partition=DAY)}
        assert states.pop(held.shard_id) is ShardState.SUBMITTING
        assert set(states.values()) == {ShardState.COLLECTED}
