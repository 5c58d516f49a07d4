"""One poll pass as a stream of events, on the in-memory Batch API."""

from __future__ import annotations

import threading
from datetime import datetime

from batch_pipeline.core.backends.base import BackendError
from batch_pipeline.core.pipeline import Pipeline
from batch_pipeline.core.poller import (
    FINISHING_THREAD,
    BatchChanged,
    BatchSubmitted,
    PartitionSettled,
    PollPass,
    ShardCollected,
    TimeBudgetUsedUp,
)
from batch_pipeline.core.spec import PipelineSpec
from batch_pipeline.core.submission import Submitter
from batch_pipeline.core.types import PartitionState, ShardState, WaitReason
from batch_pipeline_tests.batch_apis import MemoryApi
from batch_pipeline_tests.conftest import ticket_spec, write_tickets
from batch_pipeline_tests.core_tests.test_submission_recovery import Intercepted

DAY = "2026-11-20"


def tickets_pipeline(
    tmp_path, api: MemoryApi, rows: int = 3, backend=None, **overrides
) -> Pipeline:
    """A pipeline over `rows` tickets of DAY (`backend`: in place of the API's own)."""
    at = datetime(2026, 11, 20, 9)
    write_tickets(
        tmp_path / "tickets.parquet",
        [
            {"ticket_id": f"T{i}", "subject": f"Order {i}", "body": "late", "created_at": at}
            for i in range(rows)
        ],
    )
    spec = ticket_spec(tmp_path, api.base_url, **overrides)
    options = {} if backend is None else {"backend": backend}
    return api.pipeline(PipelineSpec.from_dict(spec, base_dir=tmp_path), **options)


def test_a_pass_yields_each_step_as_it_happens_in_order(tmp_path, memory_api) -> None:
    with tickets_pipeline(tmp_path, memory_api) as pipeline:
        pipeline.build_requests(DAY)
        [batch_id] = pipeline.submit(DAY).submitted_batch_ids
        memory_api.sleep(10)  # past the completion window
        events = pipeline._worker(PollPass).events(time_budget_seconds=40)
        first = next(events)
        assert first == BatchChanged(batch_id, "completed")
        # Nothing collected before it is asked for: the pass is lazy.
        assert pipeline.ledger.shards("tickets")[0].state is ShardState.SUBMITTED
        rest = list(events)
        assert [type(event) for event in rest] == [ShardCollected, PartitionSettled]
        assert rest[0].retry_shard_ids == []
        assert rest[1] == PartitionSettled(DAY)
        assert pipeline.status(DAY)[0].state is PartitionState.SETTLED


def test_a_spent_time_budget_leaves_the_work_for_the_next_pass(tmp_path, memory_api) -> None:
    with tickets_pipeline(tmp_path, memory_api) as pipeline:
        pipeline.build_requests(DAY)
        pipeline.submit(DAY)
        memory_api.sleep(10)
        spent = pipeline.poll(time_budget_seconds=-1)
        assert (spent.timed_out, spent.collected_shards) == (True, 0)
        assert spent.changed and spent.in_flight == 1
        report = pipeline.poll(time_budget_seconds=40)
        assert (report.timed_out, report.collected_shards, report.in_flight) == (False, 1, 0)


def test_a_queued_shard_past_the_deadline_waits_for_the_time_budget(tmp_path, memory_api):
    with tickets_pipeline(tmp_path, memory_api) as pipeline:
        pipeline.build_requests(DAY)
        record = pipeline.get_partition(DAY)
        pipeline.ledger.queue_built("tickets", DAY, record.generation)
        submitter = pipeline._worker(Submitter)
        summary = submitter.submit_queued(deadline=memory_api.now() - 1)
        assert [wait.reason for wait in summary.waiting] == [WaitReason.TIME_BUDGET]
        assert summary.timed_out and summary.submitted_batch_ids == []
        assert summary.waiting_reasons == [
            f"{summary.waiting[0].shard_id}: poll time budget used up"
        ]
        events = list(pipeline._worker(PollPass).events(time_budget_seconds=-1))
        assert events == [TimeBudgetUsedUp()]
        events = list(pipeline._worker(PollPass).events(time_budget_seconds=40))
        assert [type(event) for event in events] == [BatchSubmitted]


def three_finished_shards(tmp_path, api: MemoryApi, backend=None) -> Pipeline:
    """A pipeline whose three shards (one ticket each) have finished batches."""
    pipeline = tickets_pipeline(tmp_path, api, backend=backend, limits={"max_requests_per_file": 1})
    pipeline.build_requests(DAY)
    assert len(pipeline.submit(DAY).submitted_batch_ids) == 3
    api.sleep(10)  # past the completion window
    return pipeline


