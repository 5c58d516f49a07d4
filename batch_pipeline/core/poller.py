"""One poll pass under a time budget, as a stream of events.

A pass refreshes every in-flight batch of a pipeline, collects the finished ones (making retry
shards), submits what is queued, settles the left-over shards of cancelled days, and marks
partitions whose every shard is collected. `PollPass.events` yields what happens as it happens
(as dagster-dbt's `materializations_from_batch_iter` does); `PollPass.report` sums it up.

Few batches are retrieved one by one; many are refreshed by listing pages of batches, so HTTP
calls grow with pages, not batches.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from batch_pipeline.core._threads import SerialWorker
from batch_pipeline.core.backends.base import BackendError
from batch_pipeline.core.batch_identity import CLOCK_SKEW_SECONDS
from batch_pipeline.core.cancellation import SHARD_ERRORS, Canceller
from batch_pipeline.core.collection import Collector
from batch_pipeline.core.ledger_records import PartitionRecord, ShardRecord
from batch_pipeline.core.submission import Submitter
from batch_pipeline.core.types import OPEN_STATES, BatchInfo, PollReport, ShardState
from batch_pipeline.core.worker import PipelineWorker

log = logging.getLogger(__name__)

RETRIEVE_ONE_BY_ONE_UP_TO = 5
LIST_PAGE_SIZE = 100
FINISHING_THREAD = "collect-finish"


@dataclass(frozen=True)
class BatchChanged:
    """A batch's status moved since the ledger last saw it."""

    batch_id: str
    status: str


@dataclass(frozen=True)
class ShardCollected:
    """A finished shard's outcomes were collected (with these retry shards made)."""

    shard_id: str
    retry_shard_ids: list[str]


@dataclass(frozen=True)
class BatchSubmitted:
    batch_id: str


@dataclass(frozen=True)
class PartitionSettled:
    """Every shard of the partition's current generation is collected."""

    partition: str


@dataclass(frozen=True)
class PollError:
    """A step that failed on this pass; the shards it hit are tried again on the next."""

    message: str


@dataclass(frozen=True)
class TimeBudgetUsedUp:
    """The pass stopped short of some work; the next pass goes on with it."""


PollEvent = (
    BatchChanged | ShardCollected | BatchSubmitted | PartitionSettled | PollError | TimeBudgetUsedUp
)


