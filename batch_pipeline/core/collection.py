"""Collection and settlement: a finished batch's outcomes downloaded and settled, a shard that
never became a batch settled for good, and a partition marked settled once all its shards are.

Collecting a finished batch downloads its output and error files, turns them into one outcome
row per request (a request with no line in either file gets a retryable `missing_result`
outcome, so nothing is lost), and writes a retry shard for the retryable rows while attempts
remain.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from batch_pipeline.core._shard_ids import expected_ids
from batch_pipeline.core.backends.base import (
    BackendError,
    NotFound,
    cancel_or_read,
    is_transient_batch_failure,
)
from batch_pipeline.core.batch_identity import find_submitted_batch
from batch_pipeline.core.layout import BATCH_FILES, batch_dir, batch_file_path, outcomes_path
from batch_pipeline.core.leases import dead_lease_owner
from batch_pipeline.core.ledger_records import ShardRecord
from batch_pipeline.core.outcomes import OUTCOME_SCHEMA, parse_outcomes, write_outcome_file
from batch_pipeline.core.sharding import iter_request_lines, write_retry_shards
from batch_pipeline.core.storage import StorageRoot, StoredFile, scratch_for
from batch_pipeline.core.typed_outputs import judge_outcomes
from batch_pipeline.core.types import BatchInfo, BatchStatus, RowStatus, ShardState
from batch_pipeline.core.worker import PipelineWorker

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CollectOutcome:
    """What collecting one shard did (a requeued batch counts nothing)."""

    shard_id: str
    succeeded: int
    failed: int
    retried: int
    retry_shard_ids: list[str]
    taken_over: bool = False  # the lease ran out first: another process settles the shard


def shard_batch_dir(shard: ShardRecord) -> str:
    """Where a shard's downloaded output/error files and its outcomes live in storage."""
    return batch_dir(shard.partition, shard.generation, shard.attempt, shard.shard_index)


