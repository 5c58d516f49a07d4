"""The identity a provider batch carries, so a shard's batch can be found again after a crash."""

from __future__ import annotations

from batch_pipeline.core.backends.base import BatchBackend
from batch_pipeline.core.ledger_records import ShardRecord
from batch_pipeline.core.types import BatchInfo

SUBMISSION_METADATA_KEY = "batch_pipeline_submission"
CLOCK_SKEW_SECONDS = 900


def created_after(shard: ShardRecord) -> int:
    """A time before any batch or file made for the shard, allowing for clock skew."""
    return int(shard.created_at) - CLOCK_SKEW_SECONDS


def find_submitted_batch(backend: BatchBackend, shard: ShardRecord) -> BatchInfo | None:
    """The batch the shard's current submission made, if a process made one."""
    return backend.find_batch(
        metadata_key=SUBMISSION_METADATA_KEY,
        metadata_value=shard.submission_key,
        created_after=created_after(shard),
    )
