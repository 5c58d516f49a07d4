"""Source rows joined with their outcomes into the final Parquet file of a partition.

Every source row of the partition appears exactly once, with a status. That is checked
here, before anything is written: a row without an outcome or a rejection, an outcome
that no row claims, or an outcome claimed twice stops the write with an error naming them.

The source is read once, in chunks: each chunk's custom_ids are computed and the chunk is
spilled to a temporary Arrow file, so the join and the checks run over the custom_id
column only (one hash lookup for the whole partition); the rows are then read back chunk
by chunk, joined and written. Memory holds the outcome table and the id columns, not the
source rows.

Layout: `{results_dir}/partition={partition}/part-0.parquet` (Hive style), so
`pandas.read_parquet(results_dir)` and DuckDB's `read_parquet(..., hive_partitioning=true)`
read all partitions whole.
"""

from __future__ import annotations

import tempfile
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from batch_pipeline.core.outcomes import AtomicParquetFile
from batch_pipeline.core.storage import TEMP_PREFIX
from batch_pipeline.core.types import Endpoint, RowStatus

PARTITION_KEY = "partition"
SOURCE_PREFIX = "source_"
CHUNK_ROWS = 65_536
REJECTED_CODE = "rejected"
PREVIEW_ROWS = 5
_PREVIEW_CHARS = 80
_MAX_NAMED = 10

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

    path: Path
    partition: str
    rows: int
    counts: dict[str, int] = field(default_factory=dict)
    input_tokens: int = 0
    output_tokens: int = 0
    columns: list[tuple[str, str]] = field(default_factory=list)
    preview: list[dict[str, Any]] = field(default_factory=list)
    renamed_columns: dict[str, str] = field(default_factory=dict)


def results_path(results_dir: Path, partition: str, part: int = 0) -> Path:
    """Where a partition's results file goes, in the Hive layout readers expect."""
    return Path(results_dir) / f"{PARTITION_KEY}={partition}" / f"part-{part}.parquet"


def results_schema(source_schema: pa.Schema, endpoint: str) -> tuple[pa.Schema, dict[str, str]]:
    """The results file's columns, and the source columns renamed to avoid a clash.

    A source column named like a results column or the `partition` folder key is kept as
    `source_<name>`, so Hive readers never see two columns of one name.
    """
    result_fields = _result_fields(endpoint)
    taken = {f.name for f in result_fields} | {PARTITION_KEY}
    renamed: dict[str, str] = {}
    source_fields = []
    for f in source_schema:
        name = f.name
        while name in taken:
            name = SOURCE_PREFIX + name
        if name != f.name:
            renamed[f.name] = name
        taken.add(name)
        source_fields.append(f.with_name(name))
    return pa.schema([*source_fields, *result_fields]), renamed