class Collector(PipelineWorker):
    """Collects and settles the shards of one pipeline, and settles its partitions."""

    def settle_if_done(self, partition: str) -> bool:
        """Mark the partition settled when every shard of its generation is collected."""
        record = self.ledger.get_partition(self.spec.name, partition)
        if record is None or record.built_at is None or record.settled_at is not None:
            return False
        shards = self.ledger.shards(
            self.spec.name, partition=partition, generation=record.generation
        )
        if any(shard.state is not ShardState.COLLECTED for shard in shards):
            return False
        return self.ledger.mark_settled(self.spec.name, partition, record.generation)

    def settle_refused(self, shard: ShardRecord, refusal: BackendError) -> None:
        """A shard the provider will not take as a batch (its request file refused): each of
        its rows ends `failed` with the provider's reason, and the partition can settle."""
        self.settle_unsubmitted(
            shard,
            status=RowStatus.FAILED,
            code=refusal.code or f"http_{refusal.status_code}",
            message=f"the provider refused the batch: {refusal}",
        )
        self.settle_if_done(shard.partition)

    # -- collect ----------------------------------------------------------------------------

    def begin(self, shard: ShardRecord, *, allow_retries: bool = True) -> Collecting | None:
        """Collecting a finished shard, first half: claim it, then download, parse and judge
        its batch's outcomes. `finish` does the rest (writes the outcome file, settles and lets
        go of the shard); it may run on another thread while this one begins the next shard,
        so that writing (and uploading) one shard's outcomes overlaps reading the next. None if
        another process holds the shard."""
        claimed = self.ledger.claim(
            shard.shard_id,
            self.owner,
            from_states=[ShardState.SUBMITTED],
            to_state=ShardState.SUBMITTED,
            dead_owner=dead_lease_owner(shard),
        )
        if claimed is None:
            return None
        try:
            batch = self.backend.retrieve_batch(claimed.batch_id)
            self.ledger.update_batch(batch)
            # A batch that never ran is submitted again, unless its day was cancelled or
            # rebuilt meanwhile (no one would submit it) or it failed so too many times: it is
            # settled as it stands then.
            if (
                allow_retries
                and is_transient_batch_failure(batch)
                and claimed.submissions < self.tuning.max_submissions
            ):
                return Collecting(claimed, batch, self._requeue(claimed, batch))
            outcomes, order = self._outcomes(claimed, batch)
            judged = self._judge(claimed, outcomes, allow_retries=allow_retries, order=order)
            return Collecting(claimed, batch, judged or _collection_taken_over(claimed))
        except BaseException:
            self._let_go(claimed)
            raise

    def finish(self, begun: Collecting) -> CollectOutcome:
        """Collecting a finished shard, second half: write the outcome file, mark the shard
        collected (with its retry shards), tidy the downloads and the provider's files, and
        release the shard (also on an error)."""
        batch, result = begun.batch, begun.result
        try:
            if isinstance(result, CollectOutcome):
                outcome = result
                done_with = [batch.input_file_id]  # a batch queued again uploads it afresh
            else:
                outcome = self._record(result)
                done_with = [batch.input_file_id, batch.output_file_id, batch.error_file_id]
                if not outcome.taken_over:
                    self._delete_downloads(shard_batch_dir(begun.shard))
            if not outcome.taken_over:  # else the other process may still be reading them
                self._delete_provider_files(*done_with)
            return outcome
        finally:
            self._let_go(begun.shard)

    def abandon(self, begun: Collecting) -> None:
        """Let go of a begun shard without settling it: the next pass collects it afresh."""
        self._let_go(begun.shard)

    def _let_go(self, shard: ShardRecord) -> None:
        self.ledger.release(shard.shard_id, self.owner)
        # A shard's files pass through Arrow's allocator, which keeps freed pages for reuse:
        # hand them back, so a long-lived sensor process does not keep the peak.
        pa.default_memory_pool().release_unused()

    def cancel_unsubmitted(self, shard: ShardRecord) -> bool:
        """Settle a shard that never became a batch as `cancelled`; a batch that a crashed
        process did create is found through its metadata and cancelled instead."""
        return self.settle_unsubmitted(
            shard,
            status=RowStatus.CANCELLED,
            code="batch_cancelled",
            message="cancelled before it was submitted",
        )

    def settle_unsubmitted(
        self, shard: ShardRecord, *, status: RowStatus, code: str, message: str
    ) -> bool:
        """Settle a shard that never became a batch: each of its requests gets an outcome of
        this status, for good. A batch that a crashed process did create is found through its
        metadata and cancelled instead. False if another process holds the shard."""
        claimed = self.ledger.claim(
            shard.shard_id,
            self.owner,
            from_states=[ShardState.BUILT, ShardState.QUEUED, ShardState.SUBMITTING],
            to_state=ShardState.SUBMITTING,
            dead_owner=dead_lease_owner(shard),
        )
        if claimed is None:
            return False
        try:
            if shard.state is ShardState.SUBMITTING and claimed.submissions:
                found = find_submitted_batch(self.backend, claimed, self.ledger)
                if found is not None:
                    self.ledger.record_batch(claimed, found, self.owner)
                    self.ledger.update_batch(cancel_or_read(self.backend, found.id))
                    return True
            outcomes = _synthetic_outcomes(
                expected_ids(self.storage, claimed),
                status=status,
                retryable=False,
                code=code,
                message=message,
            )
            if not self._settle(claimed, outcomes, allow_retries=False).taken_over:
                self._delete_provider_files(claimed.file_id)  # uploaded, never made a batch
            return True
        finally:
            self.ledger.release(claimed.shard_id, self.owner)

    def _delete_provider_files(self, *file_ids: str | None) -> None:
        """Delete files the provider no longer needs to keep for us (unless the spec keeps
        them). Only tidying: a file that will not go is logged and left."""
        if self.spec.output.keep_provider_files:
            return
        for file_id in filter(None, file_ids):
            try:
                self.backend.delete_file(file_id)
            except NotFound:
                continue
            except BackendError as exc:
                log.warning("file %s was not deleted from the provider: %s", file_id, exc)

    def _delete_downloads(self, folder: str) -> None:
        """Remove the downloaded output and error files once the outcome file holds what was
        read from them (each answer's whole body): nothing reads them again, and a collection
        that must start over downloads them afresh."""
        for name in BATCH_FILES:
            self.storage.delete(batch_file_path(folder, name))

    def _requeue(self, shard: ShardRecord, batch: BatchInfo) -> CollectOutcome:
        reason = "; ".join(f"{e.code}: {e.message}" for e in batch.errors) or "transient failure"
        if not self.ledger.update_shard(
            shard.shard_id,
            self.owner,
            state=ShardState.QUEUED,
            not_before=self._clock() + self.tuning.requeue_backoff(shard.submissions),
            last_error=f"batch {batch.id} failed ({reason}); queued again",
            file_id=None,  # deleted once collected: the next submission uploads afresh
        ):
            return _collection_taken_over(shard)
        log.warning(
            "shard %s: batch %s failed (%s); queued again", shard.shard_id, batch.id, reason
        )
        return CollectOutcome(shard.shard_id, 0, 0, 0, [])

    def _outcomes(self, shard: ShardRecord, batch: BatchInfo) -> tuple[pa.Table, pa.Array | None]:
        """One outcome per request of the shard, and the row of each request in request order
        (None: the rows are in that order)."""
        expected = expected_ids(self.storage, shard)
        if batch.status is BatchStatus.FAILED:
            return _failed_batch_outcomes(shard, batch, expected), None
        with scratch_for(self.storage) as scratch:
            files = self._download(batch, shard_batch_dir(shard), scratch)
            parsed = parse_outcomes(
                files.get("output"), files.get("errors"), endpoint=shard.endpoint
            )
        if hasattr(self.backend, "pipeline_ids"):  # the provider's ids back to the pipeline's
            index = parsed.schema.get_field_index("custom_id")
            ids = self.backend.pipeline_ids(parsed["custom_id"], expected)
            parsed = parsed.set_column(index, parsed.schema.field(index), ids)
        order = pc.index_in(expected, value_set=parsed["custom_id"])
        if len(order) - order.null_count < len(parsed):
            # Lines for requests of other shards: not ours to keep.
            parsed = parsed.filter(pc.is_in(parsed["custom_id"], value_set=expected))
            order = pc.index_in(expected, value_set=parsed["custom_id"])
        if not order.null_count:
            return parsed, order
        rows = order.fill_null(-1).to_numpy(zero_copy_only=False).copy()
        missing_rows = rows < 0
        cancelled = batch.status is BatchStatus.CANCELLED
        filler = _synthetic_outcomes(
            expected.filter(pa.array(missing_rows)),
            status=RowStatus.CANCELLED if cancelled else RowStatus.FAILED,
            retryable=not cancelled,
            code="batch_cancelled" if cancelled else "missing_result",
            message=f"batch {batch.id} ({batch.status.value}) gave no line for this request",
        )
        # The fillers follow the parsed rows, in request order.
        rows[missing_rows] = len(parsed) + np.arange(len(filler))
        return pa.concat_tables([parsed, filler]), pa.array(rows)

    def _download(
        self, batch: BatchInfo, folder: str, storage: StorageRoot
    ) -> dict[str, StoredFile]:
        """The batch's output and error files, stored in `folder` of `storage` (a file gone is
        left out)."""
        files: dict[str, StoredFile] = {}
        for name, file_id in zip(
            BATCH_FILES, (batch.output_file_id, batch.error_file_id), strict=True
        ):
            if not file_id:
                continue
            relative = batch_file_path(folder, name)
            try:
                # Not flushed to disk: read at once, and fetched again if the outcomes, which
                # are flushed, were never written.
                with storage.atomic_write(relative, durable=False) as handle:
                    self.backend.download_file(file_id, handle)
            except NotFound:
                log.warning("batch %s: %s file %s is gone", batch.id, name, file_id)
                continue
            files[name] = StoredFile(storage, relative)
        return files

    def _settle(
        self,
        shard: ShardRecord,
        outcomes: pa.Table,
        *,
        allow_retries: bool,
        order: pa.Array | None = None,
    ) -> CollectOutcome:
        judged = self._judge(shard, outcomes, allow_retries=allow_retries, order=order)
        return _collection_taken_over(shard) if judged is None else self._record(judged)

    def _judge(
        self,
        shard: ShardRecord,
        outcomes: pa.Table,
        *,
        allow_retries: bool,
        order: pa.Array | None = None,
    ) -> JudgedOutcomes | None:
        """The shard's outcomes as they will be written, with what they come to; None if the
        lease ran out meanwhile."""
        # Downloading and parsing can outlast the lease: write nothing (outcomes, retry
        # shards) unless this process still holds the shard.
        if not self.ledger.renew_lease(shard.shard_id, self.owner):
            return None
        if self.spec.output_schema is not None:
            outcomes = judge_outcomes(
                outcomes,
                self.spec.output_schema,
                self.spec.request.endpoint.value,
                retry_invalid=shard.attempt < self.spec.retry.invalid_output_attempts,
            )
        outcomes = outcomes.append_column(
            "batch_id", pa.array([shard.batch_id] * len(outcomes), pa.string())
        ).append_column("attempt", pa.array([shard.attempt] * len(outcomes), pa.int32()))
        retry_ids = set()
        if allow_retries and shard.attempt < self.spec.retry.max_attempts:
            retry_ids = set(pc.filter(outcomes["custom_id"], outcomes["retryable"]).to_pylist())
        succeeded = int(
            pc.sum(pc.equal(outcomes["status"], RowStatus.SUCCEEDED.value)).as_py() or 0
        )
        return JudgedOutcomes(shard, outcomes, order, retry_ids, succeeded)

    def _record(self, judged: JudgedOutcomes) -> CollectOutcome:
        """Write the outcome file and the retry shards, and mark the shard collected."""
        shard, retry_ids = judged.shard, judged.retry_ids
        # Another shard's writing may have come between the judging and this: write nothing
        # unless this process still holds the shard.
        if not self.ledger.renew_lease(shard.shard_id, self.owner):
            return _collection_taken_over(shard)
        relative = outcomes_path(shard_batch_dir(shard))
        with self.storage.atomic_write(relative) as handle:
            write_outcome_file(judged.outcomes, handle, order=judged.order)
        retry_shard_ids: list[str] = []
        if retry_ids:
            manifest = write_retry_shards(
                self.spec,
                self.storage,
                shard.partition,
                shard.generation,
                shard.attempt + 1,
                iter_request_lines(
                    self.storage,
                    [shard.path],
                    retry_ids,
                    exact_tokens=self.spec.limits.counts_tokens_exactly,
                ),
                first_index=shard.shard_index,
            )
            self.ledger.add_shards(manifest.shards)
            retry_shard_ids = [s.shard_id for s in manifest.shards]
        failed = len(judged.outcomes) - judged.succeeded - len(retry_ids)
        held = self.ledger.update_shard(
            shard.shard_id,
            self.owner,
            state=ShardState.COLLECTED,
            outcomes_path=relative,
            succeeded=judged.succeeded,
            failed=failed,
            retried=len(retry_ids),
            collected_at=self._clock(),
        )
        if not held:
            return _collection_taken_over(shard)
        return CollectOutcome(
            shard.shard_id, judged.succeeded, failed, len(retry_ids), retry_shard_ids
        )


