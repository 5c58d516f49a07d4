"""Writing a settled partition's results: every source row joined with its final outcome (or
its rejection), written as Parquet, with its cost, and recorded in the ledger."""

from __future__ import annotations

import logging
import time
from typing import Any

import pyarrow as pa

from batch_pipeline.core.building import REBUILD_HINT
from batch_pipeline.core.custom_id import custom_ids_for
from batch_pipeline.core.gc import IntermediatesGc
from batch_pipeline.core.layout import rejected_path, results_path
from batch_pipeline.core.outcome_groups import outcome_groups, outcome_paths
from batch_pipeline.core.output_columns import output_fields
from batch_pipeline.core.parquet_files import read_parquet
from batch_pipeline.core.partition import Partition
from batch_pipeline.core.prices import cost_usd
from batch_pipeline.core.requests import source_columns
from batch_pipeline.core.results import JoinedResults, ResultsError, assemble_results
from batch_pipeline.core.sources import Source
from batch_pipeline.core.staged_reads import StagedReads
from batch_pipeline.core.storage_uri import StorageLocationError
from batch_pipeline.core.types import PipelineError, ResultsSummary, RowStatus
from batch_pipeline.core.worker import PipelineWorker

log = logging.getLogger(__name__)


class ResultsWriter(PipelineWorker):
    """Writes the results of one pipeline's settled partitions, joining rows of `source`."""

    def __init__(self, *args: Any, source: Source, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.source = source

    def write(self, day: str | Partition) -> ResultsSummary:
        """Join every source row of a settled partition with its outcome and write Parquet."""
        day = self.spec.partitioning.of(day)
        partition = day.key
        record = self.partition_record(day)
        if record.intermediates_removed_at is not None and record.summary is not None:
            # Its outcome files are gone (`output.keep_intermediates_days`); the results stand.
            return ResultsSummary(**record.summary, already_collected=True)
        if record.settled_at is None:
            raise PipelineError(
                f"partition {partition} of {self.spec.name} is not settled yet: "
                "poll until every batch has finished"
            )
        shards = self.ledger.shards(
            self.spec.name, partition=partition, generation=record.generation
        )
        # On an object store each outcome file is fetched while the join reads the one before.
        reads = StagedReads(self.storage, outcome_paths(shards))
        try:
            outcomes = outcome_groups(reads, shards)  # type: ignore[arg-type]
            rejected = read_parquet(self.storage, rejected_path(partition, record.generation))
            summary = assemble_results(
                # Read in the join's own chunks: larger batches only wait, decoded, in memory.
                source_batches=self.source.batches(
                    day,
                    batch_size=self.tuning.chunk_rows,
                    ties=source_columns(self.spec),  # as the build read them
                ),
                source_schema=self.source.schema(),  # for an empty day
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
                output_fields=output_fields(self.spec.output_schema),
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
            reads.close()
            pa.default_memory_pool().release_unused()  # see Collector._let_go
        result = self._results_summary(partition, record.generation, summary)
        self.ledger.mark_collected(
            self.spec.name,
            partition,
            record.generation,
            results_path=result.path,
            summary=result.to_dict(),
        )
        if self.spec.output.keep_intermediates_days == 0:
            self._remove_intermediates(partition)
        return result

    def _remove_intermediates(self, partition: str) -> None:
        """Remove the partition's intermediates now that its results are written; a failure
        is only logged (the results stand, and a later `gc` tries again)."""
        gc = IntermediatesGc(self.spec, self.ledger, self.storage, clock=self._clock)
        try:
            gc.run(partition=partition)
        except (OSError, StorageLocationError) as exc:  # a disk's error or an object store's
            log.warning("%s %s: intermediates not removed: %s", self.spec.name, partition, exc)

    def _results_summary(
        self, partition: str, generation: int, summary: JoinedResults
    ) -> ResultsSummary:
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
            failures=list(summary.failures),
        )
