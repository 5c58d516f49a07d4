"""Source rows joined with their outcomes into the final Parquet file of a partition.

Every source row of the partition appears exactly once, with a status. That is checked
here, before anything is written: a row without an outcome or a rejection, an outcome
that no row claims, or an outcome claimed twice stops the write with an error naming them.

The source is read once, in chunks, each joined and then written on a background thread while
the next one is joined. Its accepted rows (those without a rejection) follow the order the
requests were built in, so the outcomes come as groups, one request shard and its retries
each, that cover consecutive accepted rows: a group is read on a thread of its own one step
ahead of the join (its custom_ids, then its rows a chunk at a time) and dropped before the one
after it is read. The outcome columns are taken into the written chunks without a copy. Memory
holds four chunks (one joined, one written, up to two source chunks read ahead) and at most
two groups' custom_ids and a chunk of their rows (two whole groups where retries make a group
load whole), however large the partition. A problem is counted over the whole partition before the
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
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from batch_pipeline.core._results_join import (
    REJECTED_CODE,
    Joiner,
    OrderedOutcomes,
    OutcomeGroup,
    ResultsError,
    ResultsIncompleteError,
    ResultsMismatchError,
    prepare_rejected,
)
from batch_pipeline.core._threads import SerialWorker
from batch_pipeline.core.failures import FailureTally
from batch_pipeline.core.layout import PARTITION_KEY, results_dir, results_partition
from batch_pipeline.core.outcomes import PARQUET_COMPRESSION
from batch_pipeline.core.parquet_files import (
    AtomicParquetFile,
    read_parquet,
    read_parquet_schema,
)
from batch_pipeline.core.read_ahead import ReadAhead
from batch_pipeline.core.schema_unify import SchemaConflict, conform, unified_schema
from batch_pipeline.core.sources import nulls_as_text
from batch_pipeline.core.storage import LocalStorage, StorageRoot
from batch_pipeline.core.tuning import CHUNK_ROWS
from batch_pipeline.core.types import Endpoint, RowStatus

if TYPE_CHECKING:  # a DataFrame only where results are read as one: pandas loads then
    import pandas as pd

__all__ = [
    "REJECTED_CODE",
    "JoinedResults",
    "OrderedOutcomes",
    "OutcomeGroup",
    "ResultsError",
    "ResultsIncompleteError",
    "ResultsMismatchError",
    "assemble_results",
    "read_results",
    "results_schema",
]

SOURCE_PREFIX = "source_"
PREVIEW_ROWS = 5
_PREVIEW_CHARS = 80
WRITER_THREAD = "results-writer"
SOURCE_THREAD = "results-source"
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


@dataclass(frozen=True)
class JoinedResults:
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
    failures: list[dict[str, Any]] = field(default_factory=list)


def results_schema(
    source_schema: pa.Schema, endpoint: str, output_fields: Sequence[pa.Field] = ()
) -> tuple[pa.Schema, dict[str, str]]:
    """The results file's columns (with the typed `output_<property>` columns of an output
    schema), and the source columns renamed to avoid a clash.

    A source column named like a results column or the `partition` folder key, in any case
    (`Status`: DuckDB and most SQL engines fold case), is kept as `source_<name>`, so
    readers never see two columns of one name.
    """
    result_fields = _result_fields(endpoint, output_fields)
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
    output_fields: Sequence[pa.Field] = (),
) -> JoinedResults:
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
    - `output_fields`: the typed output columns (`output_columns.output_fields`), taken from
      the outcomes (null where an outcome has none).

    The source is read once, chunk by chunk, each chunk joined with the group of outcomes its
    rows fall in. Raises `ResultsIncompleteError` or `ResultsMismatchError` (naming up to 10
    rows) when the rows, outcomes and rejections do not match one to one; the file is then
    left as it was.
    """
    _check_dest(dest, partition)
    if isinstance(source_batches, pa.RecordBatchReader):
        source_schema = source_schema or source_batches.schema
    if isinstance(outcomes, pa.Table):
        table = outcomes
        outcomes = [OutcomeGroup(table.num_rows, lambda: table)]
    tally = _Tally()
    schema, renamed = results_schema(source_schema or pa.schema([]), endpoint, output_fields)
    writer: _WriteBehind | None = None
    with (
        Joiner(
            outcomes,
            prepare_rejected(rejected),
            lambda table: _prepare_outcomes(table, attempts, batch_ids, endpoint, output_fields),
        ) as joiner,
        ReadAhead(
            _source_chunks(source_batches, chunk_rows, key_column, custom_id_of),
            name=SOURCE_THREAD,
        ) as chunks,
    ):
        try:
            for batch, custom_ids in chunks:
                if writer is None:
                    schema, renamed = results_schema(batch.schema, endpoint, output_fields)
                    writer = _results_file(storage, dest, schema, compression)
                out = joiner.join(batch, batch.column(key_column), custom_ids, schema)
                if out is not None:  # None: a problem was found, only checking from here on
                    writer.write(out)
                    tally.add(out, renamed.get(key_column, key_column))
            joiner.finish()
            if writer is None:  # no rows: the file still gets the source's columns
                writer = _results_file(storage, dest, schema, compression)
            writer.commit()
        finally:
            if writer is not None:
                writer.abort()
    return JoinedResults(
        path=storage.uri(dest),
        partition=partition,
        rows=joiner.rows,
        counts=dict(tally.counts),
        input_tokens=tally.input_tokens,
        output_tokens=tally.output_tokens,
        columns=[(f.name, str(f.type)) for f in schema],
        preview=tally.preview(),
        renamed_columns=renamed,
        failures=tally.failures.groups(),
    )


