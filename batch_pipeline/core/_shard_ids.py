"""The file beside each shard that holds its requests' custom_ids and the build's token
estimates, in line order: written with the shard, and read back so that collecting a batch
need not read the shard again to know what it asked for, nor a retry parse its lines to
estimate their tokens again."""

from __future__ import annotations

from typing import BinaryIO

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pa_json
import pyarrow.parquet as pq

from batch_pipeline.core.jsonl import line_array, line_ends, read_line_chunks
from batch_pipeline.core.layout import shard_ids_path
from batch_pipeline.core.ledger_records import ShardRecord
from batch_pipeline.core.parquet_files import read_parquet
from batch_pipeline.core.storage import StorageRoot, StoredFile

ID_SCAN_BLOCK_BYTES = 16 * 1024 * 1024
TOKENS_COLUMN = "estimated_input_tokens"  # absent from the files of earlier versions


def write_shard_ids(
    handle: BinaryIO, custom_ids: list[pa.Array | pa.ChunkedArray], tokens: list[np.ndarray]
) -> None:
    """The ids file of one shard: its requests' custom_ids and estimated input tokens."""
    table = pa.table(
        {
            "custom_id": pa.chunked_array(custom_ids, pa.string()),
            TOKENS_COLUMN: pa.array(np.concatenate(tokens or [[]]), pa.int64()),
        }
    )
    pq.write_table(table, handle, use_dictionary=False, write_statistics=False)


def built_estimates(storage: StorageRoot, path: str) -> tuple[list[str], list[int]] | None:
    """The custom_ids and the build's token estimates of the shard at `path`, in line order;
    None when its ids file is gone, cut short, or from a version that kept no estimates."""
    try:
        written = read_parquet(storage, shard_ids_path(path))
        return written["custom_id"].to_pylist(), written[TOKENS_COLUMN].to_pylist()
    except (OSError, KeyError, pa.ArrowException):
        return None


def expected_ids(storage: StorageRoot, shard: ShardRecord) -> pa.Array:
    """The custom_ids of the shard's requests, in line order: from the file of them the
    build wrote beside the shard, else read from the shard without parsing the bodies."""
    try:
        written = read_parquet(storage, shard_ids_path(shard.path))
        if written.num_rows == shard.rows:
            return written["custom_id"].combine_chunks()
    except (OSError, KeyError, pa.ArrowException):  # gone or cut short: read the shard
        pass
    stored = StoredFile(storage, shard.path)
    ids = []
    for chunk in read_line_chunks(stored, ID_SCAN_BLOCK_BYTES):
        found = _leading_custom_ids(chunk)
        if found is None:
            return _expected_ids_parsed(stored)
        ids.append(found)
    return pa.chunked_array(ids, pa.string()).combine_chunks()


def _expected_ids_parsed(stored: StoredFile) -> pa.Array:
    """`expected_ids` for request lines of another layout: each line parsed as JSON."""
    try:
        with stored.open() as handle:
            table = pa_json.read_json(
                handle,
                read_options=pa_json.ReadOptions(block_size=ID_SCAN_BLOCK_BYTES),
                parse_options=pa_json.ParseOptions(
                    explicit_schema=pa.schema([("custom_id", pa.string())]),
                    unexpected_field_behavior="ignore",
                ),
            )
        return table["custom_id"].combine_chunks()
    except pa.ArrowInvalid:  # a line longer than a block: read it line by line
        with stored.open() as lines:
            return pa.array([orjson.loads(line)["custom_id"] for line in lines], pa.string())


_LEADING_CUSTOM_ID = r'^\{"custom_id":"(?P<id>[^"\\]*)",'
_LEADING_BYTES = 512


def _leading_custom_ids(chunk: bytes) -> pa.Array | None:
    """The custom_id of each line of `chunk`, where every line starts as the request builder
    writes it (`{"custom_id":"<no escapes>",`); None otherwise."""
    ends = line_ends(chunk)
    if not len(ends) or ends[-1] != len(chunk) - 1:
        return None
    lines = line_array(chunk, ends)
    found = pc.extract_regex(pc.binary_slice(lines, 0, _LEADING_BYTES), _LEADING_CUSTOM_ID)
    if found.null_count:
        return None
    try:
        return found.field("id").cast(pa.string())
    except pa.ArrowInvalid:  # not UTF-8
        return None
