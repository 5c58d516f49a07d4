"""A batch's output and error files, parsed into one outcome row per custom_id.

Lines come in any order and either file may be missing, so rows are keyed by custom_id,
never by position. Files are read in chunks of lines, each chunk parsed into Arrow arrays: the
parse holds the parsed rows of one batch (bounded by the request file limits) and, per line, a
64-bit hash of its custom_id, to find custom_ids seen twice.

A chunk is parsed column-wise by Arrow's JSON reader when its lines have the providers' usual
layout (chat and text completions); any other chunk, and any chunk that reader refuses, goes
through a line-by-line orjson parse, which also names the line of a malformed one.

When a custom_id has several lines, the best answer wins: a 2xx response, then any HTTP
response, then an error-file line; among equals, the output file before the error file and
the earlier line.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from typing import BinaryIO

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from batch_pipeline.core import _outcome_columns
from batch_pipeline.core._outcome_lines import gc_paused, parse_lines
from batch_pipeline.core._outcome_rows import (
    OUTCOME_SCHEMA,
    RETRYABLE_ERROR_CODES,
    OutcomeFileError,
    classify,
    one_chunk,
)
from batch_pipeline.core._threads import pool_submit
from batch_pipeline.core.jsonl import LineSource, line_ends, read_line_chunks
from batch_pipeline.core.read_ahead import ReadAhead
from batch_pipeline.core.types import RowStatus

__all__ = [
    "CHUNK_BYTES",
    "OUTCOME_SCHEMA",
    "PARQUET_COMPRESSION",
    "PER_ROW_COLUMNS",
    "RETRYABLE_ERROR_CODES",
    "OutcomeFileError",
    "classify",
    "dictionary_columns",
    "in_request_order",
    "one_chunk",
    "parse_outcomes",
    "write_outcome_file",
]

CHUNK_BYTES = 16 * 1024 * 1024
# Chunks in the pool at once, so at most this many are held unparsed: one more than two cores
# parse side by side, so the thread done first takes the next chunk at once.
PARSE_AHEAD = 3
# Results are snappy by default (`output.compression`), as pandas and Spark write: zstd makes
# them about a third smaller but takes twice as long to write, and writing is most of the time
# of a day's results.
PARQUET_COMPRESSION = "snappy"
# Outcome files are zstd (level 1, Arrow's default): a million answers in about 175 MB against
# 258 MB snappy, kept for `output.keep_intermediates_days` and, on an object store, uploaded and
# fetched back once each. Each is written on a thread of its own while the next shard is parsed
# (see `poller`), so the slower compression is off the collection's path.
OUTCOME_COMPRESSION = "zstd"
# Columns with a value of their own on every row: a dictionary page cannot shrink them, and
# trying one costs a hash of every value on write and a dictionary decode on read (for a
# shard's outcomes, reading them back took 3.5 times as long).
PER_ROW_COLUMNS = frozenset({"custom_id", "response_text", "response_json", "batch_request_id"})

# A shard's outcome file holds its rows in the order of the shard's requests, which is the
# order of their source rows, when its schema says so: the results join then streams it.
ROW_ORDER_KEY = b"batch_pipeline.row_order"
REQUEST_ORDER = b"requests"
OUTCOME_ROW_GROUP_ROWS = 4_096


def parse_outcomes(
    output_path: LineSource | None,
    error_path: LineSource | None,
    *,
    endpoint: str,
    chunk_bytes: int = CHUNK_BYTES,
) -> pa.Table:
    """Both files (local paths or stored files) as one in-memory table (`OUTCOME_SCHEMA`) with
    one row per custom_id."""
    batches, hashes = [], []
    for batch, batch_hashes in _iter_parsed(output_path, error_path, endpoint, chunk_bytes):
        batches.append(batch)
        hashes.append(batch_hashes)
    table = pa.Table.from_batches(batches, schema=OUTCOME_SCHEMA)
    keep = _best_lines(_concat(hashes), lambda rows: table.take(rows))
    return table if keep is None else table.filter(keep)


def write_outcome_file(outcomes: pa.Table, dest: BinaryIO, *, order: pa.Array | None) -> None:
    """Write a shard's outcomes as Parquet in the order of its requests, marked so.

    `order`: the row of `outcomes` for each request, in request order (None: the rows are in
    that order already). Rows are reordered a row group at a time, so the writing holds no
    second copy of the outcomes, on a thread of their own: the next row group is gathered on
    the second core while this one is encoded.
    """
    if order is not None and (order.null_count or len(order) != len(outcomes)):
        raise ValueError("order must name one row of the outcomes for each request")
    schema = outcomes.schema.with_metadata(
        {**(outcomes.schema.metadata or {}), ROW_ORDER_KEY: REQUEST_ORDER}
    )
    positions = None if order is None else order.to_numpy(zero_copy_only=False)
    with (
        ReadAhead(_row_groups(outcomes, positions), name="outcome-rows") as row_groups,
        pq.ParquetWriter(
            dest,
            schema,
            use_dictionary=dictionary_columns(schema),
            write_statistics=dictionary_columns(schema),
            compression=OUTCOME_COMPRESSION,
        ) as writer,
    ):
        for rows in row_groups:
            writer.write_table(
                rows.replace_schema_metadata(schema.metadata), row_group_size=len(rows)
            )


def _row_groups(outcomes: pa.Table, positions: np.ndarray | None) -> Iterator[pa.Table]:
    """The outcomes' rows a row group at a time, in the order of `positions` (None: as they
    are)."""
    step = OUTCOME_ROW_GROUP_ROWS
    batches = outcomes.to_batches()
    for start in range(0, len(outcomes), step):
        if positions is None:
            yield outcomes.slice(start, step)
        else:
            yield _take_rows(batches, outcomes.schema, positions[start : start + step])


def _take_rows(batches: list[pa.RecordBatch], schema: pa.Schema, rows: np.ndarray) -> pa.Table:
    """The rows at these positions of a table made of `batches`, without the copy of every
    batch that Arrow's take on chunked columns makes first: each batch gives its own rows,
    then they are put in order."""
    starts = np.cumsum([0, *(batch.num_rows for batch in batches)])
    chunk_of = np.searchsorted(starts, rows, side="right") - 1
    by_chunk = np.argsort(chunk_of, kind="stable")
    sorted_rows, sorted_chunks = rows[by_chunk], chunk_of[by_chunk]
    bounds = np.searchsorted(sorted_chunks, np.arange(len(batches) + 1))
    pieces = [
        batch.take(pa.array(sorted_rows[bounds[i] : bounds[i + 1]] - starts[i]))
        for i, batch in enumerate(batches)
        if bounds[i + 1] > bounds[i]
    ]
    gathered = pa.Table.from_batches(pieces, schema=schema)
    return gathered.take(pa.array(np.argsort(by_chunk)))


def in_request_order(file: pq.ParquetFile) -> bool:
    """Whether an outcome file holds its rows in its shard's request order."""
    return (file.schema_arrow.metadata or {}).get(ROW_ORDER_KEY) == REQUEST_ORDER


