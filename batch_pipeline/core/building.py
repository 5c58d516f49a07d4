"""Building a partition's requests once, whichever process gets there first.

A build is claimed in the ledger (a lease on the partition's generation, renewed by a
heartbeat while the rows are read); another process building the same generation is waited
for, not raced, and a finished build is reused rather than paid for twice.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from batch_pipeline.core.collection import Collector
from batch_pipeline.core.leases import DEFAULT_LEASE_SECONDS, lease_holder_is_dead
from batch_pipeline.core.ledger_records import PartitionRecord
from batch_pipeline.core.partition import Partition
from batch_pipeline.core.sharding import Manifest, build_partition_requests, load_manifest
from batch_pipeline.core.sources import Source
from batch_pipeline.core.spec import PipelineSpec
from batch_pipeline.core.status import awaits_submission
from batch_pipeline.core.types import PipelineError, RequestsSummary
from batch_pipeline.core.worker import PipelineWorker

log = logging.getLogger(__name__)

REBUILD_HINT = "`batch-pipeline run --rebuild`, or a Dagster run tagged batch_pipeline/rebuild=true"


def spec_change_note(spec: PipelineSpec, record: PartitionRecord | None) -> str | None:
    """One line saying that the partition's current generation was built with another request
    than the spec makes now (and how to send the new one); None when it was not, or when the
    ledger does not know (a build by a version that kept no fingerprint)."""
    if record is None or record.request_fingerprint in (None, spec.request.fingerprint):
        return None
    return (
        f"{record.partition} generation {record.generation} of {spec.name} was built with "
        "another request than the spec makes now (its endpoint, model, system, prompt or "
        "params changed), so its results answer the old one; rebuild it to send the new "
        f"one ({REBUILD_HINT})"
    )


class Builder(PipelineWorker):
    """Builds the requests of one pipeline's partitions from `source` (`sleep`: how a wait
    for another process's build passes)."""

    def __init__(
        self,
        *args: Any,
        source: Source,
        sleep: Callable[[float], None],
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.source = source
        self._sleep = sleep

    def build(self, day: str | Partition, *, rebuild: bool = False) -> RequestsSummary:
        """Validate the partition's rows and write its JSONL shards; nothing is paid for here.

        The current generation is reused when it is already built, whatever its state, so
        building a day again never pays for it twice; `rebuild=True` starts a new one, unless
        the day is still in flight (PipelineError: its batches would be paid for again; cancel
        it first, or wait until it settles).
        """
        day = self.spec.partitioning.of(day)  # before the ledger records anything of it
        partition = day.key
        if rebuild:
            self._check_rebuild(partition)
        generation = self.ledger.start_generation(self.spec.name, partition, rebuild=rebuild)
        built = self._wait_for_build_or_claim(day, generation)
        if built:
            manifest = load_manifest(self.storage, partition, generation, 1)
            summary = self._requests_summary(manifest, already_built=True)
            return replace(
                summary,
                spec_changed=spec_change_note(
                    self.spec, self.ledger.get_partition(self.spec.name, partition)
                ),
            )
        try:
            manifest = build_partition_requests(
                self.spec,
                day,
                self.storage,
                generation=generation,
                source=self.source,
                heartbeat=self._build_heartbeat(partition, generation),
            )
        except BaseException:
            self.ledger.release_build(self.spec.name, partition, generation, self.owner)
            raise
        self.ledger.record_build(
            self.spec.name,
            partition,
            generation,
            source_rows=manifest.source_rows,
            requests=manifest.requests,
            rejected=manifest.rejected,
            shards=manifest.shards,
            request_fingerprint=self.spec.request.fingerprint,
        )
        self.sibling(Collector).settle_if_done(partition)
        for note in manifest.notes:
            log.warning("%s %s: %s", self.spec.name, partition, note)
        return self._requests_summary(manifest, already_built=False)

    def _check_rebuild(self, partition: str) -> None:
        """Refuse a new generation of a day whose batches are paid for and not yet finished."""
        record = self.ledger.get_partition(self.spec.name, partition)
        if (
            record is not None
            and record.is_in_flight
            and record.cancelled_at is None
            and not self._awaits_submission(record)
        ):
            raise PipelineError(
                f"{partition} of {self.spec.name} is still in flight (generation "
                f"{record.generation}): cancel it first (batch-pipeline cancel), or wait until "
                "it settles, before building it afresh"
            )

    def _wait_for_build_or_claim(self, day: Partition, generation: int) -> bool:
        """True once the generation is built (by anyone); False when this process claimed the
        right to build it. Another process building it is waited for, not raced."""
        partition = day.key
        while True:
            record = self.partition_record(day)
            if record.built_at is not None:
                return True
            dead = record.build_owner if lease_holder_is_dead(record.build_owner) else None
            if self.ledger.claim_build(
                self.spec.name, partition, generation, self.owner, dead_owner=dead
            ):
                return False
            self._sleep(self.tuning.build_wait_seconds)

    def _build_heartbeat(self, partition: str, generation: int) -> Callable[[], None]:
        """Renews this process's claim on a build once a third of its lease has passed; raises
        PipelineError if another process took it over (the lease ran out meanwhile)."""
        renewed = [self._clock()]

        def heartbeat() -> None:
            if self._clock() - renewed[0] < DEFAULT_LEASE_SECONDS / 3:
                return
            if not self.ledger.claim_build(self.spec.name, partition, generation, self.owner):
                raise PipelineError(
                    f"partition {partition}: another process took over building generation "
                    f"{generation} while this one ran past its lease; its build stands"
                )
            renewed[0] = self._clock()

        return heartbeat

    def _requests_summary(self, manifest: Manifest, *, already_built: bool) -> RequestsSummary:
        return RequestsSummary(
            pipeline=self.spec.name,
            partition=manifest.partition,
            generation=manifest.generation,
            source_rows=manifest.source_rows,
            requests=manifest.requests,
            rejected=manifest.rejected,
            shards=len(manifest.shards),
            bytes=sum(s.bytes for s in manifest.shards),
            estimated_input_tokens=sum(s.estimated_input_tokens for s in manifest.shards),
            estimated_cost_live_usd=manifest.estimated_cost_live_usd,
            estimated_cost_batch_usd=manifest.estimated_cost_batch_usd,
            manifest_path=self.storage.uri(manifest.path),
            already_built=already_built,
            rows_without_day=manifest.rows_without_day,
            notes=manifest.notes,
        )

    def _awaits_submission(self, record: PartitionRecord) -> bool:
        shards = self.ledger.shards(
            self.spec.name, partition=record.partition, generation=record.generation
        )
        return awaits_submission(record, shards)
