"""The engine's front door: one pipeline, run partition by partition.

`Pipeline` ties the parts together (request building, the ledger, a backend, polling, results);
notebooks, the CLI and the Dagster layer all drive a pipeline through it, so every decision
is taken in one place.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from batch_pipeline.core.backends.base import (
    BackendError,
    BatchBackend,
    TransientBackendError,
    cancel_or_read,
)
from batch_pipeline.core.custom_id import custom_ids_for
from batch_pipeline.core.layout import rejected_path, results_path
from batch_pipeline.core.leases import lease_holder_is_dead
from batch_pipeline.core.ledger import (
    DEFAULT_LEASE_SECONDS,
    Ledger,
    PartitionRecord,
    ShardRecord,
    default_owner,
)
from batch_pipeline.core.outcomes import OUTCOME_SCHEMA, OutcomeFileError, in_request_order
from batch_pipeline.core.parquet_files import read_parquet
from batch_pipeline.core.poller import Poller
from batch_pipeline.core.prices import cost_usd
from batch_pipeline.core.requests import RequestBuilder
from batch_pipeline.core.results import (
    OrderedOutcomes,
    OutcomeGroup,
    ResultsError,
    assemble_results,
)
from batch_pipeline.core.results import read_results as read_results_dir
from batch_pipeline.core.sharding import FIRST_ATTEMPT, build_partition_requests, load_manifest
from batch_pipeline.core.sources import iter_partition_batches, parse_partition, source_schema
from batch_pipeline.core.spec import PipelineSpec
from batch_pipeline.core.storage import StorageRoot, storage_for
from batch_pipeline.core.submission import Submitter
from batch_pipeline.core.tuning import CHUNK_ROWS, DEFAULT_TUNING, Tuning
from batch_pipeline.core.types import BatchInfo, BatchStatus, RowStatus, ShardState
from batch_pipeline.core.worker import PipelineWorker

log = logging.getLogger(__name__)

# What collecting or settling one shard may raise without the others having to stop.
_SHARD_ERRORS = (BackendError, OutcomeFileError, OSError)

WorkerT = TypeVar("WorkerT", bound=PipelineWorker)
OPEN_STATES = (ShardState.QUEUED, ShardState.SUBMITTING, ShardState.SUBMITTED)
REBUILD_HINT = "`batch-pipeline run --rebuild`, or a Dagster run tagged batch_pipeline/rebuild=true"


class PipelineError(RuntimeError):
    """The pipeline cannot do what was asked; the message says why and what to do."""


@dataclass(frozen=True)
class RequestsSummary:
    """What building one partition's requests produced."""

    pipeline: str
    partition: str
    generation: int
    source_rows: int
    requests: int
    rejected: int
    shards: int
    bytes: int
    estimated_input_tokens: int
    estimated_cost_live_usd: float | None
    estimated_cost_batch_usd: float | None
    manifest_path: str
    already_built: bool
    rows_without_day: int = 0  # source rows that fall on no day, so in no partition
    notes: tuple[str, ...] = ()  # the manifest's warnings (unknown price, rows of no day)
    spec_changed: str | None = None  # a reused build made with another request: says so


@dataclass(frozen=True)
class SubmitSummary:
    pipeline: str
    partition: str | None
    submitted_batch_ids: list[str]
    in_flight_batch_ids: list[str]
    waiting_shards: int
    waiting_reasons: list[str] = field(default_factory=list)
    refused_reasons: list[str] = field(default_factory=list)  # shards settled as failed


@dataclass(frozen=True)
class PollReport:
    changed: list[tuple[str, str]]
    collected_shards: int
    retry_shards: int
    submitted_batch_ids: list[str]
    settled_partitions: list[str]
    in_flight: int
    queued: int
    timed_out: bool
    errors: list[str]


@dataclass(frozen=True)
class ResultsSummary:
    pipeline: str
    partition: str
    generation: int
    path: str
    rows: int
    counts: dict[str, int]
    input_tokens: int
    output_tokens: int
    cost_batch_usd: float | None
    cost_live_usd: float | None
    saved_usd: float | None
    columns: list[tuple[str, str]]
    preview: list[dict[str, Any]]
    already_collected: bool = False
    spec_changed: str | None = None  # results made with another request: says so

    def to_dict(self) -> dict[str, Any]:
        """What the ledger keeps of it: the facts of the results, not this call's notes."""
        notes = ("already_collected", "spec_changed")
        return {k: v for k, v in self.__dict__.items() if k not in notes}


