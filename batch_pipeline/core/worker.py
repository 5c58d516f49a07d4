"""What every engine step of a pipeline works with: its spec, ledger, backend and storage."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

from batch_pipeline.core.backends.base import BatchBackend
from batch_pipeline.core.ledger import Ledger, PartitionRecord
from batch_pipeline.core.partition import Partition
from batch_pipeline.core.spec import PipelineSpec
from batch_pipeline.core.storage import StorageRoot
from batch_pipeline.core.tuning import DEFAULT_TUNING, Tuning
from batch_pipeline.core.types import PipelineError

WorkerT = TypeVar("WorkerT", bound="PipelineWorker")


class PipelineWorker:
    """Base of the engine's steps; `owner` names this process in the ledger's leases,
    `tuning` holds its backoffs and limits."""

    def __init__(
        self,
        spec: PipelineSpec,
        ledger: Ledger,
        backend: BatchBackend,
        storage: StorageRoot,
        owner: str,
        *,
        clock: Callable[[], float] = time.time,
        tuning: Tuning = DEFAULT_TUNING,
    ) -> None:
        self.spec = spec
        self.ledger = ledger
        self.backend = backend
        self.storage = storage
        self.owner = owner
        self._clock = clock
        self.tuning = tuning

    def sibling(self, kind: type[WorkerT]) -> WorkerT:
        """Another step of the same pipeline, working with the same parts."""
        parts = (self.spec, self.ledger, self.backend, self.storage, self.owner)
        return kind(*parts, clock=self._clock, tuning=self.tuning)

    def partition_record(self, partition: str | Partition) -> PartitionRecord:
        """The ledger's record of the partition's current generation (see `require_partition`)."""
        return require_partition(self.ledger, self.spec.name, partition)


def require_partition(ledger: Ledger, pipeline: str, partition: str | Partition) -> PartitionRecord:
    """The ledger's record of the partition's current generation (PipelineError if it was
    never built; ValueError if a key names no day)."""
    partition = Partition.of(partition)
    record = ledger.get_partition(pipeline, partition.key)
    if record is None:
        raise PipelineError(f"partition {partition} of {pipeline} has not been built")
    return record