@dataclass(frozen=True)
class JudgedOutcomes:
    """A shard's outcomes read and judged, not yet written: `order` gives each request's row
    (None: the rows are in request order); `retry_ids` are the requests to try again."""

    shard: ShardRecord
    outcomes: pa.Table
    order: pa.Array | None
    retry_ids: set[str]
    succeeded: int


@dataclass(frozen=True)
class Collecting:
    """A claimed shard whose outcomes are read (`Collector.begin`), for `Collector.finish`.
    `result`: the outcomes to write, or what collecting came to without any (the batch queued
    again, or the lease lost)."""

    shard: ShardRecord
    batch: BatchInfo
    result: JudgedOutcomes | CollectOutcome


def _collection_taken_over(shard: ShardRecord) -> CollectOutcome:
    """What a collection that lost its lease to another process reports."""
    log.warning("shard %s: another process took it over while it was collected", shard.shard_id)
    return CollectOutcome(shard.shard_id, 0, 0, 0, [], taken_over=True)


def _failed_batch_outcomes(shard: ShardRecord, batch: BatchInfo, expected: pa.Array) -> pa.Table:
    """Every request of a batch that failed as a whole fails, with the batch's reason."""
    first = batch.errors[0] if batch.errors else None
    message = "; ".join(
        f"line {e.line}: {e.message}" if e.line else e.message for e in batch.errors
    )
    how = (
        f"failed on a provider limit (submitted {shard.submissions} times)"
        if is_transient_batch_failure(batch)
        else "failed validation"
    )
    return _synthetic_outcomes(
        expected,
        status=RowStatus.FAILED,
        retryable=False,
        code=(first.code if first and first.code else "batch_failed"),
        message=f"batch {batch.id} {how}: {message or 'no reason given'}",
    )


def _synthetic_outcomes(
    custom_ids: pa.Array, *, status: RowStatus, retryable: bool, code: str, message: str
) -> pa.Table:
    """Outcome rows, in the parsed outcomes' schema, for requests with no line of their own."""
    count = len(custom_ids)
    given = {
        "custom_id": custom_ids,
        "status": pa.array([status.value] * count, pa.string()),
        "retryable": pa.array([retryable] * count, pa.bool_()),
        "error_code": pa.array([code] * count, pa.string()),
        "error_message": pa.array([message] * count, pa.string()),
    }
    return pa.table(
        [given.get(f.name, pa.nulls(count, f.type)).cast(f.type) for f in OUTCOME_SCHEMA],
        schema=OUTCOME_SCHEMA,
    )
