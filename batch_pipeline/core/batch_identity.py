"""The identity a provider batch carries, so a shard's batch can be found again after a crash.

Where the provider keeps metadata (OpenAI, Azure), the batch carries `shard_id#submission`
in it. Where it keeps none (Anthropic), the identity travels in the batch's custom_ids, and
the ledger narrows the search: a candidate has the shard's request count and is not a batch
the ledger already knows (see `AnthropicBackend.find_batch`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from batch_pipeline.core.backends.base import BatchBackend
from batch_pipeline.core.ledger_records import ShardRecord
from batch_pipeline.core.types import BatchInfo

if TYPE_CHECKING:
    from batch_pipeline.core.ledger import Ledger

SUBMISSION_METADATA_KEY = "batch_pipeline_submission"
CLOCK_SKEW_SECONDS = 900


def created_after(shard: ShardRecord) -> int:
    """A time before any batch or file made for the shard, allowing for clock skew."""
    return int(shard.created_at) - CLOCK_SKEW_SECONDS


def find_submitted_batch(
    backend: BatchBackend, shard: ShardRecord, ledger: Ledger | None = None
) -> BatchInfo | None:
    """The batch the shard's current submission made, if a process made one."""
    if getattr(backend, "inline_requests", False):  # no metadata: narrowed by the ledger
        known = {row["batch_id"] for row in ledger.batches(shard.pipeline)} if ledger else set()
        return backend.find_batch(  # type: ignore[call-arg]
            metadata_key=SUBMISSION_METADATA_KEY,
            metadata_value=shard.submission_key,
            created_after=created_after(shard),
            requests=shard.rows,
            known=known,
        )
    return backend.find_batch(
        metadata_key=SUBMISSION_METADATA_KEY,
        metadata_value=shard.submission_key,
        created_after=created_after(shard),
    )
