"""Idempotent submission: a shard becomes exactly one paid batch, whatever crashes on the way.

The ledger records the intent (state `submitting`, with a submission number) before anything is
uploaded, and the provider batch carries `shard_id#submission` in its metadata. A process that
takes over a shard whose holder died first looks for that batch (and for the uploaded file)
and adopts what it finds instead of paying for a second batch.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from batch_pipeline.core.backends.base import (
    BackendError,
    NotFound,
    ServiceUnreachable,
    TransientBackendError,
    cancel_or_read,
)
from batch_pipeline.core.batch_identity import (
    SUBMISSION_METADATA_KEY,
    created_after,
    find_submitted_batch,
)
from batch_pipeline.core.collection import Collector
from batch_pipeline.core.leases import dead_lease_owner, lease_is_free
from batch_pipeline.core.ledger import ShardRecord
from batch_pipeline.core.tuning import DEFAULT_TUNING, Tuning
from batch_pipeline.core.types import (
    BatchInfo,
    ShardState,
    ShardWait,
    SubmitSummary,
    WaitReason,
)
from batch_pipeline.core.worker import PipelineWorker

log = logging.getLogger(__name__)

RATE_LIMITED = 429
# Refusals that concern the whole pipeline (a wrong or unauthorised key), not one shard.
CONFIGURATION_STATUS_CODES = frozenset({401, 403})


@dataclass(frozen=True)
class SubmitOutcome:
    """What one submission attempt of one shard did."""

    shard_id: str
    batch: BatchInfo | None
    waiting: ShardWait | None = None  # why the shard is still queued, if it is
    adopted: bool = False
    refused: BackendError | None = None  # the provider will not take this shard as a batch
    cancelled: bool = False  # its day was cancelled while it was uploaded: settle it as such


def requeue_backoff_seconds(submissions: int, tuning: Tuning = DEFAULT_TUNING) -> float:
    """How long a shard whose `submissions`-th submission was turned away waits."""
    return tuning.requeue_backoff(submissions)


def deferral_backoff_seconds(deferrals: int, tuning: Tuning = DEFAULT_TUNING) -> float:
    """How long a shard waits after the `deferrals`-th try of one submission was cut short."""
    return tuning.deferral_backoff(deferrals)


def upload_filename(shard: ShardRecord) -> str:
    """A provider-side filename that identifies the shard, its content and its submission."""
    safe = shard.shard_id.replace(":", "_")
    return f"{safe}-{shard.sha256[:12]}-n{shard.submissions}.jsonl"


class Submitter(PipelineWorker):
    """Schedules and submits the queued shards of one pipeline, within the enqueued-token
    budget."""

    def submit_queued(
        self, partition: str | None = None, *, deadline: float | None = None
    ) -> SubmitSummary:
        """Submit the queued shards the token budget allows (built ones wait until asked
        for); shards not reached by `deadline` wait for the next pass."""
        collector = self.sibling(Collector)
        submitted: list[str] = []
        waiting: list[ShardWait] = []
        refused: list[str] = []
        for shard in self.submittable(partition):
            if deadline is not None and self._clock() > deadline:
                detail = "poll time budget used up"
                waiting.append(ShardWait(shard.shard_id, WaitReason.TIME_BUDGET, detail))
                continue
            outcome = self.submit(shard)
            if outcome.batch is not None:
                submitted.append(outcome.batch.id)
            elif outcome.refused is not None:
                collector.settle_refused(shard, outcome.refused)
                refused.append(f"{shard.shard_id}: {outcome.refused}")
            elif outcome.cancelled:
                collector.cancel_unsubmitted(shard)
                collector.settle_if_done(shard.partition)
            elif outcome.waiting:
                waiting.append(outcome.waiting)
        return SubmitSummary(
            pipeline=self.spec.name,
            partition=partition,
            submitted_batch_ids=submitted,
            in_flight_batch_ids=self._in_flight_batch_ids(partition),
            waiting=waiting,
            refused_reasons=refused,
        )

    def submittable(self, partition: str | None = None) -> list[ShardRecord]:
        """Queued and orphaned shards of current, uncancelled generations whose wait is over
        and whose lease is free, oldest first."""
        current = {
            record.partition: record
            for record in self.ledger.list_partitions(self.spec.name)
            if partition is None or record.partition == partition
        }
        now = self._clock()
        shards = []
        for shard in self.ledger.shards(
            self.spec.name, partition=partition, states=[ShardState.QUEUED, ShardState.SUBMITTING]
        ):
            record = current.get(shard.partition)
            if record is None or record.generation != shard.generation or record.cancelled_at:
                continue
            if shard.not_before and shard.not_before > now:
                continue
            if shard.state is ShardState.SUBMITTING and not lease_is_free(
                shard.lease_owner, shard.lease_expires_at, self.owner, now
            ):
                continue
            shards.append(shard)
        return sorted(shards, key=lambda s: (s.partition, s.attempt, s.shard_index))

    def _in_flight_batch_ids(self, partition: str | None) -> list[str]:
        return [
            shard.batch_id
            for shard in self.ledger.shards(
                self.spec.name, partition=partition, states=[ShardState.SUBMITTED]
            )
            if shard.batch_id and not (shard.batch_status and shard.batch_status.is_terminal)
        ]

    def submit(self, shard: ShardRecord) -> SubmitOutcome:
        """Try to turn one queued (or orphaned `submitting`) shard into a batch."""
        if waiting := self._budget_wait(shard):
            return SubmitOutcome(shard.shard_id, None, waiting=waiting)
        claimed = self._claim(shard)
        if claimed is None:  # another submitter took the shard, or the budget, first
            held = ShardWait(shard.shard_id, WaitReason.HELD, "held by another process")
            return SubmitOutcome(shard.shard_id, None, waiting=self._budget_wait(shard) or held)
        try:
            return self._submit_claimed(claimed, takeover=shard.state is ShardState.SUBMITTING)
        except ServiceUnreachable:
            # Not this shard's trouble: the command stops; the next one takes the shard over
            # (looking for a batch this try may have made first).
            self.ledger.release(claimed.shard_id, self.owner)
            raise
        except TransientBackendError as exc:
            if exc.status_code == RATE_LIMITED:  # an answer: no batch was made
                return self._requeue(claimed, exc)
            return self._defer(claimed, exc, WaitReason.PROVIDER_BUSY, f"provider busy: {exc}")
        except BackendError as exc:
            self.ledger.release(claimed.shard_id, self.owner)
            if _concerns_every_shard(exc):
                raise
            log.error("shard %s: the provider refused the batch: %s", claimed.shard_id, exc)
            return SubmitOutcome(claimed.shard_id, None, refused=exc)
        except BaseException:
            self.ledger.release(claimed.shard_id, self.owner)
            raise

    def _defer(
        self,
        shard: ShardRecord,
        exc: BackendError,
        reason: WaitReason,
        detail: str,
        **values: object,
    ) -> SubmitOutcome:
        """Leave the shard `submitting` for a later tick, which first looks for a batch this
        try may have made; the wait grows with each try cut short."""
        deferrals = shard.deferrals + 1
        retry_in = self.tuning.deferral_backoff(deferrals)
        self.ledger.update_shard(
            shard.shard_id,
            self.owner,
            deferrals=deferrals,
            not_before=self._clock() + retry_in,
            last_error=f"submission deferred: {exc}",
            lease_owner=None,
            lease_expires_at=None,
            **values,
        )
        log.warning("shard %s: %s; trying again in %.0f s", shard.shard_id, exc, retry_in)
        return SubmitOutcome(
            shard.shard_id, None, waiting=ShardWait(shard.shard_id, reason, detail)
        )

    def _requeue(self, shard: ShardRecord, exc: BackendError) -> SubmitOutcome:
        """A shard the provider turned away for now (429): back in the queue for a new
        submission of the file it uploaded, waiting longer each time; after
        `tuning.max_submissions` its rows fail instead."""
        if shard.submissions >= self.tuning.max_submissions:
            self.ledger.release(shard.shard_id, self.owner)
            log.error("shard %s: refused %d times: %s", shard.shard_id, shard.submissions, exc)
            return SubmitOutcome(shard.shard_id, None, refused=exc)
        retry_in = self.tuning.requeue_backoff(shard.submissions)
        if not self.ledger.update_shard(
            shard.shard_id,
            self.owner,
            state=ShardState.QUEUED,
            not_before=self._clock() + retry_in,
            last_error=f"submission {shard.submissions} refused: {exc}; queued again",
            lease_owner=None,
            lease_expires_at=None,
        ):
            return _submission_taken_over(shard)
        log.warning("shard %s: %s; queued again for %.0f s", shard.shard_id, exc, retry_in)
        busy = ShardWait(shard.shard_id, WaitReason.PROVIDER_BUSY, f"provider busy: {exc}")
        return SubmitOutcome(shard.shard_id, None, waiting=busy)

    def _cancel_batch_of_cancelled_day(self, shard: ShardRecord, batch: BatchInfo) -> None:
        log.warning(
            "shard %s: its day was cancelled; cancelling batch %s", shard.shard_id, batch.id
        )
        try:
            cancel_or_read(self.backend, batch.id)
        except BackendError as exc:  # the batch is recorded: a later cancel can still reach it
            log.warning("shard %s: batch %s was not cancelled: %s", shard.shard_id, batch.id, exc)

    def _day_cancelled(self, shard: ShardRecord) -> bool:
        record = self.ledger.get_partition(shard.pipeline, shard.partition)
        return (
            record is not None
            and record.generation == shard.generation
            and record.cancelled_at is not None
        )

    def _budget_wait(self, shard: ShardRecord) -> ShardWait | None:
        budget = self.spec.limits.enqueued_tokens
        if budget is None or shard.state is ShardState.SUBMITTING:
            return None
        enqueued = self.ledger.enqueued_tokens(shard.model)
        if enqueued and enqueued + shard.estimated_input_tokens > budget:
            return ShardWait(
                shard.shard_id,
                WaitReason.TOKEN_BUDGET,
                f"token budget: {enqueued:,} of {budget:,} enqueued tokens in use for "
                f"{shard.model}, this shard needs {shard.estimated_input_tokens:,}",
            )
        return None

    def _claim(self, shard: ShardRecord) -> ShardRecord | None:
        dead = dead_lease_owner(shard)
        if shard.state is ShardState.QUEUED:
            return self.ledger.claim(
                shard.shard_id,
                self.owner,
                from_states=[ShardState.QUEUED],
                to_state=ShardState.SUBMITTING,
                new_submission=True,
                dead_owner=dead,
                token_budget=self.spec.limits.enqueued_tokens,
            )
        return self.ledger.claim(
            shard.shard_id,
            self.owner,
            from_states=[ShardState.SUBMITTING],
            to_state=ShardState.SUBMITTING,
            dead_owner=dead,
        )

    def _submit_claimed(self, shard: ShardRecord, *, takeover: bool) -> SubmitOutcome:
        since = created_after(shard)
        if takeover:
            existing = find_submitted_batch(self.backend, shard, self.ledger)
            if existing is not None:
                return self._record(shard, existing, adopted=True)
        # A backend that sends the requests inline (Anthropic) stages them in the process
        # that creates the batch: an earlier process's staging is gone with it.
        file_id = None if getattr(self.backend, "inline_requests", False) else shard.file_id
        filename = upload_filename(shard)
        if file_id is None and takeover:
            found = self.backend.find_file(filename, created_after=since)
            file_id = found.id if found else None
        uploaded_now = file_id is None
        if uploaded_now:
            with self.storage.open_read(shard.path) as content:
                file_id = self.backend.upload_file(content, filename).id
        # An upload can outlast the lease. Renewing it here, in the statement that stores the
        # file, proves no other process took the shard over meanwhile to create a batch too.
        if not self.ledger.renew_lease(shard.shard_id, self.owner, file_id=file_id):
            return _submission_taken_over(shard)
        # A cancel cannot take a shard leased for its upload; the holder heeds it instead.
        if self._day_cancelled(shard):
            self.ledger.release(shard.shard_id, self.owner)
            log.info("shard %s: its day was cancelled during the upload", shard.shard_id)
            return SubmitOutcome(shard.shard_id, None, cancelled=True)
        try:
            batch = self.backend.create_batch(
                input_file_id=file_id,
                endpoint=shard.endpoint,
                metadata={
                    SUBMISSION_METADATA_KEY: shard.submission_key,
                    "batch_pipeline_pipeline": shard.pipeline,
                    "batch_pipeline_partition": shard.partition,
                },
            )
        except NotFound as exc:
            if uploaded_now or self.backend.find_file(filename, created_after=since):
                raise  # the file is there: the 404 is the endpoint's own (a wrong URL, say)
            # An upload of an earlier attempt expired or was deleted: upload it again.
            gone = f"input file gone: {exc}"
            return self._defer(shard, exc, WaitReason.INPUT_FILE_GONE, gone, file_id=None)
        return self._record(shard, batch)

    def _record(
        self, shard: ShardRecord, batch: BatchInfo, *, adopted: bool = False
    ) -> SubmitOutcome:
        """Attach the batch to the shard; a batch created here after another process took the
        shard over is cancelled, unless that process adopted it."""
        if self.ledger.record_batch(shard, batch, self.owner):
            verb = "adopted batch %s found on the provider" if adopted else "created batch %s"
            log.info("shard %s: " + verb, shard.submission_key, batch.id)
            if self._day_cancelled(shard):  # cancelled while the batch was being created
                self._cancel_batch_of_cancelled_day(shard, batch)
            return SubmitOutcome(shard.shard_id, batch, adopted=adopted)
        current = self.ledger.get_shard(shard.shard_id)
        if not adopted and (current is None or current.batch_id != batch.id):
            log.warning(
                "shard %s: another process took it over while batch %s was created; "
                "cancelling that batch",
                shard.shard_id,
                batch.id,
            )
            cancel_or_read(self.backend, batch.id)
        return _submission_taken_over(shard)


def _concerns_every_shard(exc: BackendError) -> bool:
    """A wrong URL or key, or a failure with no HTTP answer: not this shard's own refusal."""
    return (
        isinstance(exc, NotFound)
        or exc.status_code is None
        or exc.status_code in CONFIGURATION_STATUS_CODES
    )


def _submission_taken_over(shard: ShardRecord) -> SubmitOutcome:
    """What a submission that lost its lease to another process reports."""
    wait = ShardWait(shard.shard_id, WaitReason.TAKEN_OVER, "taken over by another process")
    return SubmitOutcome(shard.shard_id, None, waiting=wait)
