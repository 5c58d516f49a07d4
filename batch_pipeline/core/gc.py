"""Removing the intermediates of collected partitions, so a pipeline's storage does not grow
without end.

A partition's intermediates (`layout.intermediate_generation`: its request shards with their
ids files, its batches' downloaded files and outcome files) serve only while it is in flight
and until its results are written. Once its results were written more than
`output.keep_intermediates_days` ago, they are removed; its results, manifests, rejected rows
and ledger rows stay, and a rebuild works from the source as ever.

The ledger says which partitions are due: collected long enough ago, and not cleaned since
(`intermediates_removed_at`), so a pass lists the storage only for those. Files of a
generation are removed only when none of its shards is still open (queued, being submitted or
in a batch), and only up to the generation whose results were written: a rebuild started
meanwhile writes a newer generation, which is never touched.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from batch_pipeline.core.layout import intermediate_generation, partition_dirs
from batch_pipeline.core.ledger import Ledger, PartitionRecord
from batch_pipeline.core.spec import PipelineSpec
from batch_pipeline.core.storage import StorageRoot
from batch_pipeline.core.types import OPEN_STATES

log = logging.getLogger(__name__)

DAY_SECONDS = 86_400.0


@dataclass(frozen=True)
class CleanedPartition:
    """The intermediates of one partition that a pass removed (or, dry, would remove)."""

    partition: str
    generation: int
    files: list[str]  # storage keys
    bytes: int


@dataclass(frozen=True)
class GcReport:
    """What one pass did; `timed_out`: it stopped at its time budget, the next goes on."""

    dry_run: bool
    partitions: list[CleanedPartition] = field(default_factory=list)
    timed_out: bool = False

    @property
    def files(self) -> int:
        return sum(len(cleaned.files) for cleaned in self.partitions)

    @property
    def bytes(self) -> int:
        return sum(cleaned.bytes for cleaned in self.partitions)


class IntermediatesGc:
    """Removes the intermediates of one pipeline's partitions collected long enough ago."""

    def __init__(
        self,
        spec: PipelineSpec,
        ledger: Ledger,
        storage: StorageRoot,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.spec = spec
        self.ledger = ledger
        self.storage = storage
        self._clock = clock

    def run(
        self,
        *,
        dry_run: bool = False,
        partition: str | None = None,
        time_budget_seconds: float | None = None,
    ) -> GcReport:
        """Remove (with `dry_run`, only list) the intermediates of every due partition, or of
        `partition` alone if it is due; stops between partitions once the budget is spent."""
        started = time.monotonic()
        cleaned: list[CleanedPartition] = []
        for record in self.due():
            if partition is not None and record.partition != partition:
                continue
            if time_budget_seconds is not None and time.monotonic() - started > time_budget_seconds:
                return GcReport(dry_run, cleaned, timed_out=True)
            done = self.clean(record, dry_run=dry_run)
            if done.files:
                cleaned.append(done)
        return GcReport(dry_run, cleaned)

    def due(self) -> list[PartitionRecord]:
        """Partitions whose results were written more than `keep_intermediates_days` ago and
        whose intermediates have not been removed since."""
        cutoff = self._clock() - self.spec.output.keep_intermediates_days * DAY_SECONDS
        return [
            record
            for record in self.ledger.list_partitions(self.spec.name)
            if record.collected_at is not None
            and record.collected_at <= cutoff
            and record.intermediates_removed_at is None
        ]

    def clean(self, record: PartitionRecord, *, dry_run: bool = False) -> CleanedPartition:
        """Remove the intermediates of the partition's generations up to its collected one,
        but those of a generation still open; recorded in the ledger once none was left."""
        open_generations = {
            shard.generation
            for shard in self.ledger.shards(self.spec.name, partition=record.partition)
            if shard.state in OPEN_STATES
        }
        keys, sizes = [], 0
        for folder in partition_dirs(record.partition):
            for key in self.storage.list(folder):
                generation = intermediate_generation(key)
                if (
                    generation is None
                    or generation > record.generation
                    or generation in open_generations
                ):
                    continue
                keys.append(key)
                sizes += self._size(key)
        if not dry_run:
            for key in keys:
                self.storage.delete(key)
            if not open_generations & set(range(1, record.generation + 1)):
                self.ledger.mark_intermediates_removed(
                    self.spec.name, record.partition, record.generation
                )
            if keys:
                log.info(
                    "%s %s: removed %d intermediate files (%d bytes)",
                    self.spec.name,
                    record.partition,
                    len(keys),
                    sizes,
                )
        return CleanedPartition(record.partition, record.generation, keys, sizes)

    def _size(self, key: str) -> int:
        try:
            return self.storage.size(key)
        except FileNotFoundError:  # removed by another pass meanwhile
            return 0
