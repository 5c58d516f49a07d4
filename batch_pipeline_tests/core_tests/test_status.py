"""A partition's state, derived from its ledger rows alone."""

from __future__ import annotations

from dataclasses import fields
from typing import Any

import pytest

from batch_pipeline.core.ledger_records import PartitionRecord, ShardRecord
from batch_pipeline.core.status import awaits_submission, partition_state, partition_status
from batch_pipeline.core.types import PartitionState, ShardState

DAY = "2026-11-20"


def record(**given: Any) -> PartitionRecord:
    values: dict[str, Any] = {f.name: None for f in fields(PartitionRecord)}
    values |= {"pipeline": "tickets", "partition": DAY, "generation": 2}
    values |= {"source_rows": 5, "requests": 4, "rejected": 1, "built_at": 10.0}
    return PartitionRecord(**values | given)


def shard(index: int, state: ShardState, **given: Any) -> ShardRecord:
    values: dict[str, Any] = {f.name: None for f in fields(ShardRecord)}
    values |= {"shard_id": f"s{index}", "shard_index": index, "attempt": 1, "state": state}
    return ShardRecord(**values | given)


@pytest.mark.parametrize(
    ("partition", "states", "expected"),
    [
        (record(built_at=None), [], PartitionState.BUILDING),
        (record(), [ShardState.BUILT, ShardState.BUILT], PartitionState.BUILT),
        (record(), [ShardState.BUILT, ShardState.QUEUED], PartitionState.QUEUED),
        (record(), [ShardState.SUBMITTING, ShardState.COLLECTED], PartitionState.QUEUED),
        (record(), [], PartitionState.QUEUED),  # every row rejected, not settled yet
        (record(), [ShardState.QUEUED, ShardState.SUBMITTED], PartitionState.IN_FLIGHT),
        (record(settled_at=20.0), [ShardState.COLLECTED], PartitionState.SETTLED),
        (
            record(settled_at=20.0, collected_at=30.0),
            [ShardState.COLLECTED],
            PartitionState.COLLECTED,
        ),
    ],
)
def test_the_state_follows_the_record_then_its_shards(partition, states, expected) -> None:
    shards = [shard(i, state) for i, state in enumerate(states)]
    assert partition_state(partition, shards) is expected
    assert expected.is_settled == (expected in (PartitionState.SETTLED, PartitionState.COLLECTED))


def test_only_a_built_unsettled_day_with_nothing_asked_for_awaits_submission() -> None:
    built = [shard(0, ShardState.BUILT)]
    assert awaits_submission(record(), built)
    assert not awaits_submission(record(built_at=None), built)
    assert not awaits_submission(record(settled_at=20.0), built)
    assert not awaits_submission(record(), [*built, shard(1, ShardState.QUEUED)])


def test_the_status_counts_shards_by_state_and_shows_only_the_current_batches() -> None:
    shards = [
        shard(0, ShardState.SUBMITTED, batch_id="b1", last_error="provider busy"),
        shard(1, ShardState.QUEUED, last_error="token budget: in use"),
        shard(2, ShardState.QUEUED),
        shard(3, ShardState.COLLECTED, batch_id="b2", last_error="an old error"),
    ]
    batch = {"request_completed": 1, "request_failed": None, "request_total": 3}
    batches = [
        {"batch_id": "b0", "status": "completed", **batch},  # of an earlier generation
        {"batch_id": "b1", "status": "in_progress", **batch},
    ]
    status = partition_status(record(), shards, batches)
    assert status.state is PartitionState.IN_FLIGHT
    assert status.shards == {
        ShardState.SUBMITTED: 1,
        ShardState.QUEUED: 2,
        ShardState.COLLECTED: 1,
    }
    assert status.batches == [
        {
            "batch_id": "b1",
            "status": "in_progress",
            "attempt": 1,
            "expires_at": None,
            "completed": 1,
            "failed": 0,
            "total": 3,
        }
    ]
    assert status.waiting == ["s0: provider busy", "s1: token budget: in use"]
    assert (status.generation, status.requests, status.rejected) == (2, 4, 1)
