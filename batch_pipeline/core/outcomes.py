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
from collections.abc import Callable, Generator, Iterator
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
# Chunks parsed at once (each on a thread of its own), so at most this many are held unparsed.
PARSE_AHEAD = 2
# Snappy, as pandas and Spark write by default: zstd makes files about a third smaller but
# takes twice as long to write, and writing is most of the time of a day's results. Outcome
# files too: zstd at its fastest level stores a million answers in 175 MB against 258 MB,
# but adds about 0.3 s to each 50,000-row shard's collection (a fifth of the time to collect
# a million rows), while the downloaded files, removed once the outcomes are written, and
# `output.keep_intermediates_days` keep the footprint down at no cost in speed.
PARQUET_COMPRESSION = "snappy"
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
    that order already). The rows are put in that order by one take of the whole table: a
    take per row group costs twice the CPU (each pays for combining its pieces), for a copy
    of one shard's outcomes held while they are written.
    """
    if order is not None and (order.null_count or len(order) != len(outcomes)):
        raise ValueError("order must name one row of the outcomes for each request")
    schema = outcomes.schema.with_metadata(
        {**(outcomes.schema.metadata or {}), ROW_ORDER_KEY: REQUEST_ORDER}
    )
    if order is not None:
        outcomes = outcomes.take(order)
    outcomes = outcomes.replace_schema_metadata(schema.metadata)
    step = OUTCOME_ROW_GROUP_ROWS
    with pq.ParquetWriter(
        dest,
        schema,
        use_dictionary=dictionary_columns(schema),
        write_statistics=dictionary_columns(schema),
        compression=PARQUET_COMPRESSION,
    ) as writer:
        for start in range(0, len(outcomes), step):
            writer.write_table(outcomes.slice(start, step), row_group_size=step)


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

    Chunks are parsed column-wise on the shared pool's threads, `PARSE_AHEAD` at a time (their
    parse is mostly native code that releases the GIL, so a second core takes one), and given
    in order. A chunk that path is not sure of is parsed line by line here, where the number
    of its first line is known (that parse holds the GIL: a thread of its own would not help).
    """
    for path in (output_path, error_path):
        if path is None:
            continue
        pending: deque[Future[_ChunkParse]] = deque()
        first_line = 1
        for chunk in read_line_chunks(path, chunk_bytes):
            pending.append(pool_submit(_parse_columns, chunk, endpoint))
            del chunk  # held by its task only
            if len(pending) >= PARSE_AHEAD:
                first_line = yield from _settled(pending.popleft(), path, first_line, endpoint)
        while pending:
            first_line = yield from _settled(pending.popleft(), path, first_line, endpoint)


# A chunk's column-wise parse: its lines' batch and hashes (None if that path was not sure of
# them, then the chunk itself), and its number of lines.
_ChunkParse = tuple[tuple[pa.RecordBatch, np.ndarray] | None, bytes | None, int]


def _settled(
    task: Future[_ChunkParse], path: LineSource, first_line: int, endpoint: str
) -> Generator[tuple[pa.RecordBatch, np.ndarray], None, int]:
    """Give a chunk's parsed lines (parsed line by line if the column-wise path was not sure
    of them); return the number of the next chunk's first line."""
    parsed, chunk, line_count = task.result()
    del task
    if parsed is None:
        assert chunk is not None
        lines = [line + b"\n" for line in chunk.split(b"\n")][:line_count]
        del chunk
        with gc_paused():
            parsed = parse_lines(lines, path, first_line, endpoint)
    if parsed[0].num_rows:
        yield parsed
    return first_line + line_count


def _parse_columns(chunk: bytes, endpoint: str) -> _ChunkParse:
    """One chunk of lines parsed column-wise, where that path is sure of them."""
    ends = line_ends(chunk)
    line_count = len(ends) + (not chunk.endswith(b"\n"))
    parsed = _outcome_columns.parse_chunk(chunk, line_count, endpoint, ends)
    return parsed, (chunk if parsed is None else None), line_count