def _check_dest(dest: str, partition: str) -> None:
    if results_partition(dest.removeprefix(f"{results_dir()}/")) != partition:
        raise ValueError(
            f"{dest} is not in a {PARTITION_KEY}={partition} results folder; "
            "use layout.results_path() so readers see the partition"
        )


def _source_chunks(
    batches: Iterable[pa.RecordBatch],
    rows: int,
    key_column: str,
    custom_id_of: Callable[[pa.Array], pa.Array],
) -> Iterator[tuple[pa.RecordBatch, pa.Array]]:
    """The source in chunks of `rows` rows, as the join takes them, each with its custom_ids."""
    for batch in map(_readable_text, _rebatched(batches, rows)):
        if key_column not in batch.schema.names:
            raise ValueError(f"the source has no key column {key_column!r}")
        yield batch, _custom_ids(custom_id_of, batch.column(key_column))


def _custom_ids(custom_id_of: Callable[[pa.Array], pa.Array], key: pa.Array) -> pa.Array:
    custom_ids = pa.array(custom_id_of(key), pa.string())
    if len(custom_ids) != len(key):
        raise ValueError("custom_id_of returned a different number of ids than keys")
    return custom_ids


@dataclass
class _Tally:
    """What the written chunks hold: rows per status and per failure, tokens, and a preview
    whose rows without an answer come first (those are what a reader looks for)."""

    counts: Counter[str] = field(default_factory=Counter)
    input_tokens: int = 0
    output_tokens: int = 0
    failures: FailureTally = field(default_factory=FailureTally)
    unanswered: list[dict[str, Any]] = field(default_factory=list)
    head: list[dict[str, Any]] = field(default_factory=list)

    def add(self, chunk: pa.Table, key_column: str) -> None:
        for item in pc.value_counts(chunk.column("status")).to_pylist():
            self.counts[item["values"]] += item["counts"]
        self.input_tokens += pc.sum(chunk.column("input_tokens")).as_py() or 0
        self.output_tokens += pc.sum(chunk.column("output_tokens")).as_py() or 0
        self.failures.add(chunk)
        answered = pc.equal(chunk.column("status"), RowStatus.SUCCEEDED.value).to_numpy()
        if len(self.head) < PREVIEW_ROWS:
            rows = _preview(chunk, answered, key_column)
            self.head += rows[: PREVIEW_ROWS - len(self.head)]
        if len(self.unanswered) < PREVIEW_ROWS:
            rows = _preview(chunk, ~answered, key_column)
            self.unanswered += rows[: PREVIEW_ROWS - len(self.unanswered)]

    def preview(self) -> list[dict[str, Any]]:
        return (self.unanswered + self.head)[:PREVIEW_ROWS]


def _results_file(
    storage: StorageRoot, dest: str, schema: pa.Schema, compression: str
) -> _WriteBehind:
    """The results file, written behind the join; an object store takes its bytes while the
    join goes on (it is the largest file a pipeline writes, and written last)."""
    return _WriteBehind(AtomicParquetFile(storage, dest, schema, compression, streamed=True))


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
        self._stopped = False

    def write(self, chunk: pa.Table) -> None:
        """Hand the chunk to the thread, once fewer than `WRITES_AHEAD` chunks wait for it."""
        self._thread.submit(self._file.write, chunk)

    def commit(self) -> None:
        """Wait for every write, then close the file and move it into place."""
        self._thread.drain()
        self._stop(cancel=False)
        self._file.commit()

    def abort(self) -> None:
        """Drop the writes not started, wait for the thread, drop the temporary file (a no-op
        after `commit`)."""
        self._stop(cancel=True)
        self._file.abort()

    def _stop(self, *, cancel: bool) -> None:
        """Stop the thread once it has handed back the pages its own heap in Arrow's allocator
        kept (the Parquet writer's buffers come from it). Only then: handing them back after
        every chunk made the next chunk fault them in again, 7% of the writer's time."""
        if self._stopped:
            return
        self._stopped = True
        if cancel:
            self._thread.cancel()
        self._thread.call(pa.default_memory_pool().release_unused)
        self._thread.shutdown()


