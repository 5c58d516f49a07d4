"""A partition's state, derived from its ledger rows alone (pure functions, no I/O)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from batch_pipeline.core.ledger_records import PartitionRecord, ShardRecord
from batch_pipeline.core.types import PartitionState, PartitionStatus, ShardState


def partition_state(record: PartitionRecord, shards: Sequence[ShardRecord]) -> PartitionState:
    """Where the partition's current generation stands, from its record and its shards."""
    if record.collected_at is not None:
        return PartitionState.COLLECTED
    if record.settled_at is not None:
        return PartitionState.SETTLED
    if record.built_at is None:
        return PartitionState.BUILDING
    if any(shard.state is ShardState.SUBMITTED for shard in shards):
        return PartitionState.IN_FLIGHT
    if shards and awaits_submission(record, shards):
        return PartitionState.BUILT
    return PartitionState.QUEUED


def awaits_submission(record: PartitionRecord, shards: Sequence[ShardRecord]) -> bool:
    """Built, unsettled, and none of its shards asked for yet: nothing of it is paid for."""
    if record.built_at is None or record.settled_at is not None:
        return False
    return all(shard.state is ShardState.BUILT for shard in shards)


def partition_status(
    record: PartitionRecord, shards: Sequence[ShardRecord], batches: Sequence[dict[str, Any]]
) -> PartitionStatus:
    """The status of the partition's current generation: `shards` are its shards, `batches`
    the ledger's batches of the partition (those of other generations are left out)."""
    attempts = {shard.batch_id: shard.attempt for shard in shards if shard.batch_id}
    return PartitionStatus(
        pipeline=record.pipeline,
        partition=record.partition,
        generation=record.generation,
        state=partition_state(record, shards),
        source_rows=record.source_rows,
        requests=record.requests,
        rejected=record.rejected,
        shards=dict(Counter(shard.state for shard in shards)),
        batches=[
            _batch_progress(batch, attempts[batch["batch_id"]])
            for batch in batches
            if batch["batch_id"] in attempts
        ],
        waiting=[
            f"{shard.shard_id}: {shard.last_error}"
            for shard in shards
            if shard.last_error and shard.state is not ShardState.COLLECTED
        ],
        results_path=record.results_path,
    )


def _batch_progress(batch: dict[str, Any], attempt: int) -> dict[str, Any]:
    """A batch as `status` shows it: its rows' attempt (1 the first, then each retry), its
    progress, and when its completion window ends (None if the provider did not say)."""
    return {
        "batch_id": batch["batch_id"],
        "status": batch["status"],
        "attempt": attempt,
        "expires_at": batch.get("expires_at"),
        "completed": batch["request_completed"] or 0,
        "failed": batch["request_failed"] or 0,
        "total": batch["request_total"] or 0,
    }