def outcome_writes(storage, hook):
    """`storage`, except that writing an outcome file first runs `hook(key)`."""

    def before_write(rel: str, **options) -> None:
        if rel.endswith("outcomes.parquet"):
            hook(rel)

    return Intercepted(storage, atomic_write=before_write)


def test_a_shards_outcome_file_is_written_while_the_next_shard_is_downloaded(
    tmp_path, memory_api
) -> None:
    """Collecting overlaps: the first shard's outcome file is written on a thread of its own,
    and the writing can wait for the next shard's download, so an upload to a remote store
    does not hold up the reading of the next shard."""
    downloads: list[str] = []
    next_shard_downloaded = threading.Event()
    writes: list[tuple[str, bool]] = []

    def on_download(file_id: str, dest) -> None:
        downloads.append(file_id)
        if len(downloads) == 2:
            next_shard_downloaded.set()

    def on_write(key: str) -> None:
        waited = not writes and next_shard_downloaded.wait(timeout=20)
        writes.append((threading.current_thread().name, waited))

    backend = Intercepted(memory_api.service, download_file=on_download)
    with three_finished_shards(tmp_path, memory_api, backend=backend) as pipeline:
        pipeline.storage = outcome_writes(pipeline.storage, on_write)
        report = pipeline.poll()
        assert (report.collected_shards, report.errors) == (3, [])
        assert writes[0][1], "the first outcome file waited in vain for the next download"
        assert all(name.startswith(FINISHING_THREAD) for name, _ in writes)
        summary = pipeline.collect_results(DAY)
    assert summary.counts["succeeded"] == summary.rows == 3


def test_a_shard_whose_outcome_file_fails_is_let_go_and_the_others_are_collected(
    tmp_path, memory_api
) -> None:
    failures = ["disk full"]

    def refuse_once(key: str) -> None:
        if failures:
            raise OSError(failures.pop())

    with three_finished_shards(tmp_path, memory_api) as pipeline:
        pipeline.storage = outcome_writes(pipeline.storage, refuse_once)
        report = pipeline.poll()
        assert report.collected_shards == 2
        [error] = report.errors
        [left] = [
            s for s in pipeline.ledger.shards("tickets") if s.state is not ShardState.COLLECTED
        ]
        assert left.shard_id in error and "disk full" in error
        assert left.state is ShardState.SUBMITTED and left.lease_owner is None
        assert pipeline.poll().collected_shards == 1  # at once: no lease to wait out
        summary = pipeline.collect_results(DAY)
    assert summary.counts["succeeded"] == summary.rows == 3


def test_a_pass_left_after_its_first_event_holds_no_shard(tmp_path, memory_api) -> None:
    """The shard queued behind the one reported is finished too; the third is not begun; none
    stays claimed, so the next pass takes the rest at once."""
    with three_finished_shards(tmp_path, memory_api) as pipeline:
        events = pipeline._worker(PollPass).events(time_budget_seconds=40)
        assert isinstance(
            next(e for e in events if not isinstance(e, BatchChanged)), ShardCollected
        )
        events.close()
        shards = pipeline.ledger.shards("tickets")
        assert [s.lease_owner for s in shards] == [None] * 3
        states = sorted(s.state.value for s in shards)
        assert states == ["collected", "collected", "submitted"]
        assert pipeline.poll().collected_shards == 1
        summary = pipeline.collect_results(DAY)
    assert summary.counts["succeeded"] == summary.rows == 3


def test_a_shard_that_cannot_be_read_is_reported_in_its_place_between_the_others(
    tmp_path, memory_api
) -> None:
    """The second shard's download fails: its error comes after the first shard's collection
    and before the third's, as the work was done."""
    downloads: list[str] = []

    def fail_the_second(file_id: str, dest) -> None:
        downloads.append(file_id)
        if len(downloads) == 2:
            raise BackendError("download failed: connection reset")

    backend = Intercepted(memory_api.service, download_file=fail_the_second)
    with three_finished_shards(tmp_path, memory_api, backend=backend) as pipeline:
        events = list(pipeline._worker(PollPass).events(time_budget_seconds=40))
        kinds = [type(e).__name__ for e in events if not isinstance(e, BatchChanged)]
        assert kinds == ["ShardCollected", "PollError", "ShardCollected"]
        assert "connection reset" in events[-2].message
        assert pipeline.poll().collected_shards == 1