def dictionary_columns(schema: pa.Schema) -> list[str]:
    """The columns of a Parquet file of ours worth dictionary-encoding: all but the per-row
    ones (`PER_ROW_COLUMNS`)."""
    return [name for name in schema.names if name not in PER_ROW_COLUMNS]


def _concat(arrays: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(arrays) if arrays else np.empty(0, dtype=np.int64)


def _best_lines(
    hashes: np.ndarray, read_rows: Callable[[np.ndarray], pa.Table]
) -> np.ndarray | None:
    """Which lines to keep so each custom_id keeps its best line; None if all are distinct.

    `hashes` holds a 64-bit hash of each line's custom_id: equal hashes single out the few
    candidate lines, whose custom_ids `read_rows(row numbers)` reads back to compare.
    """
    ordered = np.sort(hashes)
    repeated = ordered[1:][ordered[1:] == ordered[:-1]]
    if not len(repeated):
        return None
    rows = np.flatnonzero(np.isin(hashes, repeated))
    candidates = read_rows(rows)
    # Lower wins: 2xx answers, then other HTTP answers, then error lines; then line order.
    precedence = np.where(
        pc.equal(candidates.column("status"), RowStatus.SUCCEEDED.value).to_numpy(),
        0,
        np.where(pc.is_null(candidates.column("http_status")).to_numpy(), 2, 1),
    )
    ranked = pa.table(
        {"custom_id": candidates.column("custom_id"), "rank": precedence * len(hashes) + rows}
    )
    best = ranked.group_by("custom_id").aggregate([("rank", "min")]).column("rank_min")
    keep = np.ones(len(hashes), dtype=bool)
    keep[rows] = False
    keep[best.to_numpy() % len(hashes)] = True
    return None if keep.all() else keep  # all kept: the hashes of distinct ids collided


def _iter_parsed(
    output_path: LineSource | None, error_path: LineSource | None, endpoint: str, chunk_bytes: int
) -> Iterator[tuple[pa.RecordBatch, np.ndarray]]:
    """Record batches of parsed lines, output file first, with their custom_ids' hashes.

    Chunks are parsed column-wise on the shared pool's threads, `PARSE_AHEAD` in the pool at a
    time (their parse is mostly native code that releases the GIL, so a second core takes
    one), and given in order; the error file's first chunks join the output file's last ones.
    A chunk that path is not sure of is parsed line by line here, where the number of its
    first line is known (that parse holds the GIL: a thread of its own would not help).
    """
    files = _LineCounts([path for path in (output_path, error_path) if path is not None])
    pending: deque[tuple[int, Future[_ChunkParse]]] = deque()
    for index, path in enumerate(files.paths):
        for chunk in read_line_chunks(path, chunk_bytes):
            pending.append((index, pool_submit(_parse_columns, chunk, endpoint)))
            del chunk  # held by its task only
            if len(pending) >= PARSE_AHEAD:
                yield from _settled(*pending.popleft(), files, endpoint)
    while pending:
        yield from _settled(*pending.popleft(), files, endpoint)


class _LineCounts:
    """The files read, and the number of the next line to give of each."""

    def __init__(self, paths: list[LineSource]) -> None:
        self.paths = paths
        self.next_line = [1] * len(paths)


# A chunk's column-wise parse: its lines' batch and hashes (None if that path was not sure of
# them, then the chunk itself), and its number of lines.
_ChunkParse = tuple[tuple[pa.RecordBatch, np.ndarray] | None, bytes | bytearray | None, int]


def _settled(
    index: int, task: Future[_ChunkParse], files: _LineCounts, endpoint: str
) -> Iterator[tuple[pa.RecordBatch, np.ndarray]]:
    """Give the parsed lines of a chunk of file `index` (parsed line by line if the
    column-wise path was not sure of them)."""
    parsed, chunk, line_count = task.result()
    del task
    first_line = files.next_line[index]
    files.next_line[index] += line_count
    if parsed is None:
        assert chunk is not None
        lines = [line + b"\n" for line in chunk.split(b"\n")][:line_count]
        del chunk
        with gc_paused():
            parsed = parse_lines(lines, files.paths[index], first_line, endpoint)
    if parsed[0].num_rows:
        yield parsed


def _parse_columns(chunk: bytes | bytearray, endpoint: str) -> _ChunkParse:
    """One chunk of lines parsed column-wise, where that path is sure of them."""
    ends = line_ends(chunk)
    line_count = len(ends) + (not chunk.endswith(b"\n"))
    parsed = _outcome_columns.parse_chunk(chunk, line_count, endpoint, ends)
    return parsed, (chunk if parsed is None else None), line_count
