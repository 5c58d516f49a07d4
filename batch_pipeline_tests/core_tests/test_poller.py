"""One poll pass as a stream of events, on the in-memory Batch API."""

from __future__ import annotations

from datetime import datetime

from batch_pipeline.core.pipeline import Pipeline
from batch_pipeline.core.poller import (
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

DAY = "2026-11-20"


def tickets_pipeline(tmp_path, api: MemoryApi, rows: int = 3, **overrides) -> Pipeline:
    at = datetime(2026, 11, 20, 9)
    write_tickets(
        tmp_path / "tickets.parquet",
        [
            {"ticket_id": f"T{i}", "subject": f"Order {i}", "body": "late", "created_at": at}
            for i in range(rows)
        ],
    )
    spec = ticket_spec(tmp_path, api.base_url, **overrides)
    return api.pipeline(PipelineSpec.from_dict(spec, base_dir=tmp_path))


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