class PollPass(PipelineWorker):
    """Polls one pipeline: `events` for the stream, `report` for its sum."""

    def report(self, time_budget_seconds: float) -> PollReport:
        """Run one pass and sum it up, with what is left open after it."""
        events = list(self.events(time_budget_seconds))  # the pass runs to its end first
        return summarize(events, self.ledger.shards(self.spec.name, states=list(OPEN_STATES)))

    def events(self, time_budget_seconds: float) -> Iterator[PollEvent]:
        """One bounded pass; each step's events are yielded as it goes."""
        deadline = self._clock() + time_budget_seconds
        try:
            for batch in self.refresh(self.in_flight()):
                yield BatchChanged(batch.id, batch.status.value)
        except BackendError as exc:
            yield PollError(f"refreshing batches: {exc}")
        records = self.ledger.list_partitions(self.spec.name)
        yield from self._collect_finished(records, deadline)
        yield from self._submit_queued(deadline)
        canceller = self.sibling(Canceller)
        for record in records:
            if record.cancelled_at and record.built_at and not record.settled_at:
                yield from map(PollError, canceller.settle_left_over(record))
        collector = self.sibling(Collector)
        for record in self.ledger.list_partitions(self.spec.name):
            open_day = record.built_at is not None and record.settled_at is None
            if open_day and collector.settle_if_done(record.partition):
                yield PartitionSettled(record.partition)

    def _collect_finished(
        self, records: list[PartitionRecord], deadline: float
    ) -> Iterator[PollEvent]:
        """Collect each finished shard: one shard's outcome file is written (and uploaded, on a
        remote store) and the shard settled on a thread of its own, while the next shard's
        outcomes are downloaded and parsed; so a shard's `ShardCollected` comes once the next
        one is read. At most two shards' outcomes are in memory: the one being finished and
        the one being read (or queued behind it)."""
        collector = self.sibling(Collector)
        # Retries only serve a current generation that nobody cancelled.
        retrying = {(r.partition, r.generation) for r in records if not r.cancelled_at}
        # Every shard begun is queued for finishing before the pass yields, so a pass left
        # early still finishes (and lets go of) every shard it claimed.
        finishing = SerialWorker(FINISHING_THREAD, capacity=2, stop_on_failure=False)
        waiting: deque[ShardRecord] = deque()  # the shards queued there, in order

        def reported(up_to: int) -> Iterator[PollEvent]:
            """What the oldest queued shards came to, until at most `up_to` are queued."""
            while len(waiting) > up_to:
                yield from _finished(waiting.popleft(), finishing)

        try:
            for shard in self.finished():
                if self._clock() > deadline:
                    yield from reported(0)
                    yield TimeBudgetUsedUp()
                    break
                try:
                    begun = collector.begin(
                        shard, allow_retries=(shard.partition, shard.generation) in retrying
                    )
                except SHARD_ERRORS as exc:
                    yield from reported(0)  # the shards before it are reported first
                    yield _collect_error(shard, exc)
                    continue
                if begun is not None:
                    try:
                        finishing.submit(collector.finish, begun)
                    except BaseException:
                        collector.abandon(begun)
                        raise
                    waiting.append(shard)
                yield from reported(1)
            yield from reported(0)
        finally:
            finishing.settle()
            finishing.shutdown()

    def _submit_queued(self, deadline: float) -> Iterator[PollEvent]:
        try:
            summary = self.sibling(Submitter).submit_queued(deadline=deadline)
        except BackendError as exc:
            yield PollError(f"submitting: {exc}")
            return
        yield from map(BatchSubmitted, summary.submitted_batch_ids)
        if summary.timed_out:
            yield TimeBudgetUsedUp()

    # -- refresh ----------------------------------------------------------------------------

    def in_flight(self) -> list[ShardRecord]:
        """Submitted shards whose batch has not ended, as the ledger last saw it."""
        return [
            shard
            for shard in self.ledger.shards(self.spec.name, states=[ShardState.SUBMITTED])
            if shard.batch_status is None or not shard.batch_status.is_terminal
        ]

    def refresh(self, shards: list[ShardRecord]) -> list[BatchInfo]:
        """Fetch the current state of these shards' batches; returns those whose status moved."""
        wanted = {shard.batch_id: shard for shard in shards if shard.batch_id}
        if not wanted:
            return []
        fresh: dict[str, BatchInfo] = {}
        if len(wanted) > RETRIEVE_ONE_BY_ONE_UP_TO:
            oldest = min(shard.submitted_at or shard.created_at for shard in wanted.values())
            for batch in self.backend.iter_batches(
                created_after=int(oldest) - CLOCK_SKEW_SECONDS, page_size=LIST_PAGE_SIZE
            ):
                if batch.id in wanted:
                    fresh[batch.id] = batch
                    if len(fresh) == len(wanted):
                        break
        for batch_id in wanted.keys() - fresh.keys():
            fresh[batch_id] = self.backend.retrieve_batch(batch_id)
        return [batch for batch in fresh.values() if self.ledger.update_batch(batch)]

    def finished(self) -> list[ShardRecord]:
        """Shards whose batch has ended and whose outcomes are not collected yet."""
        return [
            shard
            for shard in self.ledger.shards(self.spec.name, states=[ShardState.SUBMITTED])
            if shard.batch_status is not None and shard.batch_status.is_terminal
        ]


def _finished(shard: ShardRecord, finishing: SerialWorker) -> Iterator[PollEvent]:
    """What finishing the collection of `shard` (the oldest task of `finishing`) came to."""
    try:
        outcome = finishing.take()
    except SHARD_ERRORS as exc:
        yield _collect_error(shard, exc)
        return
    if not outcome.taken_over:
        yield ShardCollected(shard.shard_id, outcome.retry_shard_ids)


def _collect_error(shard: ShardRecord, exc: BaseException) -> PollError:
    log.warning("collecting batch %s failed: %s", shard.batch_id, exc)
    return PollError(f"collecting {shard.batch_id} ({shard.shard_id}): {exc}")


def summarize(events: Iterable[PollEvent], open_shards: list[ShardRecord]) -> PollReport:
    """A pass's events summed up; `open_shards` are those left open after it."""
    changed: list[tuple[str, str]] = []
    submitted: list[str] = []
    errors: list[str] = []
    collected = retries = 0
    timed_out = False
    for event in events:
        match event:
            case BatchChanged(batch_id, status):
                changed.append((batch_id, status))
            case ShardCollected(_, retry_shard_ids):
                collected += 1
                retries += len(retry_shard_ids)
            case BatchSubmitted(batch_id):
                submitted.append(batch_id)
            case PollError(message):
                errors.append(message)
            case TimeBudgetUsedUp():
                timed_out = True
    in_flight = sum(1 for shard in open_shards if shard.state is ShardState.SUBMITTED)
    return PollReport(
        changed=changed,
        collected_shards=collected,
        retry_shards=retries,
        submitted_batch_ids=submitted,
        in_flight=in_flight,
        queued=len(open_shards) - in_flight,
        timed_out=timed_out,
        errors=errors,
    )