def assemble_results(
    *,
    source_batches: Iterable[pa.RecordBatch],
    key_column: str,
    partition: str,
    custom_id_of: Callable[[pa.Array], pa.Array],
    outcomes: pa.Table,
    rejected: pa.Table | None,
    dest_path: Path,
    endpoint: str,
    attempts: pa.Table | None = None,
    batch_ids: pa.Table | None = None,
    source_schema: pa.Schema | None = None,
) -> ResultsSummary:
    """Join a partition's source rows with their outcomes and write `dest_path` atomically.

    - `source_batches`: the partition's rows, in the order the requests were built from
      (a `pa.RecordBatchReader` or any iterable of batches; give `source_schema` if it may
      yield none, so an empty partition still has the source's columns).
    - `custom_id_of`: a chunk of the key column -> its custom_ids (null where none).
    - `outcomes`: the final outcome per custom_id, in `OUTCOME_SCHEMA` columns (extra columns
      are ignored; `attempts` and `batch_id` are used when the tables below are not given).
    - `rejected`: one row per rejected source row, duplicate keys included: `row_number`
      (int64, 0-based position in the source stream), `key`, `custom_id`, `reason`, and
      optionally `code`. Without `row_number`, rejections are matched by custom_id: the
      first row of a custom_id with an outcome takes the outcome, the others the rejections.
    - `attempts` (custom_id, attempts) and `batch_ids` (custom_id, batch_id): optional.
    - `dest_path`: `results_path(results_dir, partition)`.

    Raises `ResultsIncompleteError` or `ResultsMismatchError` (naming up to 10 rows) before
    anything is written when the rows, outcomes and rejections do not match one to one.
    """
    dest_path = Path(dest_path)
    if dest_path.parent.name != f"{PARTITION_KEY}={partition}":
        raise ValueError(
            f"{dest_path} is not in a {PARTITION_KEY}={partition} folder; "
            "use results_path() so readers see the partition"
        )
    if isinstance(source_batches, pa.RecordBatchReader):
        source_schema = source_schema or source_batches.schema
    outcome_table = _prepare_outcomes(outcomes, attempts, batch_ids, endpoint)
    dest_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(
        dir=dest_path.parent, prefix=f"{TEMP_PREFIX}spill-"
    ) as spill_dir:
        spill = _spill_source(
            source_batches, source_schema, key_column, custom_id_of, Path(spill_dir) / "source"
        )
        plan = _plan(spill, outcome_table, rejected)
        schema, renamed = results_schema(spill.schema, endpoint)
        counts: Counter[str] = Counter()
        tokens = [0, 0]
        preview: list[dict[str, Any]] = []
        with (
            AtomicParquetFile(dest_path, schema) as writer,
            pa.OSFile(str(spill.path)) as spilled,
            pa.ipc.open_file(spilled) as reader,
        ):
            offset = 0
            for index in range(reader.num_record_batches):
                batch = reader.get_batch(index)
                out = _result_batch(batch, offset, spill, plan, outcome_table, schema)
                offset += batch.num_rows
                writer.write(out)
                for item in pc.value_counts(out.column("status")).to_pylist():
                    counts[item["values"]] += item["counts"]
                tokens[0] += pc.sum(out.column("input_tokens")).as_py() or 0
                tokens[1] += pc.sum(out.column("output_tokens")).as_py() or 0
                if not preview:
                    preview = _preview(out, renamed.get(key_column, key_column))
    return ResultsSummary(
        path=dest_path,
        partition=partition,
        rows=spill.rows,
        counts=dict(counts),
        input_tokens=tokens[0],
        output_tokens=tokens[1],
        columns=[(f.name, str(f.type)) for f in schema],
        preview=preview,
        renamed_columns=renamed,
    )


def read_results(results_dir: Path, partition: str | None = None) -> pd.DataFrame:
    """All partitions' results (or one's), with the `partition` column from the folder names.

    Integer columns come back as pandas' nullable integers (200, not 200.0).
    """
    partitioning = ds.partitioning(pa.schema([(PARTITION_KEY, pa.string())]), flavor="hive")
    dataset = ds.dataset(Path(results_dir), format="parquet", partitioning=partitioning)
    schemas = [fragment.physical_schema for fragment in dataset.get_fragments()]
    if schemas:  # partitions written from different source schemas still read together
        schema = pa.unify_schemas(
            [*schemas, pa.schema([(PARTITION_KEY, pa.string())])], promote_options="permissive"
        )
        dataset = ds.dataset(
            Path(results_dir), format="parquet", partitioning=partitioning, schema=schema
        )
    where = None if partition is None else pc.field(PARTITION_KEY) == partition
    return dataset.to_table(filter=where).to_pandas(types_mapper=_NULLABLE_PANDAS_TYPES.get)


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
    """The outcome columns the results take, with `attempts` and `batch_id` aligned to them.

    Strings are held as large strings in one chunk, so taking rows per source chunk is
    cheap and a partition's texts may pass 2 GB.
    """
    wanted = [f for f in _result_fields(endpoint) if f.name not in ("attempts", "batch_id")]
    missing = [f.name for f in wanted if f.name not in outcomes.schema.names]
    if missing:
        raise ValueError(f"the outcomes table lacks the columns {missing}")
    table = outcomes.select([f.name for f in wanted]).cast(pa.schema(wanted))
    ids = table.column("custom_id")
    repeated = _duplicates(ids)
    if repeated:
        raise ResultsMismatchError(
            f"{len(repeated)} custom_ids have more than one outcome, e.g. {repeated[:_MAX_NAMED]}"
        )
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
    large = pa.schema(
        f.with_type(pa.large_string()) if f.type == pa.string() else f for f in table.schema
    )
    return table.cast(large).combine_chunks()


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


