"""Source rows joined with their outcomes into the final Parquet file of a partition.

Every source row of the partition appears exactly once, with a status. That is checked
here, before anything is written: a row without an outcome or a rejection, an outcome
that no row claims, or an outcome claimed twice stops the write with an error naming them.

The source is read once, in chunks, each joined and then written on a background thread while
the next one is joined. Its accepted rows (those without a rejection) follow the order the
requests were built in, so the outcomes come as groups, one request shard and its retries
each, that cover consecutive accepted rows: a group is read when the join reaches it and
dropped before the next one is read. Memory holds two chunks (one joined, one written) and one
group, however large the partition. A problem is counted over the whole partition before the
error is raised, and the temporary file is dropped.

Layout: `layout.results_path(partition)`, `results/partition={partition}/part-0.parquet` under
the storage root (Hive style), so `pandas.read_parquet(results_dir)` and DuckDB's
`read_parquet(..., hive_partitioning=true)` read all partitions whole. Every read and write goes
through the storage interface.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from batch_pipeline.core._threads import SerialWorker
from batch_pipeline.core.layout import PARTITION_KEY, results_dir, results_partition
from batch_pipeline.core.outcomes import OUTCOME_SCHEMA, PARQUET_COMPRESSION, one_chunk
from batch_pipeline.core.parquet_files import (
    AtomicParquetFile,
    read_parquet,
    read_parquet_schema,
)
from batch_pipeline.core.schema_unify import SchemaConflict, conform, unified_schema
from batch_pipeline.core.sources import nulls_as_text
from batch_pipeline.core.storage import LocalStorage, StorageRoot
from batch_pipeline.core.tuning import CHUNK_ROWS
from batch_pipeline.core.types import Endpoint, RowStatus

SOURCE_PREFIX = "source_"
REJECTED_CODE = "rejected"
PREVIEW_ROWS = 5
_PREVIEW_CHARS = 80
_MAX_NAMED = 10
WRITER_THREAD = "results-writer"
WRITES_AHEAD = 1  # chunks handed to the writer thread and not yet written

_OUTCOME_FIELDS = [
    pa.field("http_status", pa.int32()),
    pa.field("response_text", pa.string()),
    pa.field("response_json", pa.string()),
]
_EMBEDDING_FIELD = pa.field("embedding", pa.list_(pa.float32()))
_TAIL_FIELDS = [
    pa.field("error_code", pa.string()),
    pa.field("error_message", pa.string()),
    pa.field("input_tokens", pa.int64()),
    pa.field("output_tokens", pa.int64()),
]
_HEAD_FIELDS = [
    pa.field("custom_id", pa.string()),
    pa.field("status", pa.string()),
    pa.field("attempts", pa.int32()),
    pa.field("batch_id", pa.string()),
]


class ResultsError(ValueError):
    """The inputs of a results file do not add up; nothing was written."""


class ResultsIncompleteError(ResultsError):
    """Source rows that have neither an outcome nor a rejection."""


class ResultsMismatchError(ResultsError):
    """Outcomes or rejections that do not match the source rows one to one."""


@dataclass(frozen=True)
class ResultsSummary:
    """What a results file holds: rows, rows per status, tokens, its columns and first rows."""

    path: str  # where the storage keeps it (`StorageRoot.uri`)
    partition: str
    rows: int
    counts: dict[str, int] = field(default_factory=dict)
    input_tokens: int = 0
    output_tokens: int = 0
    columns: list[tuple[str, str]] = field(default_factory=list)
    preview: list[dict[str, Any]] = field(default_factory=list)
    renamed_columns: dict[str, str] = field(default_factory=dict)


def results_schema(source_schema: pa.Schema, endpoint: str) -> tuple[pa.Schema, dict[str, str]]:
    """The results file's columns, and the source columns renamed to avoid a clash.

    A source column named like a results column or the `partition` folder key, in any case
    (`Status`: DuckDB and most SQL engines fold case), is kept as `source_<name>`, so
    readers never see two columns of one name.
    """
    result_fields = _result_fields(endpoint)
    taken = {f.name.casefold() for f in result_fields} | {PARTITION_KEY}
    renamed: dict[str, str] = {}
    source_fields = []
    for f in source_schema:
        name = f.name
        while name.casefold() in taken:
            name = SOURCE_PREFIX + name
        if name != f.name:
            renamed[f.name] = name
        taken.add(name.casefold())
        source_fields.append(f.with_name(name))
    return pa.schema([*source_fields, *result_fields]), renamed


@dataclass(frozen=True)
class OrderedOutcomes:
    """A group's outcomes in the order of its source rows: every custom_id at once, the rows
    themselves as a stream of tables, read as the join reaches them."""

    ids: pa.Array
    tables: Iterator[pa.Table]


@dataclass(frozen=True)
class OutcomeGroup:
    """The outcomes of `rows` consecutive accepted source rows (one request shard with its
    retries), read by `load` only when the join reaches them: a partition's outcomes are never
    all in memory at once.

    `open_ordered`, where given, reads them in the order of the source rows instead (None
    if they are not stored so; `load` then gives the same rows in the same order). While the
    source rows follow them one by one, the join holds no more of the group than its
    custom_ids and a chunk of rows; it takes `load`'s whole table only if they stop doing so.
    """

    rows: int
    load: Callable[[], pa.Table]
    open_ordered: Callable[[], OrderedOutcomes | None] | None = None


def assemble_results(
    *,
    source_batches: Iterable[pa.RecordBatch],
    key_column: str,
    partition: str,
    custom_id_of: Callable[[pa.Array], pa.Array],
    outcomes: pa.Table | Sequence[OutcomeGroup],
    rejected: pa.Table | None,
    storage: StorageRoot,
    dest: str,
    endpoint: str,
    attempts: pa.Table | None = None,
    batch_ids: pa.Table | None = None,
    source_schema: pa.Schema | None = None,
    compression: str = PARQUET_COMPRESSION,
    chunk_rows: int = CHUNK_ROWS,
) -> ResultsSummary:
    """Join a partition's source rows with their outcomes and write `dest` of `storage`
    atomically.

    - `source_batches`: the partition's rows, in the order the requests were built from
      (a `pa.RecordBatchReader` or any iterable of batches; give `source_schema` if it may
      yield none, so an empty partition still has the source's columns).
    - `custom_id_of`: a chunk of the key column -> its custom_ids (null where none).
    - `outcomes`: the final outcome per custom_id, in `OUTCOME_SCHEMA` columns (extra columns
      are ignored; `attempts` and `batch_id` are used when the tables below are not given):
      one table, or `OutcomeGroup`s that follow the accepted source rows in order.
    - `rejected`: one row per rejected source row, duplicate keys included: `row_number`
      (int64, 0-based position in the source stream), `key`, `custom_id`, `reason`, and
      optionally `code`.
    - `attempts` (custom_id, attempts) and `batch_ids` (custom_id, batch_id): optional.
    - `dest`: `layout.results_path(partition)`.
    - `compression`: the Parquet codec (snappy, zstd, lz4, gzip or none).
    - `chunk_rows`: source rows joined and written at a time (one row group each).

    The source is read once, chunk by chunk, each chunk joined with the group of outcomes its
    rows fall in. Raises `ResultsIncompleteError` or `ResultsMismatchError` (naming up to 10
    rows) when the rows, outcomes and rejections do not match one to one; the file is then
    left as it was.
    """
    if results_partition(dest.removeprefix(f"{results_dir()}/")) != partition:
        raise ValueError(
            f"{dest} is not in a {PARTITION_KEY}={partition} results folder; "
            "use layout.results_path() so readers see the partition"
        )
    if isinstance(source_batches, pa.RecordBatchReader):
        source_schema = source_schema or source_batches.schema
    if isinstance(outcomes, pa.Table):
        table = outcomes
        groups: Sequence[OutcomeGroup] = [OutcomeGroup(table.num_rows, lambda: table)]
    else:
        groups = outcomes
    joiner = _Joiner(
        groups,
        _prepare_rejected(rejected),
        lambda table: _prepare_outcomes(table, attempts, batch_ids, endpoint),
    )
    writer: _WriteBehind | None = None
    counts: Counter[str] = Counter()
    tokens = [0, 0]
    preview: list[dict[str, Any]] = []
    schema, renamed = results_schema(source_schema or pa.schema([]), endpoint)
    try:
        for batch in map(_readable_text, _rebatched(source_batches, chunk_rows)):
            if writer is None:
                if key_column not in batch.schema.names:
                    raise ValueError(f"the source has no key column {key_column!r}")
                schema, renamed = results_schema(batch.schema, endpoint)
                writer = _WriteBehind(AtomicParquetFile(storage, dest, schema, compression))
            key = batch.column(key_column)
            custom_ids = pa.array(custom_id_of(key), pa.string())
            if len(custom_ids) != len(key):
                raise ValueError("custom_id_of returned a different number of ids than keys")
            out = joiner.join(batch, key, custom_ids, schema)
            if out is None:
                continue  # a problem was found: only checking from here on
            writer.write(out)
            for item in pc.value_counts(out.column("status")).to_pylist():
                counts[item["values"]] += item["counts"]
            tokens[0] += pc.sum(out.column("input_tokens")).as_py() or 0
            tokens[1] += pc.sum(out.column("output_tokens")).as_py() or 0
            if not preview:
                preview = _preview(out, renamed.get(key_column, key_column))
        joiner.finish()
        if writer is None:  # no rows: the file still gets the source's columns
            writer = _WriteBehind(AtomicParquetFile(storage, dest, schema, compression))
        writer.commit()
    finally:
        if writer is not None:
            writer.abort()
    return ResultsSummary(
        path=storage.uri(dest),
        partition=partition,
        rows=joiner.rows,
        counts=dict(counts),
        input_tokens=tokens[0],
        output_tokens=tokens[1],
        columns=[(f.name, str(f.type)) for f in schema],
        preview=preview,
        renamed_columns=renamed,
    )


class _WriteBehind:
    """An `AtomicParquetFile` written on one background thread, so that compressing a chunk
    (the Parquet writer releases the GIL) overlaps with joining the next one.

    At most `WRITES_AHEAD` chunks wait for the thread, which bounds the memory they hold. A
    write's error is raised by the next `write` or by `commit`. `abort` must follow in every
    case (as with `AtomicParquetFile`): it stops the thread and drops the temporary file.
    """

    def __init__(self, file: AtomicParquetFile) -> None:
        self._file = file
        self._thread = SerialWorker(WRITER_THREAD, capacity=WRITES_AHEAD)

    def write(self, batch: pa.RecordBatch) -> None:
        """Hand the batch to the thread, once fewer than `WRITES_AHEAD` chunks wait for it."""
        self._thread.submit(self._write, batch)

    def _write(self, batch: pa.RecordBatch) -> None:
        self._file.write(batch)
        # The Parquet writer's buffers come from this thread's own heap in Arrow's allocator,
        # which keeps freed pages until this thread hands them back.
        pa.default_memory_pool().release_unused()

    def commit(self) -> None:
        """Wait for every write, then close the file and move it into place."""
        self._thread.drain()
        self._thread.shutdown()
        self._file.commit()

    def abort(self) -> None:
        """Drop the writes not started, wait for the thread, drop the temporary file (a no-op
        after `commit`)."""
        self._thread.shutdown(cancel=True)
        self._file.abort()


def read_results(storage: StorageRoot | Path, partition: str | None = None) -> pd.DataFrame:
    """All partitions' results (or one's), with the `partition` column from the folder names:
    those of a storage root, or those in a local results folder.

    Days written from differently typed sources read together under `schema_unify`'s rule
    (a common type where pyarrow promotes one, else text); a column with no text form beside
    another type is a ResultsError naming it, its days and both types. Integer columns come
    back as pandas' nullable integers (200, not 200.0).
    """
    folder = results_dir()
    if not isinstance(storage, StorageRoot):
        storage, folder = LocalStorage(Path(storage)), ""
    files = _results_files(storage, folder)
    if partition is not None:
        files = [(day, key) for day, key in files if day == partition]
    named = [(f"{PARTITION_KEY}={day} ({key.rpartition('/')[2]})", day, key) for day, key in files]
    try:
        schema = unified_schema(
            [(name, read_parquet_schema(storage, key)) for name, _, key in named]
        )
        tables = [
            _read_day(read_parquet(storage, key), schema, name, day) for name, day, key in named
        ]
    except SchemaConflict as exc:
        raise ResultsError(
            f"the results at {storage.uri(folder)} do not read together: {exc}"
        ) from None
    table = (
        pa.concat_tables(tables)
        if tables
        else pa.schema([(PARTITION_KEY, pa.string())]).empty_table()
    )
    return table.to_pandas(types_mapper=_NULLABLE_PANDAS_TYPES.get)


def _results_files(storage: StorageRoot, folder: str) -> list[tuple[str, str]]:
    """(partition, key) of every results file under `folder`, in key order."""
    keys = storage.list(folder)
    if not keys:
        raise FileNotFoundError(
            f"no results at {storage.uri(folder)}: "
            "no partition of this pipeline has been collected yet"
        )
    found = [(results_partition(key.removeprefix(folder).lstrip("/")), key) for key in keys]
    return [(day, key) for day, key in found if day is not None]


def _read_day(table: pa.Table, schema: pa.Schema, name: str, day: str) -> pa.Table:
    """One results file in the unified schema, with its day as the partition column."""
    table = conform(table, schema, name)
    return table.append_column(PARTITION_KEY, pa.array([day] * len(table), pa.string()))


_NULLABLE_PANDAS_TYPES = {
    pa.int32(): pd.Int32Dtype(),
    pa.int64(): pd.Int64Dtype(),
    pa.bool_(): pd.BooleanDtype(),
}


def _result_fields(endpoint: str) -> list[pa.Field]:
    embedding = [_EMBEDDING_FIELD] if endpoint == Endpoint.EMBEDDINGS.value else []
    return [*_HEAD_FIELDS, *_OUTCOME_FIELDS, *embedding, *_TAIL_FIELDS]


def _prepare_outcomes(
    outcomes: pa.Table, attempts: pa.Table | None, batch_ids: pa.Table | None, endpoint: str
) -> pa.Table:
    """The outcome columns the results take, with `attempts` and `batch_id` aligned to them,
    in one chunk so that taking rows per source chunk is cheap."""
    wanted = [f for f in _result_fields(endpoint) if f.name not in ("attempts", "batch_id")]
    missing = [f.name for f in wanted if f.name not in outcomes.schema.names]
    if missing:
        raise ValueError(f"the outcomes table lacks the columns {missing}")
    table = outcomes.select([f.name for f in wanted]).cast(pa.schema(wanted))
    ids = table.column("custom_id")
    for column, given, type_ in (
        ("attempts", attempts, pa.int32()),
        ("batch_id", batch_ids, pa.string()),
    ):
        if given is not None:
            values = _aligned(ids, given, column)
        elif column in outcomes.schema.names:
            values = outcomes.column(column)
        else:
            values = pa.nulls(len(ids), type_)
        table = table.append_column(column, values.cast(type_))
    return table.combine_chunks()


def _refuse_repeated_outcomes(ids: pa.ChunkedArray | pa.Array) -> None:
    repeated = _duplicates(ids)
    if repeated:
        raise ResultsMismatchError(
            f"{len(repeated)} custom_ids have more than one outcome, e.g. {repeated[:_MAX_NAMED]}"
        )


def _aligned(ids: pa.ChunkedArray, table: pa.Table, column: str) -> pa.Array:
    """`table[column]` in the order of `ids`, null where `table` has no row for the id."""
    where = pc.index_in(ids, value_set=table.column("custom_id").combine_chunks())
    return table.column(column).combine_chunks().take(where.combine_chunks())


def _duplicates(values: pa.ChunkedArray | pa.Array) -> list[Any]:
    """The values occurring more than once (cheap when there are none)."""
    if pc.count_distinct(values, mode="all").as_py() == len(values):
        return []
    counts = pc.value_counts(values)
    return counts.filter(pc.greater(counts.field("counts"), 1)).field("values").to_pylist()


def _readable_text(batch: pa.RecordBatch) -> pa.RecordBatch:
    """The batch with any text that is not UTF-8 (Arrow reads Parquet text unchecked, and
    writers outside Arrow may give such bytes) decoded with U+FFFD in place of the bad bytes,
    so that every reader of the results can read them; such rows were rejected by the build."""
    try:
        batch.validate(full=True)
        return batch
    except pa.ArrowInvalid:
        pass
    columns = []
    for column in batch.columns:
        if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
            try:
                column.validate(full=True)
            except pa.ArrowInvalid:
                raw = pc.cast(column, pa.large_binary()).to_pylist()
                decoded = [None if v is None else v.decode("utf-8", "replace") for v in raw]
                column = pa.array(decoded, column.type)
        columns.append(column)
    return pa.record_batch(columns, schema=batch.schema)


def _rebatched(batches: Iterable[pa.RecordBatch], rows: int) -> Iterator[pa.RecordBatch]:
    """The batches regrouped into batches of at most `rows` rows, all with the first one's
    schema (`nulls_as_text`)."""
    pending: list[pa.RecordBatch] = []
    pending_rows = 0
    schema: pa.Schema | None = None
    for batch in batches:
        if schema is None:
            schema = nulls_as_text(batch.schema)
        if batch.schema != schema:
            try:
                batch = batch.cast(schema)
            except (pa.ArrowException, ValueError) as exc:
                raise ValueError(f"a source batch does not match the schema {schema}") from exc
        pending.append(batch)
        pending_rows += batch.num_rows
        if pending_rows >= rows:
            yield from _combined(pending, schema, rows)
            pending, pending_rows = [], 0
    if pending_rows:
        yield from _combined(pending, schema, rows)


def _combined(
    batches: list[pa.RecordBatch], schema: pa.Schema, rows: int
) -> Iterator[pa.RecordBatch]:
    combined = pa.Table.from_batches(batches, schema).combine_chunks()
    yield from combined.to_batches(max_chunksize=rows)


def _prepare_rejected(rejected: pa.Table | None) -> pa.Table:
    """`rejected` sorted by row number, with the expected types and a `code` column (default
    "rejected"); rows rejected twice or before the first row are refused."""
    if rejected is None or not rejected.num_rows:
        rejected = pa.table({"row_number": pa.array([], pa.int64())})
    if "row_number" not in rejected.schema.names:
        raise ValueError("the rejected table lacks the column 'row_number'")
    if "reason" not in rejected.schema.names and rejected.num_rows:
        raise ValueError("the rejected table lacks the column 'reason'")
    count = rejected.num_rows

    def column(name: str, type_: pa.DataType, default: Any = None) -> pa.Array:
        if name not in rejected.schema.names:
            return pa.array([default] * count, type_)
        values = rejected.column(name).cast(type_)
        return values.fill_null(default) if default is not None else values

    table = pa.table(
        {
            "row_number": column("row_number", pa.int64()),
            "key": column("key", pa.string()),
            "custom_id": column("custom_id", pa.string()),
            "reason": column("reason", pa.string()),
            "code": column("code", pa.string(), REJECTED_CODE),
        }
    ).sort_by("row_number")
    repeated = _duplicates(table.column("row_number"))
    if repeated:
        raise ResultsMismatchError(f"rows rejected more than once: {repeated[:_MAX_NAMED]}")
    negative = pc.filter(table.column("row_number"), pc.less(table.column("row_number"), 0))
    if len(negative):
        raise ResultsMismatchError(
            f"{len(negative)} rejections name rows before the first source row, "
            f"e.g. {negative.to_pylist()[:_MAX_NAMED]}"
        )
    return table.combine_chunks()


class _Problems:
    """What does not add up, counted over the whole partition, with the first examples."""

    def __init__(self) -> None:
        self.found: dict[str, tuple[int, list[str]]] = {}

    def add(self, kind: str, examples: Callable[[], list[str]], count: int) -> None:
        if count:
            seen, named = self.found.get(kind, (0, []))
            if len(named) < _MAX_NAMED:
                named = named + examples()[: _MAX_NAMED - len(named)]
            self.found[kind] = (seen + count, named)

    def __bool__(self) -> bool:
        return bool(self.found)

    def raise_first(self, source_rows: int) -> None:
        for kind, (error, template) in _PROBLEMS.items():
            if kind in self.found:
                count, named = self.found[kind]
                message = template.format(count=count, named=", ".join(named), rows=source_rows)
                raise error(message)


_PROBLEMS: dict[str, tuple[type[ResultsError], str]] = {
    "rejection_beyond": (
        ResultsMismatchError,
        "{count} rejections name rows beyond the {rows} source rows, e.g. {named}",
    ),
    "rejection_key": (
        ResultsMismatchError,
        "{count} rejections do not match the source row they name: {named}",
    ),
    "claimed_twice": (
        ResultsMismatchError,
        "{count} outcomes are claimed by several source rows (duplicate keys not rejected), "
        "e.g. {named}",
    ),
    "no_outcome": (
        ResultsIncompleteError,
        "{count} source rows have no outcome and no rejection, e.g. the keys {named}; "
        "refusing to write results that would lose them",
    ),
    "unclaimed": (
        ResultsMismatchError,
        "{count} outcomes match no accepted source row of the partition, e.g. {named}",
    ),
}


class _GroupOutcomes:
    """One group's outcome rows as the join takes them: read in order while the source rows
    follow an ordered group one by one, else (or from the first row that does not) its whole
    table, loaded once."""

    def __init__(self, group: OutcomeGroup, prepare: Callable[[pa.Table], pa.Table]) -> None:
        self._group, self._prepare = group, prepare
        self._table: pa.Table | None = None
        ordered = group.open_ordered() if group.open_ordered is not None else None
        if ordered is None:
            self.ids = self._load().column("custom_id").combine_chunks()
        else:
            self.ids = one_chunk(ordered.ids)
            self._tables: Iterator[pa.Table] | None = ordered.tables
            self._read = 0  # rows of the stream read so far
            self._pending: pa.Table | None = None  # the part of the last table not yet taken
            self._following: pa.Array | None = None  # what `find` gave for the next rows
        _refuse_repeated_outcomes(self.ids)

    def _load(self) -> pa.Table:
        self._table = self._prepare(self._group.load())
        self._tables, self._pending = None, None
        return self._table

    def find(self, ids: pa.Array) -> pa.Array:
        """The position of each id among the group's outcomes, null where it has none."""
        if self._table is None:
            following = self.ids.slice(self._read, len(ids))
            if (
                len(following) == len(ids)
                and pc.all(pc.fill_null(pc.equal(ids, following), False)).as_py()
            ):
                self._following = pa.array(np.arange(self._read, self._read + len(ids)), pa.int32())
                return self._following
        return pc.index_in(ids, value_set=self.ids)

    def take(self, found: pa.Array) -> pa.Table:
        """The outcome rows at these positions (null rows where `found` is null)."""
        if self._table is None:
            if found is self._following:
                return self._next_rows(len(found))
            self._load()  # the rows stopped following the group: take from all of it
        assert self._table is not None
        return self._table.take(found)

    def _next_rows(self, count: int) -> pa.Table:
        pieces = [self._prepare(OUTCOME_SCHEMA.empty_table())] if not count else []
        while count:
            if self._pending is None or not self._pending.num_rows:
                table = next(self._tables, None) if self._tables is not None else None
                if table is None:
                    raise ResultsMismatchError("an ordered outcome file ended before its ids")
                self._pending = self._prepare(table)
            piece = self._pending.slice(0, count)
            self._pending = self._pending.slice(piece.num_rows)
            pieces.append(piece)
            count -= piece.num_rows
            self._read += piece.num_rows
        return pieces[0] if len(pieces) == 1 else pa.concat_tables(pieces)


