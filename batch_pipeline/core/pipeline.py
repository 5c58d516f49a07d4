"""The engine's front door: one pipeline, run partition by partition.

A façade over the core's steps (`building`, `submission`, `poller`, `collection`,
`cancellation`, `results_writer`, `status`, `gc`): notebooks, the CLI and the Dagster layer drive a
pipeline through one object."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from batch_pipeline.core.backends.base import BatchBackend
from batch_pipeline.core.building import Builder, spec_change_note
from batch_pipeline.core.cancellation import Canceller
from batch_pipeline.core.gc import GcReport, IntermediatesGc
from batch_pipeline.core.leases import default_owner
from batch_pipeline.core.ledger import Ledger, PartitionRecord, ShardRecord
from batch_pipeline.core.partition import Partition, partition_key
from batch_pipeline.core.poller import PollPass
from batch_pipeline.core.results import read_results as read_results_dir
from batch_pipeline.core.results_writer import ResultsWriter
from batch_pipeline.core.sources import source_for
from batch_pipeline.core.spec import PipelineSpec
from batch_pipeline.core.status import awaits_submission, partition_status
from batch_pipeline.core.storage import StorageRoot, storage_for
from batch_pipeline.core.submission import Submitter
from batch_pipeline.core.tuning import DEFAULT_TUNING, Tuning
from batch_pipeline.core.typed_outputs import with_models
from batch_pipeline.core.types import (
    PartitionStatus,
    PipelineError,
    PollReport,
    RequestsSummary,
    ResultsSummary,
    SubmitSummary,
)
from batch_pipeline.core.worker import WorkerT, require_partition

if TYPE_CHECKING:  # a DataFrame only where one is given or asked for: pandas loads then
    import pandas as pd

__all__ = [
    "GcReport",
    "Partition",
    "PartitionStatus",
    "Pipeline",
    "PipelineError",
    "PollReport",
    "RequestsSummary",
    "ResultsSummary",
    "SubmitSummary",
    "load_pipeline",
    "read_results",
]


class Pipeline:
    """One pipeline spec bound to its ledger, storage and backend.

    `clock` and `sleep` are the time it goes by (a test passes a manual clock, see
    `backends.memory.ManualClock`); `tuning` holds its backoffs, limits and chunk sizes
    (`tuning.DEFAULT_TUNING` unless given). A partition is given as its key (`YYYY-MM-DD`, or
    `all` with `partitions: none`) or as a `Partition`; a key is parsed once here and the
    steps take the parsed value.
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
        self.source = source_for(spec, dataframe)  # where rows come from, for every stage
        # The store first: a bucket it cannot use stops here, before the ledger is touched.
        self.storage = storage or storage_for(spec.pipeline_root, spec.output.storage_options)
        self.ledger = ledger or Ledger(
            spec.ledger_url, clock=clock, reconnect_seconds=spec.ledger.reconnect_seconds
        )
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

    def _worker(self, kind: type[WorkerT], **extra: Any) -> WorkerT:
        parts = (self.spec, self.ledger, self.backend, self.storage, self.owner)
        return kind(*parts, clock=self._clock, tuning=self.tuning, **extra)

    # -- the steps --------------------------------------------------------------------------

    def build_requests(
        self, partition: str | Partition, *, rebuild: bool = False
    ) -> RequestsSummary:
        """Validate the partition's rows and write its JSONL shards; nothing is paid for here
        (see `Builder.build`: a built generation is reused unless `rebuild` asks). A partition
        outside the spec's `partitions.start` and `end` is a ValueError."""
        partitioning = self.spec.partitioning
        day = partitioning.check_bounds(partitioning.of(partition))
        builder = self._worker(Builder, source=self.source, sleep=self._sleep)
        return builder.build(day, rebuild=rebuild)

    def spec_change(self, partition: str | Partition) -> str | None:
        """Says when the partition was built with another request than the spec makes now."""
        return spec_change_note(self.spec, self.get_partition(partition))

    def submit(self, partition: str | Partition | None = None) -> SubmitSummary:
        """Ask for the built shards of a partition (or of all) to be paid for, and submit the
        queued ones that the token budget allows now; polls submit the rest as it frees up.

        Safe to call again and from several processes at once: each shard is submitted once.
        A partition named here must have been built (PipelineError otherwise).
        """
        day = None if partition is None else self.spec.partitioning.of(partition)
        if day is not None and self._require_partition(day).built_at is None:
            raise PipelineError(
                f"partition {day} of {self.spec.name} has not been built (its build is "
                "under way or failed): build its requests first"
            )
        for record in self.ledger.list_partitions(self.spec.name):
            if day is None or record.partition == day.key:
                self.ledger.queue_built(self.spec.name, record.partition, record.generation)
        return self._worker(Submitter).submit_queued(None if day is None else day.key)

    def poll(self, *, time_budget_seconds: float = 40.0) -> PollReport:
        """One bounded pass: refresh in-flight batches, collect finished ones (making retry
        shards), submit what is queued, and mark partitions whose every row is settled."""
        return self._worker(PollPass).report(time_budget_seconds)

    def cancel(self, partition: str | Partition) -> list[str]:
        """Cancel the partition's batches; queued shards are not submitted. Returns batch ids."""
        partition = self.spec.partitioning.of(partition)
        return self._worker(Canceller).cancel(self._require_partition(partition))

    def collect_results(self, partition: str | Partition) -> ResultsSummary:
        """Join every source row of a settled partition with its outcome and write Parquet."""
        writer = self._worker(ResultsWriter, source=self.source)
        return writer.write(self.spec.partitioning.of(partition))

    def read_results(
        self, partition: str | Partition | None = None, *, as_models: bool | type = False
    ) -> pd.DataFrame:
        """All written results (or one partition's) as a DataFrame; `as_models` adds an
        `output` column of validated pydantic objects (see `read_results`)."""
        frame = read_results_dir(self.storage, _key_or_none(partition))
        return with_models(frame, as_models, self.spec)

    def gc(self, *, dry_run: bool = False, time_budget_seconds: float | None = None) -> GcReport:
        """Remove the intermediates (request shards, batch files) of partitions collected more
        than `output.keep_intermediates_days` ago; `dry_run` only lists them. Needs no
        backend."""
        gc = IntermediatesGc(self.spec, self.ledger, self.storage, clock=self._clock)
        return gc.run(dry_run=dry_run, time_budget_seconds=time_budget_seconds)

    # -- end to end -------------------------------------------------------------------------

    def run(
        self,
        partition: str | Partition,
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
        return self.run_all(
            [partition],
            wait=wait,
            poll_interval=poll_interval,
            rebuild=rebuild,
            timeout=timeout,
            on_progress=on_progress,
        )[0]

    def run_all(
        self,
        partitions: Sequence[str | Partition],
        *,
        wait: bool = True,
        poll_interval: float = 10.0,
        rebuild: bool = False,
        timeout: float | None = None,
        on_progress: Callable[[PartitionStatus, PollReport | None], None] | None = None,
    ) -> list[ResultsSummary | PartitionStatus]:
        """Run partitions end to end together (see `run`): every one is checked, then built
        and submitted, before any is waited for; each one's results are written once it has
        settled. `on_progress` hears of every partition still waiting at each poll. Returns
        each partition's outcome, in the order given."""
        partitioning = self.spec.partitioning
        days = [partitioning.check_bounds(partitioning.of(p)) for p in partitions]
        outcomes: dict[str, ResultsSummary | PartitionStatus] = {}
        spec_changed: dict[str, str | None] = {}
        for day in days:
            record = self.get_partition(day)
            if record is not None and record.collected_at is not None and not rebuild:
                outcomes[day.key] = ResultsSummary(
                    **record.summary, already_collected=True, spec_changed=self.spec_change(day)
                )
                continue
            spec_changed[day.key] = self.build_requests(day, rebuild=rebuild).spec_changed
            self.submit(day)
        pending = [day for day in days if day.key in spec_changed]
        started = self._clock()
        report: PollReport | None = None
        while pending:
            for day in list(pending):
                status = self.status(day)[0]
                if on_progress is not None:
                    on_progress(status, report)
                if not wait:
                    outcomes[day.key] = status
                elif status.state.is_settled:
                    collected = self.collect_results(day)
                    outcomes[day.key] = replace(collected, spec_changed=spec_changed[day.key])
                else:
                    continue
                pending.remove(day)
            if not pending:
                break
            if timeout is not None and self._clock() - started > timeout:
                raise PipelineError(
                    f"partition {', '.join(d.key for d in pending)} did not settle within "
                    f"{timeout:.0f} s; its batches go on: run again (or `batch-pipeline "
                    "status`) later to collect them"
                )
            self._sleep(poll_interval)
            report = self.poll()
            if (unreachable := self.backend.unreachable()) is not None:
                raise unreachable
        return [outcomes[day.key] for day in days]

    # -- status -----------------------------------------------------------------------------

    def status(self, partition: str | Partition | None = None) -> list[PartitionStatus]:
        """The status of every partition (or of one, PipelineError if it was never built)."""
        records = self.ledger.list_partitions(self.spec.name)
        if partition is not None:
            partition = self.spec.partitioning.of(partition)
            records = [r for r in records if r.partition == partition.key]
            if not records:
                raise PipelineError(
                    f"partition {partition} of {self.spec.name} has not been built yet"
                )
        return [
            partition_status(
                record,
                self._shards_of(record),
                self.ledger.batches(self.spec.name, partition=record.partition),
            )
            for record in records
        ]

    def get_partition(self, partition: str | Partition) -> PartitionRecord | None:
        """The ledger's record of the partition's current generation, if it was ever built
        (a key is looked up as it is: one never built, or no day at all, has none)."""
        return self.ledger.get_partition(self.spec.name, partition_key(partition))

    def awaits_submission(self, partition: str | Partition) -> bool:
        """Built, and none of its current generation's shards asked for yet: nothing of it is
        paid for or in flight."""
        record = self.get_partition(partition)
        return record is not None and awaits_submission(record, self._shards_of(record))

    def partitions(self) -> list[PartitionRecord]:
        """Every partition the ledger knows for this pipeline, by day."""
        return self.ledger.list_partitions(self.spec.name)

    def partitions_awaiting_results(self) -> list[PartitionRecord]:
        """Settled partitions of the current generation whose results are not written yet."""
        return [
            record
            for record in self.partitions()
            if record.settled_at is not None and record.collected_at is None
        ]

    def _shards_of(self, record: PartitionRecord) -> list[ShardRecord]:
        return self.ledger.shards(
            self.spec.name, partition=record.partition, generation=record.generation
        )

    def _require_partition(self, partition: Partition) -> PartitionRecord:
        return require_partition(self.ledger, self.spec.name, partition)


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
        PipelineSpec.of(spec),
        dataframe=dataframe,
        backend=backend,
        clock=clock,
        sleep=sleep,
        tuning=tuning,
    )


def read_results(
    spec: str | Path | PipelineSpec | dict[str, Any],
    partition: str | Partition | None = None,
    *,
    as_models: bool | type = False,
) -> pd.DataFrame:
    """The pipeline's results as one DataFrame: all partitions, or one, read from where the
    pipeline stores them (a local folder or an object store). An output schema's
    `output_<property>` columns come typed. `as_models=True` adds an `output` column holding
    each succeeded row's answer as an object of the pydantic model the spec's output schema
    was given as (or pass the model class itself); None on the other rows."""
    spec = PipelineSpec.of(spec)
    storage = storage_for(spec.pipeline_root, spec.output.storage_options)
    return with_models(read_results_dir(storage, _key_or_none(partition)), as_models, spec)


def _key_or_none(partition: str | Partition | None) -> str | None:
    """A results filter's key: results are looked up by key as given, as they always were."""
    return None if partition is None else partition_key(partition)