def read_results(storage: StorageRoot | Path, partition: str | None = None) -> pd.DataFrame:
    """All partitions' results (or one's), with the `partition` column from the folder names:
    those of a storage root, or those in a local results folder.

    Days written from differently typed sources read together under `schema_unify`'s rule
    (a common type where pyarrow promotes one, else text); a column with no text form beside
    another type is a ResultsError naming it, its days and both types. Integer columns come
    back as pandas' nullable integers (200, not 200.0).
    """
    return results_frame(read_results_table(storage, None if partition is None else [partition]))


def results_frame(table: pa.Table) -> pd.DataFrame:
    """A results table as pandas, integer columns as nullable integers (200, not 200.0)."""
    return table.to_pandas(types_mapper=_nullable_pandas_types().get)


def read_results_table(
    storage: StorageRoot | Path, partitions: Sequence[str] | None = None, *, strict: bool = False
) -> pa.Table:
    """The results of `partitions` (default: all) as one Arrow table, read as `read_results`
    reads them. `strict`: a partition without results is a FileNotFoundError naming it."""
    folder = results_dir()
    if not isinstance(storage, StorageRoot):
        storage, folder = LocalStorage(Path(storage)), ""
    files = _results_files(storage, folder)
    if partitions is not None:
        wanted = set(partitions)
        missing = sorted(wanted - {day for day, _ in files})
        if strict and missing:
            raise FileNotFoundError(
                f"no results at {storage.uri(folder)} for {', '.join(missing)}: "
                "materialize its results first"
            )
        files = [(day, key) for day, key in files if day in wanted]
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
    if not tables:
        return pa.schema([(PARTITION_KEY, pa.string())]).empty_table()
    return pa.concat_tables(tables)


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


def _nullable_pandas_types() -> dict[pa.DataType, Any]:
    """Arrow types read back as pandas' nullable ones (pandas loads only when results are
    read as a DataFrame)."""
    import pandas as pd

    return {pa.int32(): pd.Int32Dtype(), pa.int64(): pd.Int64Dtype(), pa.bool_(): pd.BooleanDtype()}


def _result_fields(endpoint: str, output_fields: Sequence[pa.Field] = ()) -> list[pa.Field]:
    embedding = [_EMBEDDING_FIELD] if endpoint == Endpoint.EMBEDDINGS.value else []
    return [*_HEAD_FIELDS, *output_fields, *_OUTCOME_FIELDS, *embedding, *_TAIL_FIELDS]


def _prepare_outcomes(
    outcomes: pa.Table,
    attempts: pa.Table | None,
    batch_ids: pa.Table | None,
    endpoint: str,
    output_fields: Sequence[pa.Field] = (),
) -> pa.Table:
    """The outcome columns the results take, with `attempts` and `batch_id` aligned to them,
    in one chunk so that taking rows per source chunk is cheap. An output column the outcomes
    lack (no answer was judged: a batch that failed whole, say) is null."""
    for f in output_fields:
        if f.name not in outcomes.schema.names:
            outcomes = outcomes.append_column(f, pa.nulls(outcomes.num_rows, f.type))
    wanted = [
        f for f in _result_fields(endpoint, output_fields) if f.name not in ("attempts", "batch_id")
    ]
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


def _aligned(ids: pa.ChunkedArray, table: pa.Table, column: str) -> pa.Array:
    """`table[column]` in the order of `ids`, null where `table` has no row for the id."""
    where = pc.index_in(ids, value_set=table.column("custom_id").combine_chunks())
    return table.column(column).combine_chunks().take(where.combine_chunks())


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


def _preview(chunk: pa.Table, wanted: np.ndarray, key_column: str) -> list[dict[str, Any]]:
    """The first wanted rows' key, status, text and error, as short JSON-friendly values (the
    custom_id is the partition and the key again: it would only take the reader's width)."""
    names = [key_column, "status", "response_text", "error_code", "error_message"]
    rows = pa.array(np.flatnonzero(wanted)[:PREVIEW_ROWS])
    head = chunk.select(names).take(rows).to_pylist()
    return [{name: _short(value) for name, value in row.items()} for row in head]


def _short(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float):
        return value
    text = str(value)
    return text if len(text) <= _PREVIEW_CHARS else text[: _PREVIEW_CHARS - 1] + "…"