@dataclass
class _Group:
    """The outcome group being joined: its outcomes and which of them are taken."""

    first_row: int  # ordinal of its first accepted source row
    rows: int
    outcomes: _GroupOutcomes
    ids: pa.Array
    claimed: np.ndarray


class _Joiner:
    """Joins source chunks, in order, with the rejections and the outcome groups."""

    def __init__(
        self,
        groups: Sequence[OutcomeGroup],
        rejected: pa.Table,
        prepare: Callable[[pa.Table], pa.Table],
    ) -> None:
        self._groups = list(groups)
        self._next_group = 0
        self._prepare = prepare
        self._group: _Group | None = None
        self._previous_ids: pa.Array | None = None  # taken in the group before: for messages
        self._rejected = rejected
        self._rejected_rows = rejected.column("row_number").to_numpy()
        self._accepted = 0  # accepted source rows so far
        self.rows = 0  # source rows so far
        self.problems = _Problems()

    def join(
        self, batch: pa.RecordBatch, key: pa.Array, custom_ids: pa.Array, schema: pa.Schema
    ) -> pa.RecordBatch | None:
        """The chunk with its results columns; None once a problem has been found."""
        offset, count = self.rows, batch.num_rows
        self.rows += count
        low, high = np.searchsorted(self._rejected_rows, [offset, offset + count])
        rejection_index = np.full(count, -1, dtype=np.int64)
        rejection_index[self._rejected_rows[low:high] - offset] = np.arange(low, high)
        self._check_rejected_keys(key, rejection_index)
        accepted = np.flatnonzero(rejection_index < 0)
        taken = self._take_outcomes(key, custom_ids, accepted)
        if self.problems:
            return None
        if len(accepted) < count:  # rows for the rejected ones, null
            expand = np.full(count, -1, dtype=np.int64)
            expand[accepted] = np.arange(len(accepted))
            taken = taken.take(pa.array(expand, mask=expand < 0))
        taken = taken.combine_chunks()
        is_rejected = pa.array(rejection_index >= 0)
        rejection = self._rejected.take(pa.array(rejection_index, mask=rejection_index < 0))

        def outcome_or(name: str, if_rejected: pa.Array | pa.Scalar) -> pa.Array:
            return pc.if_else(is_rejected, if_rejected, taken.column(name).combine_chunks())

        columns = {
            "custom_id": custom_ids,
            "status": outcome_or("status", pa.scalar(RowStatus.REJECTED.value)),
            "attempts": outcome_or("attempts", pa.scalar(0, pa.int32())),
            "error_code": outcome_or("error_code", rejection.column("code").combine_chunks()),
            "error_message": outcome_or(
                "error_message", rejection.column("reason").combine_chunks()
            ),
        }
        arrays = list(batch.columns)
        for f in list(schema)[batch.num_columns :]:
            column = columns[f.name] if f.name in columns else taken.column(f.name)
            arrays.append(one_chunk(column).cast(f.type))
        return pa.record_batch(arrays, schema=schema)

    def finish(self) -> None:
        """Raise for what did not add up: rejections past the end, outcomes no row took."""
        beyond = self._rejected_rows[self._rejected_rows >= self.rows]
        self.problems.add(
            "rejection_beyond",
            lambda: [f"row {row} of {self.rows}" for row in beyond.tolist()],
            len(beyond),
        )
        while self._group is not None or self._next_group < len(self._groups):
            if self._group is None:
                self._open_next()
                continue
            self._close(self._group)
            self._group = None
        self.problems.raise_first(self.rows)

    # -- outcomes ---------------------------------------------------------------------------

    def _take_outcomes(self, key: pa.Array, custom_ids: pa.Array, accepted: np.ndarray) -> pa.Table:
        """The outcome rows of the accepted rows, in their order."""
        pieces = []
        done = 0
        while done < len(accepted):
            rows, piece = self._take_from_group(key, custom_ids, accepted[done:])
            done += rows
            if piece is not None:
                pieces.append(piece)
        if not pieces:
            return self._empty_outcomes()
        return pa.concat_tables(pieces)

    def _take_from_group(
        self, key: pa.Array, custom_ids: pa.Array, accepted: np.ndarray
    ) -> tuple[int, pa.Table | None]:
        """How many of the leading accepted rows fall in one group, and their outcome rows
        (None past the last group).

        A group is referenced from here only until this returns, so the join holds no group
        but the current one when the next one is read.
        """
        group = self._current()
        rows = (
            accepted if group is None else accepted[: group.first_row + group.rows - self._accepted]
        )
        self._accepted += len(rows)
        ids = custom_ids.take(pa.array(rows))
        if group is None:
            self._no_outcome(key, ids, rows, np.ones(len(rows), dtype=bool))
            return len(rows), None
        found = group.outcomes.find(ids)
        missing = found.is_null().to_numpy(zero_copy_only=False)
        self._no_outcome(key, ids, rows, missing)
        self._claim(group, found.drop_null().to_numpy().astype(np.int64))
        return len(rows), group.outcomes.take(found)

    def _claim(self, group: _Group, positions: np.ndarray) -> None:
        """Mark these outcome rows taken; note those taken before or twice here."""
        order = np.sort(positions)
        again = order[1:][order[1:] == order[:-1]]
        twice = np.union1d(again, positions[group.claimed[positions]])
        group.claimed[positions] = True
        self.problems.add(
            "claimed_twice",
            lambda: group.ids.take(pa.array(twice[:_MAX_NAMED])).to_pylist(),
            len(twice),
        )

    def _current(self) -> _Group | None:
        """The group the next accepted row falls in (None: past the last one)."""
        while self._group is None or self._accepted >= self._group.first_row + self._group.rows:
            if self._group is not None:
                self._close(self._group)
                self._previous_ids, self._group = self._claimed_ids(self._group), None
            if self._next_group >= len(self._groups):
                return None
            self._open_next()
        return self._group

    def _open_next(self) -> None:
        group = self._groups[self._next_group]
        self._next_group += 1
        outcomes = _GroupOutcomes(group, self._prepare)
        first_row = (
            self._accepted if self._group is None else self._group.first_row + self._group.rows
        )
        self._group = _Group(
            first_row=first_row,
            rows=group.rows,
            outcomes=outcomes,
            ids=outcomes.ids,
            claimed=np.zeros(len(outcomes.ids), dtype=bool),
        )

    def _close(self, group: _Group) -> None:
        unclaimed = np.flatnonzero(~group.claimed)
        self.problems.add(
            "unclaimed",
            lambda: group.ids.take(pa.array(unclaimed[:_MAX_NAMED])).to_pylist(),
            len(unclaimed),
        )

    def _no_outcome(
        self, key: pa.Array, ids: pa.Array, rows: np.ndarray, missing: np.ndarray
    ) -> None:
        """Note accepted rows without an outcome in their group: a key repeated without a
        rejection when an outcome of the current or previous group has it, else lost rows."""
        if not missing.any():
            return
        where = np.flatnonzero(missing)
        missing_ids = ids.take(pa.array(where))
        repeated = np.zeros(len(where), dtype=bool)
        for known in (self._claimed_ids(self._group), self._previous_ids):
            if known is not None:
                repeated |= pc.is_in(missing_ids, value_set=known).to_numpy(zero_copy_only=False)
        self.problems.add(
            "claimed_twice",
            lambda: missing_ids.filter(pa.array(repeated)).to_pylist(),
            int(repeated.sum()),
        )
        lost = rows[where[~repeated]]
        self.problems.add(
            "no_outcome",
            lambda: [
                f"{key[i].as_py()!r} ({ids[j].as_py()})"
                for i, j in zip(
                    lost[:_MAX_NAMED].tolist(), where[~repeated][:_MAX_NAMED].tolist(), strict=True
                )
            ],
            len(lost),
        )

    @staticmethod
    def _claimed_ids(group: _Group | None) -> pa.Array | None:
        return None if group is None else group.ids.filter(pa.array(group.claimed))

    def _empty_outcomes(self) -> pa.Table:
        """No outcome rows, in the columns a prepared group has (for a chunk all rejected)."""
        return self._prepare(OUTCOME_SCHEMA.empty_table())

    # -- rejections -------------------------------------------------------------------------

    def _check_rejected_keys(self, key: pa.Array, rejection_index: np.ndarray) -> None:
        """A rejection must carry the key of the row it names."""
        rows = np.flatnonzero(rejection_index >= 0)
        if not len(rows) or not (pa.types.is_string(key.type) or pa.types.is_integer(key.type)):
            return  # other key types print differently here and in the request builder
        source_keys = key.take(pa.array(rows)).cast(pa.string())
        given = self._rejected.column("key").take(pa.array(rejection_index[rows])).combine_chunks()
        same = pc.fill_null(pc.equal(source_keys, given), pc.is_null(given))
        wrong = np.flatnonzero(~same.to_numpy(zero_copy_only=False))
        self.problems.add(
            "rejection_key",
            lambda: [
                f"row {self.rows - len(key) + rows[i]}: key {given[i].as_py()!r} in the "
                f"rejection, {source_keys[i].as_py()!r} in the source"
                for i in wrong[:_MAX_NAMED].tolist()
            ],
            len(wrong),
        )


def _preview(batch: pa.RecordBatch, key_column: str) -> list[dict[str, Any]]:
    """The first rows' key, id, status, text and error, as short JSON-friendly values."""
    names = [key_column, "custom_id", "status", "response_text", "error_code", "error_message"]
    head = batch.slice(0, PREVIEW_ROWS).select(names).to_pylist()
    return [{name: _short(value) for name, value in row.items()} for row in head]


def _short(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float):
        return value
    text = str(value)
    return text if len(text) <= _PREVIEW_CHARS else text[: _PREVIEW_CHARS - 1] + "…"