@dataclass
class _Spill:
    """The source rows spilled to an Arrow file, with their ids and keys kept in memory."""

    path: Path
    schema: pa.Schema
    custom_ids: pa.ChunkedArray
    keys: pa.ChunkedArray

    @property
    def rows(self) -> int:
        return len(self.custom_ids)


def _spill_source(
    source_batches: Iterable[pa.RecordBatch],
    schema: pa.Schema | None,
    key_column: str,
    custom_id_of: Callable[[pa.Array], pa.Array],
    path: Path,
) -> _Spill:
    """Write the source to `path` in chunks of about `CHUNK_ROWS`, noting each row's custom_id."""
    ids: list[pa.Array] = []
    keys: list[pa.Array] = []
    writer: pa.ipc.RecordBatchFileWriter | None = None
    try:
        for batch in _rebatched(source_batches, schema, CHUNK_ROWS):
            if writer is None:
                schema = batch.schema
                if key_column not in schema.names:
                    raise ValueError(f"the source has no key column {key_column!r}")
                writer = pa.ipc.new_file(str(path), schema)
            key = batch.column(key_column)
            custom_id = pa.array(custom_id_of(key), pa.string())
            if len(custom_id) != len(key):
                raise ValueError("custom_id_of returned a different number of ids than keys")
            ids.append(custom_id)
            keys.append(key)
            writer.write_batch(batch)
        if writer is None:  # no rows: the file still gets the source's columns
            schema = schema or pa.schema([(key_column, pa.string())])
            writer = pa.ipc.new_file(str(path), schema)
    finally:
        if writer is not None:
            writer.close()
    return _Spill(
        path=path,
        schema=schema,
        custom_ids=pa.chunked_array(ids, pa.string()),
        keys=pa.chunked_array(keys, schema.field(key_column).type),
    )


def _rebatched(
    batches: Iterable[pa.RecordBatch], schema: pa.Schema | None, rows: int
) -> Iterator[pa.RecordBatch]:
    """The batches regrouped into batches of about `rows` rows, all with one schema."""
    pending: list[pa.RecordBatch] = []
    pending_rows = 0
    for batch in batches:
        if schema is None:
            schema = batch.schema
        elif batch.schema != schema:
            try:
                batch = batch.cast(schema)
            except (pa.ArrowException, ValueError) as exc:
                raise ValueError(f"a source batch does not match the schema {schema}") from exc
        pending.append(batch)
        pending_rows += batch.num_rows
        if pending_rows >= rows:
            yield from pa.Table.from_batches(pending, schema).combine_chunks().to_batches()
            pending, pending_rows = [], 0
    if pending_rows:
        yield from pa.Table.from_batches(pending, schema).combine_chunks().to_batches()


@dataclass
class _Plan:
    """For every source row: the outcome row it takes and the rejection it gets (-1: none)."""

    outcome_index: np.ndarray
    rejection_index: np.ndarray
    rejections: pa.Table  # reason, code