@dataclass(frozen=True)
class PartitionStatus:
    pipeline: str
    partition: str
    generation: int
    state: str
    source_rows: int
    requests: int
    rejected: int
    shards: dict[str, int]
    batches: list[dict[str, Any]]
    waiting: list[str]
    results_path: str | None


class Pipeline:
    """One pipeline spec bound to its ledger, storage and backend.

    `clock` and `sleep` are the time it goes by (a test passes a manual clock, see
    `backends.memory.ManualClock`); `tuning` holds its backoffs, limits and chunk sizes
    (`tuning.DEFAULT_TUNING` unless given).
    """

    def __init__(
        self,
        spec: PipelineSpec,
        *,
        dataframe: pd.DataFrame | None = None,
        backend: BatchBackend | None = None,
        ledger: Ledger | None = None,
        storage: StorageRoot | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        tuning: Tuning | None = None,
    ) -> None:
        self.spec = spec
        self.dataframe = dataframe
        self.ledger = ledger or Ledger(spec.ledger_url, clock=clock)
        self.storage = storage or storage_for(spec.pipeline_dir)
        self.owner = default_owner()
        self._backend = backend
        self._clock = clock
        self._sleep = sleep
        self.tuning = tuning or DEFAULT_TUNING

    def __repr__(self) -> str:
        return f"Pipeline({self.spec.name!r})"

    @property
    def backend(self) -> BatchBackend:
        if self._backend is None:
            from batch_pipeline.core.backends.openai import make_backend

            self._backend = make_backend(self.spec.backend)
        return self._backend

    def close(self) -> None:
        if self._backend is not None:
            self._backend.close()
        self.ledger.close()

    def __enter__(self) -> Pipeline:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- requests ---------------------------------------------------------------------------

    def build_requests(self, partition: str, *, rebuild: bool = False) -> RequestsSummary:
        """Validate the partition's rows and write its JSONL shards; nothing is paid for here.

        The current generation is reused when it is already built, whatever its state, so
        building a day again never pays for it twice; `rebuild=True` starts a new one, unless
        the day is still in flight (PipelineError: its batches would be paid for again; cancel
        it first, or wait until it settles).
        """
        parse_partition(partition)  # before the ledger records anything of it
        if rebuild:
            self._check_rebuild(partition)
        generation = self.ledger.start_generation(self.spec.name, partition, rebuild=rebuild)
        built = self._wait_for_build_or_claim(partition, generation)
        if built:
            manifest = load_manifest(self.storage, partition, generation, 1)
            summary = self._requests_summary(manifest, already_built=True)
            return replace(summary, spec_changed=self.spec_change(partition))
        try:
            manifest = build_partition_requests(
                self.spec,
                partition,
                self.storage,
                generation=generation,
                dataframe=self.dataframe,
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
        self._settle_if_done(partition)
        for note in manifest.notes:
            log.warning("%s %s: %s", self.spec.name, partition, note)
        return self._requests_summary(manifest, already_built=False)

    def spec_change(self, partition: str) -> str | None:
        """One line saying that the partition's current generation was built with another
        request than the spec makes now (and how to send the new one); None when it was not,
        or when the ledger does not know (a build by a version that kept no fingerprint)."""
        record = self.get_partition(partition)
        if record is None or record.request_fingerprint in (None, self.spec.request.fingerprint):
            return None
        return (
            f"{partition} generation {record.generation} of {self.spec.name} was built with "
            "another request than the spec makes now (its endpoint, model, system, prompt or "
            "params changed), so its results answer the old one; rebuild it to send the new "
            f"one ({REBUILD_HINT})"
        )

    def _check_rebuild(self, partition: str) -> None:
        """Refuse a new generation of a day whose batches are paid for and not yet finished."""
        record = self.get_partition(partition)
        if (
            record is not None
            and record.is_in_flight
            and record.cancelled_at is None
            and not self.awaits_submission(partition)
        ):
            raise PipelineError(
                f"{partition} of {self.spec.name} is still in flight (generation "
                f"{record.generation}): cancel it first (batch-pipeline cancel), or wait until "
                "it settles, before building it afresh"
            )

    def _wait_for_build_or_claim(self, partition: str, generation: int) -> bool:
        """True once the generation is built (by anyone); False when this process claimed the
        right to build it. Another process building it is waited for, not raced."""
        while True:
            record = self._require_partition(partition)
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

    def _requests_summary(self, manifest: Any, *, already_built: bool) -> RequestsSummary:
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

    # -- submission and polling -------------------------------------------------------------

    def _worker(self, kind: type[WorkerT]) -> WorkerT:
        return kind(
            self.spec,
            self.ledger,
            self.backend,
            self.storage,
            self.owner,
            clock=self._clock,
            tuning=self.tuning,
        )

    def submit(self, partition: str | None = None) -> SubmitSummary:
        """Ask for the built shards of a partition (or of all) to be paid for, and submit the
        queued ones that the token budget allows now; polls submit the rest as it frees up.

        Safe to call again and from several processes at once: each shard is submitted once.
        A partition named here must have been built (PipelineError otherwise).
        """
        if partition is not None and self._require_partition(partition).built_at is None:
            raise PipelineError(
                f"partition {partition} of {self.spec.name} has not been built (its build is "
                "under way or failed): build its requests first"
            )
        for record in self.ledger.list_partitions(self.spec.name):
            if partition is None or record.partition == partition:
                self.ledger.queue_built(self.spec.name, record.partition, record.generation)
        return self._submit_queued(partition)

    def _submit_queued(
        self, partition: str | None = None, *, deadline: float | None = None
    ) -> SubmitSummary:
        """Submit the queued shards the token budget allows (built ones wait for `submit`)."""
        submitter = self._worker(Submitter)
        submitted: list[str] = []
        waiting: list[str] = []
        refused: list[str] = []
        for shard in self._submittable(partition):
            if deadline is not None and self._clock() > deadline:
                waiting.append(f"{shard.shard_id}: poll time budget used up")
                continue
            outcome = submitter.submit(shard)
            if outcome.batch is not None:
                submitted.append(outcome.batch.id)
            elif outcome.refused is not None:
                self._settle_refused(shard, outcome.refused)
                refused.append(f"{shard.shard_id}: {outcome.refused}")
            elif outcome.cancelled:
                self._worker(Poller).cancel_unsubmitted(shard)
                self._settle_if_done(shard.partition)
            elif outcome.waiting:
                waiting.append(f"{shard.shard_id}: {outcome.waiting}")
        in_flight = [
            shard.batch_id
            for shard in self.ledger.shards(
                self.spec.name, partition=partition, states=[ShardState.SUBMITTED]
            )
            if shard.batch_id and not (shard.batch_status and shard.batch_status.is_terminal)
        ]
        return SubmitSummary(
            pipeline=self.spec.name,
            partition=partition,
            submitted_batch_ids=submitted,
            in_flight_batch_ids=in_flight,
            waiting_shards=len(waiting),
            waiting_reasons=waiting,
            refused_reasons=refused,
        )

    def _settle_refused(self, shard: ShardRecord, refusal: BackendError) -> None:
        """A shard the provider will not take as a batch (its request file refused): each of
        its rows ends `failed` with the provider's reason, and the partition can settle."""
        self._worker(Poller).settle_unsubmitted(
            shard,
            status=RowStatus.FAILED,
            code=refusal.code or f"http_{refusal.status_code}",
            message=f"the provider refused the batch: {refusal}",
        )
        self._settle_if_done(shard.partition)

    def _submittable(self, partition: str | None) -> list[ShardRecord]:
        """Queued and orphaned shards of current, uncancelled generations, oldest first."""
        current = {
            record.partition: record
            for record in self.ledger.list_partitions(self.spec.name)
            if partition is None or record.partition == partition
        }
        now = self._clock()
        shards = []
        for shard in self.ledger.shards(
            self.spec.name,
            partition=partition,
            states=[ShardState.QUEUED, ShardState.SUBMITTING],
        ):
            record = current.get(shard.partition)
            if record is None or record.generation != shard.generation or record.cancelled_at:
                continue
            if shard.not_before and shard.not_before > now:
                continue
            if (
                shard.state is ShardState.SUBMITTING
                and shard.lease_owner
                and (shard.lease_owner != self.owner)
            ):
                expired = (shard.lease_expires_at or 0) < now
                if not (expired or lease_holder_is_dead(shard.lease_owner)):
                    continue
            shards.append(shard)
        return sorted(shards, key=lambda s: (s.partition, s.attempt, s.shard_index))

    def poll(self, *, time_budget_seconds: float = 40.0) -> PollReport:
        """One bounded pass: refresh in-flight batches, collect finished ones (making retry
        shards), submit what is queued, and mark partitions whose every row is settled."""
        deadline = self._clock() + time_budget_seconds
        poller = self._worker(Poller)
        errors: list[str] = []
        changed = []
        try:
            changed = poller.refresh(poller.in_flight())
        except BackendError as exc:
            errors.append(f"refreshing batches: {exc}")
        collected = retries = 0
        timed_out = False
        records = self.ledger.list_partitions(self.spec.name)
        # Retries only serve a current generation that nobody cancelled.
        retrying = {
            (record.partition, record.generation) for record in records if not record.cancelled_at
        }
        for shard in poller.finished():
            if self._clock() > deadline:
                timed_out = True
                break
            try:
                outcome = poller.collect(
                    shard, allow_retries=(shard.partition, shard.generation) in retrying
                )
            except _SHARD_ERRORS as exc:
                errors.append(f"collecting {shard.batch_id} ({shard.shard_id}): {exc}")
                log.warning("collecting batch %s failed: %s", shard.batch_id, exc)
                continue
            if outcome is not None and not outcome.taken_over:
                collected += 1
                retries += len(outcome.retry_shard_ids)
        submitted: list[str] = []
        try:
            summary = self._submit_queued(deadline=deadline)
            submitted = summary.submitted_batch_ids
            timed_out = timed_out or any("time budget" in w for w in summary.waiting_reasons)
        except BackendError as exc:
            errors.append(f"submitting: {exc}")
        for record in records:
            if record.cancelled_at and record.built_at and not record.settled_at:
                errors += self._cancel_left_over_shards(record)
        settled = [p for p in self._partitions_with_work() if self._settle_if_done(p)]
        open_shards = self.ledger.shards(self.spec.name, states=list(OPEN_STATES))
        return PollReport(
            changed=[(batch.id, batch.status.value) for batch in changed],
            collected_shards=collected,
            retry_shards=retries,
            submitted_batch_ids=submitted,
            settled_partitions=settled,
            in_flight=sum(1 for s in open_shards if s.state is ShardState.SUBMITTED),
            queued=sum(1 for s in open_shards if s.state is not ShardState.SUBMITTED),
            timed_out=timed_out,
            errors=errors,
        )

    def _cancel_left_over_shards(self, record: PartitionRecord) -> list[str]:
        """Settle as cancelled the unsubmitted shards of a cancelled day that another process
        held when the cancel came (an upload under way), once it lets go or its lease runs
        out: no one submits them any more, so the day would never settle. Returns errors."""
        poller = self._worker(Poller)
        errors = []
        for shard in self.ledger.shards(
            self.spec.name,
            partition=record.partition,
            generation=record.generation,
            states=[ShardState.BUILT, ShardState.QUEUED, ShardState.SUBMITTING],
        ):
            try:
                poller.cancel_unsubmitted(shard)
            except _SHARD_ERRORS as exc:
                errors.append(f"cancelling {shard.shard_id}: {exc}")
                log.warning("cancelling shard %s failed: %s", shard.shard_id, exc)
        return errors

    def _partitions_with_work(self) -> list[str]:
        return [
            record.partition
            for record in self.ledger.list_partitions(self.spec.name)
            if record.built_at is not None and record.settled_at is None
        ]

    def _settle_if_done(self, partition: str) -> bool:
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

    def partitions_awaiting_results(self) -> list[PartitionRecord]:
        """Settled partitions of the current generation whose results are not written yet."""
        return [
            record
            for record in self.ledger.list_partitions(self.spec.name)
            if record.settled_at is not None and record.collected_at is None
        ]

    def cancel(self, partition: str) -> list[str]:
        """Cancel the partition's batches; queued shards are not submitted. Returns batch ids."""
        record = self._require_partition(partition)
        self.ledger.mark_cancelled(self.spec.name, partition, record.generation)
        cancelled = []
        poller = self._worker(Poller)
        for shard in self.ledger.shards(
            self.spec.name, partition=partition, generation=record.generation
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
            elif shard.state in (ShardState.BUILT, ShardState.QUEUED, ShardState.SUBMITTING):
                poller.cancel_unsubmitted(shard)
        self._settle_if_done(partition)
        return cancelled

    def _cancel_batch(self, batch_id: str) -> BatchInfo:
        try:
            return cancel_or_read(self.backend, batch_id)
        except TransientBackendError as exc:
            raise PipelineError(f"cancelling batch {batch_id}: {exc}") from exc

    # -- results ----------------------------------------------------------------------------

    def collect_results(self, partition: str) -> ResultsSummary:
        """Join every source row of a settled partition with its outcome and write Parquet."""
        record = self._require_partition(partition)
        if record.settled_at is None:
            raise PipelineError(
                f"partition {partition} of {self.spec.name} is not settled yet: "
                "poll until every batch has finished"
            )
        shards = self.ledger.shards(
            self.spec.name, partition=partition, generation=record.generation
        )
        outcomes = _outcome_groups(self.storage, shards)
        rejected = read_parquet(self.storage, rejected_path(partition, record.generation))
        try:
            summary = assemble_results(
                # Read in the join's own chunks: larger batches only wait, decoded, in memory.
                source_batches=iter_partition_batches(
                    self.spec,
                    partition,
                    dataframe=self.dataframe,
                    batch_size=self.tuning.chunk_rows,
                    ties=RequestBuilder(self.spec).columns,  # as the build read them
                ),
                source_schema=source_schema(self.spec, self.dataframe),  # for an empty day
                key_column=self.spec.source.key,
                partition=partition,
                custom_id_of=lambda keys: custom_ids_for(partition, keys),
                outcomes=outcomes,
                rejected=rejected,
                storage=self.storage,
                dest=results_path(partition),
                endpoint=self.spec.request.endpoint.value,
                compression=self.spec.output.compression,
                chunk_rows=self.tuning.chunk_rows,
            )
        except ResultsError as exc:
            built = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(record.built_at or 0))
            raise type(exc)(
                f"partition {partition} of {self.spec.name}: {exc}. The source no longer holds "
                f"the rows its requests were built from at {built}. If rows were added, "
                f"changed or removed since, rebuild the partition ({REBUILD_HINT}), which "
                "sends every row again"
            ) from None
        finally:
            pa.default_memory_pool().release_unused()  # see Poller.collect
        result = self._results_summary(partition, record.generation, summary)
        self.ledger.mark_collected(
            self.spec.name,
            partition,
            record.generation,
            results_path=result.path,
            summary=result.to_dict(),
        )
        return result

    def _results_summary(self, partition: str, generation: int, summary: Any) -> ResultsSummary:
        model = self.spec.request.model
        prices = self.spec.prices
        batch_cost = cost_usd(
            model, summary.input_tokens, summary.output_tokens, batch=True, overrides=prices
        )
        live_cost = cost_usd(
            model, summary.input_tokens, summary.output_tokens, batch=False, overrides=prices
        )
        counts = {status.value: int(summary.counts.get(status.value, 0)) for status in RowStatus}
        return ResultsSummary(
            pipeline=self.spec.name,
            partition=partition,
            generation=generation,
            path=str(summary.path),
            rows=summary.rows,
            counts=counts,
            input_tokens=summary.input_tokens,
            output_tokens=summary.output_tokens,
            cost_batch_usd=batch_cost,
            cost_live_usd=live_cost,
            saved_usd=None if batch_cost is None or live_cost is None else live_cost - batch_cost,
            columns=list(summary.columns),
            preview=list(summary.preview),
        )

    def read_results(self, partition: str | None = None) -> pd.DataFrame:
        """All written results (or one partition's) as a DataFrame."""
        return read_results_dir(self.storage, partition)

    # -- end to end -------------------------------------------------------------------------

    def run(
        self,
        partition: str,
        *,
        wait: bool = True,
        poll_interval: float = 10.0,
        rebuild: bool = False,
        timeout: float | None = None,
        on_progress: Callable[[PartitionStatus, PollReport | None], None] | None = None,
    ) -> ResultsSummary | PartitionStatus:
        """Run a partition end to end: build, submit, poll until settled, write results.

        A partition whose results are already written is left alone (its summary is returned)
        unless `rebuild` asks for a new generation. With `wait=False` it returns after
        submitting, with the partition's status. A Batch API that gives no answer for longer
        than `backend.unreachable_after_seconds` stops the wait with `ServiceUnreachable`
        (the batches go on; a later run or poll picks them up).
        """
        record = self.ledger.get_partition(self.spec.name, partition)
        if record is not None and record.collected_at is not None and not rebuild:
            return ResultsSummary(
                **record.summary, already_collected=True, spec_changed=self.spec_change(partition)
            )
        built = self.build_requests(partition, rebuild=rebuild)
        self.submit(partition)
        started = self._clock()
        report: PollReport | None = None
        while True:
            status = self.status(partition)[0]
            if on_progress is not None:
                on_progress(status, report)
            if status.state in ("settled", "collected") or not wait:
                break
            if timeout is not None and self._clock() - started > timeout:
                raise PipelineError(
                    f"partition {partition} did not settle within {timeout:.0f} s; its batches "
                    "go on: run again (or `batch-pipeline status`) later to collect them"
                )
            self._sleep(poll_interval)
            report = self.poll()
            if (unreachable := self.backend.unreachable()) is not None:
                raise unreachable
        if not wait:
            return status
        return replace(self.collect_results(partition), spec_changed=built.spec_changed)

    # -- status -----------------------------------------------------------------------------

    def status(self, partition: str | None = None) -> list[PartitionStatus]:
        records = self.ledger.list_partitions(self.spec.name)
        if partition is not None:
            parse_partition(partition)
            records = [r for r in records if r.partition == partition]
            if not records:
                raise PipelineError(
                    f"partition {partition} of {self.spec.name} has not been built yet"
                )
        return [self._partition_status(record) for record in records]

    def _partition_status(self, record: PartitionRecord) -> PartitionStatus:
        shards = self.ledger.shards(
            self.spec.name, partition=record.partition, generation=record.generation
        )
        by_state: dict[str, int] = {}
        for shard in shards:
            by_state[shard.state.value] = by_state.get(shard.state.value, 0) + 1
        current_batches = {s.batch_id for s in shards if s.batch_id}
        batches = [
            {
                "batch_id": b["batch_id"],
                "status": b["status"],
                "completed": b["request_completed"] or 0,
                "failed": b["request_failed"] or 0,
                "total": b["request_total"] or 0,
            }
            for b in self.ledger.batches(self.spec.name, partition=record.partition)
            if b["batch_id"] in current_batches
        ]
        waiting = [
            f"{s.shard_id}: {s.last_error}"
            for s in shards
            if s.last_error and (s.state is not ShardState.COLLECTED)
        ]
        if record.collected_at is not None:
            state = "collected"
        elif record.settled_at is not None:
            state = "settled"
        elif record.built_at is None:
            state = "building"
        elif any(s.state is ShardState.SUBMITTED for s in shards):
            state = "in_flight"
        elif shards and all(s.state is ShardState.BUILT for s in shards):
            state = "built"  # nobody asked for its submission yet
        else:
            state = "queued"
        return PartitionStatus(
            pipeline=self.spec.name,
            partition=record.partition,
            generation=record.generation,
            state=state,
            source_rows=record.source_rows,
            requests=record.requests,
            rejected=record.rejected,
            shards=by_state,
            batches=batches,
            waiting=waiting,
            results_path=record.results_path,
        )

    def get_partition(self, partition: str) -> PartitionRecord | None:
        """The ledger's record of the partition's current generation, if it was ever built."""
        return self.ledger.get_partition(self.spec.name, partition)

    def awaits_submission(self, partition: str) -> bool:
        """Built, and none of its current generation's shards asked for yet: nothing of it is
        paid for or in flight."""
        record = self.get_partition(partition)
        if record is None or record.built_at is None or record.settled_at is not None:
            return False
        shards = self.ledger.shards(
            self.spec.name, partition=partition, generation=record.generation
        )
        return all(shard.state is ShardState.BUILT for shard in shards)

    def partitions(self) -> list[PartitionRecord]:
        """Every partition the ledger knows for this pipeline, by day."""
        return self.ledger.list_partitions(self.spec.name)

    def _require_partition(self, partition: str) -> PartitionRecord:
        parse_partition(partition)
        record = self.ledger.get_partition(self.spec.name, partition)
        if record is None:
            raise PipelineError(f"partition {partition} of {self.spec.name} has not been built")
        return record


def _outcome_groups(storage: StorageRoot, shards: list[ShardRecord]) -> list[OutcomeGroup]:
    """The outcomes of a generation as the results join takes them: per first-attempt shard
    (shards hold the accepted rows in source order), with its retries, which keep its index."""
    lineage: dict[int, list[ShardRecord]] = {}
    for shard in shards:
        lineage.setdefault(shard.shard_index, []).append(shard)
    first = sorted(
        (shard for shard in shards if shard.attempt == FIRST_ATTEMPT),
        key=lambda shard: shard.shard_index,
    )
    orphans = sorted(set(lineage) - {shard.shard_index for shard in first})
    if orphans:
        raise PipelineError(f"retry shards {orphans} have no first-attempt shard of that index")
    return [
        OutcomeGroup(
            shard.rows,
            partial(_final_outcomes, storage, lineage[shard.shard_index]),
            # With retries, a request's last outcome may lie in any of them: loaded whole.
            partial(_ordered_outcomes, storage, shard)
            if len(lineage[shard.shard_index]) == 1
            else None,
        )
        for shard in first
    ]


def _ordered_outcomes(storage: StorageRoot, shard: ShardRecord) -> OrderedOutcomes | None:
    """A shard's outcomes read in its request order, a chunk at a time; None if its file does
    not hold them in that order (collected by an earlier version)."""
    if not shard.outcomes_path:
        return None
    handle = storage.open_read(shard.outcomes_path)
    try:
        file = pq.ParquetFile(handle)
        ordered = in_request_order(file)
        ids = file.read(columns=["custom_id"]).column("custom_id") if ordered else None
    except BaseException:
        handle.close()
        raise
    if ids is None:
        handle.close()
        return None

    def tables() -> Iterator[pa.Table]:
        with handle:  # closed once read through, or when the join lets go of it
            for batch in file.iter_batches(batch_size=CHUNK_ROWS):
                yield _with_attempts(pa.Table.from_batches([batch]))

    return OrderedOutcomes(ids=ids, tables=tables())


def _with_attempts(outcomes: pa.Table) -> pa.Table:
    """An outcome file's rows with its `attempt` column named as the results name it."""
    return outcomes.rename_columns(
        ["attempts" if name == "attempt" else name for name in outcomes.column_names]
    )


def _final_outcomes(storage: StorageRoot, shards: list[ShardRecord]) -> pa.Table:
    """Every request's last outcome among these shards, with the number of attempts it took."""
    tables = [read_parquet(storage, shard.outcomes_path) for shard in shards if shard.outcomes_path]
    if not tables:
        return (
            OUTCOME_SCHEMA.append(pa.field("batch_id", pa.string()))
            .append(pa.field("attempts", pa.int32()))
            .empty_table()
        )
    latest = tables[0]
    if len(tables) > 1:  # the highest attempt per custom_id, ordered on the two keys alone
        combined = pa.concat_tables(tables, promote_options="permissive")
        order = pc.sort_indices(
            combined.select(["custom_id", "attempt"]),
            sort_keys=[("custom_id", "ascending"), ("attempt", "descending")],
        )
        ids = combined["custom_id"].take(order).combine_chunks()
        changes = pc.not_equal(ids.slice(1), ids.slice(0, max(len(ids) - 1, 0)))
        mask = pa.concat_arrays([pa.array([True] * min(len(ids), 1)), changes])
        latest = combined.take(order.filter(mask))  # one copy of the rows kept
    return _with_attempts(latest)


def load_pipeline(
    spec: str | Path | PipelineSpec | dict[str, Any],
    *,
    dataframe: pd.DataFrame | None = None,
    backend: BatchBackend | None = None,
    clock: Callable[[], float] = time.time,
    sleep: Callable[[float], None] = time.sleep,
    tuning: Tuning | None = None,
) -> Pipeline:
    """A `Pipeline` from a spec file, a mapping or a spec object (see `Pipeline` for the
    clock, sleep and tuning)."""
    return Pipeline(
        _as_spec(spec),
        dataframe=dataframe,
        backend=backend,
        clock=clock,
        sleep=sleep,
        tuning=tuning,
    )


def read_results(
    spec: str | Path | PipelineSpec | dict[str, Any], partition: str | None = None
) -> pd.DataFrame:
    """The pipeline's results as one DataFrame: all partitions, or one."""
    return read_results_dir(storage_for(_as_spec(spec).pipeline_dir), partition)


def _as_spec(spec: str | Path | PipelineSpec | dict[str, Any]) -> PipelineSpec:
    if isinstance(spec, PipelineSpec):
        return spec
    if isinstance(spec, dict):
        return PipelineSpec.from_dict(spec)
    return PipelineSpec.from_yaml(spec)
