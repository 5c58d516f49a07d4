"""A generation's outcome files as the results join takes them: one group per first-attempt
shard, with its retries, each read only when the join reaches it."""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from batch_pipeline.core.ledger_records import ShardRecord
from batch_pipeline.core.outcomes import OUTCOME_SCHEMA, in_request_order
from batch_pipeline.core.parquet_files import read_parquet
from batch_pipeline.core.results import OrderedOutcomes, OutcomeGroup
from batch_pipeline.core.sharding import FIRST_ATTEMPT
from batch_pipeline.core.storage import StorageRoot
from batch_pipeline.core.tuning import CHUNK_ROWS
from batch_pipeline.core.types import PipelineError


def outcome_groups(storage: StorageRoot, shards: list[ShardRecord]) -> list[OutcomeGroup]:
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


def outcome_paths(shards: list[ShardRecord]) -> list[str]:
    """The shards' outcome files in the order the join reads them: by index, then attempt."""
    ordered = sorted(shards, key=lambda shard: (shard.shard_index, shard.attempt))
    return [shard.outcomes_path for shard in ordered if shard.outcomes_path]


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

    return OrderedOutcomes(ids=ids, tables=tables(), close=handle.close)


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