def _plan(spill: _Spill, outcomes: pa.Table, rejected: pa.Table | None) -> _Plan:
    """Match every source row to one outcome or one rejection, or raise naming the culprits."""
    n = spill.rows
    outcome_ids = outcomes.column("custom_id").combine_chunks()
    found = pc.index_in(spill.custom_ids, value_set=outcome_ids).combine_chunks()
    outcome_index = found.fill_null(-1).to_numpy().astype(np.int64)

    rejected = _prepare_rejected(rejected)
    if "row_number" in rejected.schema.names:
        row_numbers = rejected.column("row_number").to_numpy()
        _check_row_numbers(spill, rejected, row_numbers)
    else:
        row_numbers = _rows_of_rejections(spill, rejected, outcome_index >= 0)
    rejection_index = np.full(n, -1, dtype=np.int64)
    rejection_index[row_numbers] = np.arange(len(row_numbers))
    outcome_index[rejection_index >= 0] = -1

    missing = np.flatnonzero((outcome_index < 0) & (rejection_index < 0))
    if len(missing):
        named = ", ".join(
            f"{spill.keys[i].as_py()!r} ({spill.custom_ids[i].as_py()})"
            for i in missing[:_MAX_NAMED].tolist()
        )
        raise ResultsIncompleteError(
            f"{len(missing)} source rows have no outcome and no rejection, e.g. the keys "
            f"{named}; refusing to write results that would lose them"
        )
    claims = np.bincount(outcome_index[outcome_index >= 0], minlength=len(outcome_ids))
    for problem, culprits in (
        ("are claimed by several source rows (duplicate keys not rejected)", claims > 1),
        ("match no accepted source row of the partition", claims == 0),
    ):
        where = np.flatnonzero(culprits)
        if len(where):
            named_ids = outcome_ids.take(pa.array(where[:_MAX_NAMED])).to_pylist()
            raise ResultsMismatchError(f"{len(where)} outcomes {problem}, e.g. {named_ids}")
    return _Plan(outcome_index, rejection_index, rejected.select(["reason", "code"]))


def _prepare_rejected(rejected: pa.Table | None) -> pa.Table:
    """`rejected` with the expected types and a `code` column (default "rejected")."""
    if rejected is None:
        rejected = pa.table({"row_number": pa.array([], pa.int64())})
    columns = {
        name: rejected.column(name).cast(type_)
        if name in rejected.schema.names
        else pa.nulls(rejected.num_rows, type_)
        for name, type_ in (("key", pa.string()), ("custom_id", pa.string()))
    }
    if "reason" not in rejected.schema.names and rejected.num_rows:
        raise ValueError("the rejected table lacks the column 'reason'")
    columns["reason"] = (
        rejected.column("reason").cast(pa.string())
        if "reason" in rejected.schema.names
        else pa.nulls(0, pa.string())
    )
    columns["code"] = (
        rejected.column("code").cast(pa.string()).fill_null(REJECTED_CODE)
        if "code" in rejected.schema.names
        else pa.array([REJECTED_CODE] * rejected.num_rows, pa.string())
    )
    if "row_number" in rejected.schema.names:
        columns["row_number"] = rejected.column("row_number").cast(pa.int64())
    return pa.table(columns)


def _check_row_numbers(spill: _Spill, rejected: pa.Table, row_numbers: np.ndarray) -> None:
    """Rejections must name distinct rows of the source, holding the key they carry."""
    outside = row_numbers[(row_numbers < 0) | (row_numbers >= spill.rows)]
    if len(outside):
        raise ResultsMismatchError(
            f"{len(outside)} rejections name rows beyond the {spill.rows} source rows, "
            f"e.g. {outside[:_MAX_NAMED].tolist()}"
        )
    repeated = _duplicates(rejected.column("row_number"))
    if repeated:
        raise ResultsMismatchError(f"rows rejected more than once: {repeated[:_MAX_NAMED]}")
    key_type = spill.keys.type
    if not (pa.types.is_string(key_type) or pa.types.is_integer(key_type)) or not len(rejected):
        return  # other key types print differently here and in the request builder
    source_keys = spill.keys.take(pa.array(row_numbers)).cast(pa.string()).combine_chunks()
    given_keys = rejected.column("key").combine_chunks()
    same = pc.fill_null(pc.equal(source_keys, given_keys), pc.is_null(given_keys))
    wrong = np.flatnonzero(~same.to_numpy(zero_copy_only=False))
    if len(wrong):
        examples = [
            f"row {row_numbers[i]}: key {given_keys[i].as_py()!r} in the rejection, "
            f"{source_keys[i].as_py()!r} in the source"
            for i in wrong[:_MAX_NAMED].tolist()
        ]
        raise ResultsMismatchError(
            f"{len(wrong)} rejections do not match the source row they name: {examples}"
        )


