"""Cancelling a partition: its running batches cancelled, its unsubmitted shards settled as
`cancelled`, so the day settles and its results say so row by row."""

from __future__ import annotations

import logging

from batch_pipeline.core.backends.base import (
    BackendError,
    TransientBackendError,
    cancel_or_read,
)
from batch_pipeline.core.collection import Collector
from batch_pipeline.core.ledger_records import PartitionRecord
from batch_pipeline.core.outcomes import OutcomeFileError
from batch_pipeline.core.types import BatchInfo, BatchStatus, PipelineError, ShardState
from batch_pipeline.core.worker import PipelineWorker

log = logging.getLogger(__name__)

# What collecting or settling one shard may raise without the others having to stop.
SHARD_ERRORS = (BackendError, OutcomeFileError, OSError)
UNSUBMITTED_STATES = (ShardState.BUILT, ShardState.QUEUED, ShardState.SUBMITTING)


class Canceller(PipelineWorker):
    """Cancels partitions of one pipeline."""

    def cancel(self, record: PartitionRecord) -> list[str]:
        """Cancel the generation's batches; queued shards are not submitted. Returns the ids
        of the batches cancelled (or being cancelled)."""
        self.ledger.mark_cancelled(self.spec.name, record.partition, record.generation)
        cancelled = []
        collector = self.sibling(Collector)
        for shard in self.ledger.shards(
            self.spec.name, partition=record.partition, generation=record.generation
        ):
            if (
                shard.state is ShardState.SUBMITTED
                and shard.batch_id
                and not (shard.batch_status and shard.batch_status.is_terminal)
            ):
                batch = self._cancel_batch(shard.batch_id)
                self.ledger.update_batch(batch)
                if batch.status in (BatchStatus.CANCELLING, BatchStatus.CANCELLED):
                    cancelled.append(shard.batch_id)
            elif shard.state in UNSUBMITTED_STATES:
                try:
                    collector.cancel_unsubmitted(shard)
                except TransientBackendError as exc:  # settled by a later poll's left-overs
                    log.warning("shard %s: not settled yet: %s", shard.shard_id, exc)
        collector.settle_if_done(record.partition)
        return cancelled

    def settle_left_over(self, record: PartitionRecord) -> list[str]:
        """Settle as cancelled the unsubmitted shards of a cancelled day that another process
        held when the cancel came (an upload under way), once it lets go or its lease runs
        out: no one submits them any more, so the day would never settle. Returns errors."""
        collector = self.sibling(Collector)
        errors = []
        for shard in self.ledger.shards(
            self.spec.name,
            partition=record.partition,
            generation=record.generation,
            states=list(UNSUBMITTED_STATES),
        ):
            try:
                collector.cancel_unsubmitted(shard)
            except SHARD_ERRORS as exc:
                errors.append(f"cancelling {shard.shard_id}: {exc}")
                log.warning("cancelling shard %s failed: %s", shard.shard_id, exc)
        return errors

    def _cancel_batch(self, batch_id: str) -> BatchInfo:
        try:
            return cancel_or_read(self.backend, batch_id)
        except TransientBackendError as exc:
            raise PipelineError(f"cancelling batch {batch_id}: {exc}") from exc
