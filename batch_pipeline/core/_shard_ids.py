"""The custom_ids of a shard's requests, in line order, read as cheaply as the files allow."""

from __future__ import annotations

import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pa_json

from batch_pipeline.core.jsonl import line_array, line_ends, read_line_chunks
from batch_pipeline.core.layout import shard_ids_path
from batch_pipeline.core.ledger_records import ShardRecord
from batch_pipeline.core.parquet_files import read_parquet
from batch_pipeline.core.storage import StorageRoot, StoredFile

ID_SCAN_BLOCK_BYTES = 16 * 1024 * 1024


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