def _rows_of_rejections(spill: _Spill, rejected: pa.Table, has_outcome: np.ndarray) -> np.ndarray:
    """Row numbers for rejections that carry none, matched by custom_id (or key) in order.

    Within the rows sharing a custom_id, the first takes the outcome if there is one; the
    rejections of that custom_id go to the remaining rows in source order.
    """
    source = pc.coalesce(spill.custom_ids, pc.cast(spill.keys, pa.string())).combine_chunks()
    given = pc.coalesce(rejected.column("custom_id"), rejected.column("key")).combine_chunks()
    both = pa.concat_arrays([source, given])
    codes = pc.dictionary_encode(both, null_encoding="encode").indices.to_numpy()
    source_codes, given_codes = codes[: len(source)], codes[len(source) :]
    eligible_rank = _rank_within_groups(source_codes) - has_outcome
    eligible = np.flatnonzero(eligible_rank >= 0)
    width = len(source) + len(given) + 1
    slots = source_codes[eligible] * width + eligible_rank[eligible]
    order = np.argsort(slots, kind="stable")
    sorted_slots = slots[order]
    wanted = given_codes * width + _rank_within_groups(given_codes)
    position = np.searchsorted(sorted_slots, wanted)
    matched = position < len(sorted_slots)
    matched[matched] = sorted_slots[position[matched]] == wanted[matched]
    if not matched.all():
        unmatched = rejected.column("key").take(pa.array(np.flatnonzero(~matched)))
        raise ResultsMismatchError(
            f"{len(unmatched)} rejections match no source row without an outcome, "
            f"e.g. the keys {unmatched.to_pylist()[:_MAX_NAMED]}"
        )
    return eligible[order[position]]


def _rank_within_groups(codes: np.ndarray) -> np.ndarray:
    """For each element, how many equal codes come before it (0 for the first)."""
    order = np.argsort(codes, kind="stable")
    ordered = codes[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    group_start = np.repeat(starts, np.diff(np.r_[starts, len(codes)]))
    ranks = np.empty(len(codes), dtype=np.int64)
    ranks[order] = np.arange(len(codes)) - group_start
    return ranks


def _result_batch(
    batch: pa.RecordBatch,
    offset: int,
    spill: _Spill,
    plan: _Plan,
    outcomes: pa.Table,
    schema: pa.Schema,
) -> pa.RecordBatch:
    """One chunk of source rows, starting at row `offset`, with their results columns."""
    rows = slice(offset, offset + batch.num_rows)
    outcome_index = plan.outcome_index[rows]
    rejection_index = plan.rejection_index[rows]
    is_rejected = pa.array(rejection_index >= 0)
    taken = outcomes.take(pa.array(outcome_index, mask=outcome_index < 0)).combine_chunks()
    rejection = plan.rejections.take(pa.array(rejection_index, mask=rejection_index < 0))

    def outcome_or(name: str, if_rejected: pa.Array | pa.Scalar) -> pa.Array:
        return pc.if_else(is_rejected, if_rejected, taken.column(name).combine_chunks())

    columns = {
        "custom_id": spill.custom_ids.slice(offset, batch.num_rows).combine_chunks(),
        "status": outcome_or("status", pa.scalar(RowStatus.REJECTED.value)),
        "attempts": outcome_or("attempts", pa.scalar(0, pa.int32())),
        "error_code": outcome_or("error_code", rejection.column("code").combine_chunks()),
        "error_message": outcome_or("error_message", rejection.column("reason").combine_chunks()),
    }
    arrays = list(batch.columns)
    for f in list(schema)[batch.num_columns :]:
        column = columns[f.name] if f.name in columns else taken.column(f.name).combine_chunks()
        arrays.append(column.cast(f.type))
    return pa.record_batch(arrays, schema=schema)


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
