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

import base64
import gc
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields
from functools import lru_cache
from typing import Any, BinaryIO

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pa_json
import pyarrow.parquet as pq

from batch_pipeline.core._hashing import keyed_hashes, random_seeds
from batch_pipeline.core.jsonl import LineSource, line_array, line_ends, read_line_chunks
from batch_pipeline.core.types import Endpoint, RowStatus

# Error codes of requests that did not fail for good: the same request can succeed later.
RETRYABLE_ERROR_CODES = frozenset(
    {
        "batch_expired",
        "rate_limit_exceeded",
        "server_error",
        "internal_error",
        "service_unavailable",
        "timeout",
        "token_limit_exceeded",
        "upstream_unavailable",  # the local service's proxy got no answer from its upstream
    }
)
_STATUS_OF_ERROR_CODE = {
    "batch_expired": RowStatus.EXPIRED,
    "batch_cancelled": RowStatus.CANCELLED,
}

CHUNK_BYTES = 16 * 1024 * 1024
# Snappy, as pandas and Spark write by default: zstd makes files about a third smaller but
# takes twice as long to write, and writing is most of the time of a day's results.
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

OUTCOME_SCHEMA = pa.schema(
    [
        pa.field("custom_id", pa.string()),
        pa.field("status", pa.string()),
        pa.field("retryable", pa.bool_()),
        pa.field("http_status", pa.int32()),
        pa.field("response_text", pa.string()),
        pa.field("response_json", pa.string()),
        pa.field("embedding", pa.list_(pa.float32())),  # null unless /v1/embeddings
        pa.field("error_code", pa.string()),
        pa.field("error_message", pa.string()),
        pa.field("input_tokens", pa.int64()),
        pa.field("output_tokens", pa.int64()),
        pa.field("batch_request_id", pa.string()),
    ]
)


class OutcomeFileError(ValueError):
    """A line of an output or error file that cannot be read; names the file and line."""


@lru_cache(maxsize=4096)
def classify(http_status: int | None, error_code: str | None) -> tuple[RowStatus, bool]:
    """The row status and whether resubmitting the request may help.

    The one place that decides: an HTTP answer is judged by its status (2xx succeeded;
    429 and 5xx retryable; other 4xx final), an error-file line by its code (`batch_expired`
    and transient codes retryable; `batch_cancelled` final, the user asked for it).
    """
    if http_status is not None:
        if 200 <= http_status < 300:
            return RowStatus.SUCCEEDED, False
        return RowStatus.FAILED, http_status == 429 or http_status >= 500
    status = _STATUS_OF_ERROR_CODE.get(error_code or "", RowStatus.FAILED)
    return status, error_code in RETRYABLE_ERROR_CODES


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
    second copy of the outcomes.
    """
    if order is not None and (order.null_count or len(order) != len(outcomes)):
        raise ValueError("order must name one row of the outcomes for each request")
    schema = outcomes.schema.with_metadata(
        {**(outcomes.schema.metadata or {}), ROW_ORDER_KEY: REQUEST_ORDER}
    )
    step = OUTCOME_ROW_GROUP_ROWS
    positions = None if order is None else order.to_numpy(zero_copy_only=False)
    batches = outcomes.to_batches()
    with pq.ParquetWriter(dest, schema, use_dictionary=dictionary_columns(schema)) as writer:
        for start in range(0, len(outcomes), step):
            rows = (
                outcomes.slice(start, step)
                if positions is None
                else _take_rows(batches, outcomes.schema, positions[start : start + step])
            )
            writer.write_table(rows.replace_schema_metadata(schema.metadata), row_group_size=step)


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
    """Record batches of parsed lines, output file first, with their custom_ids' hashes."""
    for path in (output_path, error_path):
        if path is None:
            continue
        first_line = 1
        for chunk in read_line_chunks(path, chunk_bytes):
            ends = line_ends(chunk)
            line_count = len(ends) + (not chunk.endswith(b"\n"))
            parsed = _parse_chunk_columnar(chunk, line_count, endpoint, ends)
            if parsed is None:
                lines = [line + b"\n" for line in chunk.split(b"\n")][:line_count]
                with _gc_paused():
                    parsed = _parse_chunk(lines, path, first_line, endpoint)
            first_line += line_count
            batch, hashes = parsed
            if batch.num_rows:
                yield batch, hashes


@contextmanager
def _gc_paused() -> Iterator[None]:
    """Run the block with the cyclic garbage collector off.

    Parsing makes hundreds of thousands of short-lived dicts and tuples, freed by reference
    counting (no cycles); the collector's repeated scans of them cost a third of the time.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


_Extracted = tuple[Any, Any, Any, Any]


def _parse_chunk(
    lines: list[bytes], path: LineSource, first_line: int, endpoint: str
) -> tuple[pa.RecordBatch, np.ndarray]:
    """Consecutive lines of `path`, the first numbered `first_line`, as an outcome batch and
    the hashes of their custom_ids.

    This loop is the hot path: one orjson parse per line, then plain tuple building.
    """
    extract = _EXTRACTORS.get(endpoint, _extract_chat)
    loads, dumps, decode_error = orjson.loads, orjson.dumps, orjson.JSONDecodeError
    rows: list[tuple[Any, ...]] = []
    for index, raw in enumerate(lines):
        try:
            line = loads(raw)
            custom_id = line["custom_id"]
            response = line.get("response")
        except decode_error as exc:
            if not raw.strip():
                continue
            raise _malformed(path, first_line + index, f"not JSON ({exc})") from None
        except (KeyError, TypeError, AttributeError):
            raise _malformed(path, first_line + index, "no custom_id") from None
        if not isinstance(custom_id, str):
            raise _malformed(path, first_line + index, "custom_id is not a string")
        text = embedding = input_tokens = output_tokens = code = message = body = None
        if response:
            try:
                http_status = int(response["status_code"])
                body = response.get("body")
            except (KeyError, TypeError, ValueError, AttributeError):
                raise _malformed(path, first_line + index, "response has no status_code") from None
            if 200 <= http_status < 300:
                # An answer of an unexpected shape is kept whole in response_json.
                # (contextlib.suppress would cost a context manager per line.)
                try:  # noqa: SIM105
                    text, embedding, input_tokens, output_tokens = extract(body)
                except (KeyError, IndexError, TypeError, AttributeError, ValueError):
                    pass
            else:
                code, message = _error_fields(body)
                code = code or f"http_{http_status}"
        else:
            http_status = None
            code, message = _error_fields(line.get("error"))
            if code is None and message is None:
                raise _malformed(path, first_line + index, "neither a response nor an error")
        row_status, retryable = classify(http_status, code)
        rows.append(
            (
                custom_id,
                row_status,  # a str Enum: Arrow takes it as the string
                retryable,
                http_status,
                text,
                None if body is None else dumps(body),
                embedding,
                code,
                message,
                input_tokens,
                output_tokens,
                line.get("id"),
            )
        )
    if not rows:
        return _empty_batch()
    columns = zip(*rows, strict=True)
    try:
        arrays = [pa.array(c, type=f.type) for c, f in zip(columns, OUTCOME_SCHEMA, strict=True)]
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        last_line = first_line + len(lines) - 1
        raise OutcomeFileError(
            f"{path}, lines {first_line}-{last_line}: a value of the wrong type ({exc})"
        ) from None
    return pa.record_batch(arrays, schema=OUTCOME_SCHEMA), _id_hashes(arrays[0])


def _empty_batch() -> tuple[pa.RecordBatch, np.ndarray]:
    return pa.RecordBatch.from_pylist([], schema=OUTCOME_SCHEMA), np.empty(0, np.int64)


# -- the columnar path --------------------------------------------------------------------------

_ERROR_STRUCT = pa.struct([("code", pa.string()), ("message", pa.string())])
_LINE_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("custom_id", pa.string()),
        ("response", pa.struct([("status_code", pa.int64()), ("body", pa.struct([]))])),
        ("error", _ERROR_STRUCT),
    ]
)
_BODY_SCHEMA = pa.schema(
    [
        (
            "choices",
            pa.list_(
                pa.struct(
                    [("message", pa.struct([("content", pa.string())])), ("text", pa.string())]
                )
            ),
        ),
        ("usage", pa.struct([("prompt_tokens", pa.int64()), ("completion_tokens", pa.int64())])),
        ("error", _ERROR_STRUCT),
        ("code", pa.string()),
        ("message", pa.string()),
    ]
)
_TEXT_FIELD = {Endpoint.CHAT_COMPLETIONS.value: "message", Endpoint.COMPLETIONS.value: "text"}
_BODY_KEY = b'"body":'
# Where `"body":` is looked for, and where the usual layout's fields before it must lie.
_HEAD_WINDOW = 512
# The providers' usual layout up to the body, with scalar fields only and strings without
# escapes: such a line's first `"body":` is this key, as its strings hold no quote.
_USUAL_HEAD = (
    r'^\{\s*"id"\s*:\s*"[^"\\]*"\s*,'
    r'\s*"custom_id"\s*:\s*"[^"\\]*"\s*,'
    r'\s*"response"\s*:\s*\{\s*"status_code"\s*:\s*[0-9]{1,3}\s*,'
    r'(?:\s*"request_id"\s*:\s*(?:"[^"\\]*"|null)\s*,)?\s*"body":'
)
# What follows the body in the usual layout: the end of `response`, then `"error": null`.
_TAIL_AFTER_BODY = r'\}\s*,\s*"error"\s*:\s*null\s*\}\s*$'
_TAIL_WINDOW = 64
_SPACES = np.frombuffer(b" \t\r", np.uint8)
_MAX_SPACES = 8
_BLOCK_BYTES = 8 << 20


@dataclass(frozen=True)
class _Envelope:
    """The fields of a chunk's lines outside their bodies, one value per line."""

    batch_request_id: pa.Array
    custom_id: pa.Array
    http_status: pa.Array  # int32; null where there is no response
    answered: pa.Array  # bool: the line has a response
    has_body: pa.Array  # bool: its response has a body
    error: pa.Array  # the line's `error` object (code, message)


def _parse_chunk_columnar(
    chunk: bytes, line_count: int, endpoint: str, ends: np.ndarray | None = None
) -> tuple[pa.RecordBatch, np.ndarray] | None:
    """The `line_count` lines of `chunk` as an outcome batch, parsed column-wise; None where
    this path cannot be sure of the result. `ends`: the chunk's newline positions, if known.

    A line's `response.body` is found without parsing: `"body":` cannot occur inside a JSON
    string (its quotes would be escaped), so its first occurrence is a key; the body is what
    follows it up to the end of `response` and a final `"error": null`. Arrow's JSON reader
    then reads the bodies, which proves each is exactly one JSON object (else the chunk takes
    the line-by-line path). The rest of a line in the providers' usual layout is read by one
    regular expression (`_USUAL_HEAD`), which also proves that its `"body":` is the response's;
    other lines are read whole by Arrow. The body's bytes are kept verbatim as `response_json`.
    """
    text_field = _TEXT_FIELD.get(endpoint)
    if text_field is None or not chunk:
        return None
    if ends is None:
        ends = line_ends(chunk)
    if not chunk.endswith(b"\n"):
        ends = np.r_[ends, len(chunk)]
        chunk += b"\n"
    data = np.frombuffer(chunk, np.uint8)
    starts = np.r_[0, ends[:-1] + 1]
    # Every line must open an object: no blank lines (rows would shift against lines), and
    # no bare `null` (Arrow's reader crashes on one).
    if len(ends) != line_count or not (data[starts] == ord("{")).all():
        return None
    lines = line_array(chunk, ends)
    heads = pc.binary_slice(lines, 0, _HEAD_WINDOW)
    spans = _body_spans(lines, heads, starts, ends)
    if spans is None:
        return None
    has_body = spans[:, 0] >= 0
    braces = _braces(data, spans[has_body])
    if braces is None:
        return None
    joined, body_json = _gather_spans(pa.py_buffer(chunk), *braces)
    parsed_bodies = _read_json(joined, len(body_json), _BODY_SCHEMA)
    if parsed_bodies is None:
        return None
    envelope = _read_envelope(chunk, lines, heads, has_body)
    if envelope is None:
        return None
    custom_ids, http_status, answered = envelope.custom_id, envelope.http_status, envelope.answered
    if custom_ids.null_count or pc.sum(pc.and_(answered, http_status.is_null())).as_py():
        return None  # the line-by-line path names the line
    if not np.array_equal(envelope.has_body.to_numpy(zero_copy_only=False), has_body):
        return None  # a body this path did not find (`"body" :`, say)

    def per_line(values: pa.RecordBatch | pa.Array) -> pa.RecordBatch | pa.Array:
        """Values of the lines with a body, spread over all lines (null for the others)."""
        if has_body.all():
            return values
        where = np.full(line_count, -1, np.int64)
        where[has_body] = np.arange(len(body_json))
        return values.take(pa.array(where, mask=where < 0))

    body = per_line(parsed_bodies)
    ok = pc.and_(pc.greater_equal(http_status, 200), pc.less(http_status, 300))
    text = pc.struct_field(_first_items(body.column("choices")), text_field)
    if text_field == "message":
        text = pc.struct_field(text, "content")
    usage = body.column("usage")
    body_error = body.column("error")
    line_error = envelope.error
    no_string = pa.scalar(None, pa.string())
    http_code = pc.binary_join_element_wise("http_", http_status.cast(pa.string()), "")
    code = pc.if_else(
        answered,
        pc.if_else(
            ok,
            no_string,
            pc.coalesce(
                pc.if_else(
                    body_error.is_valid(), pc.struct_field(body_error, "code"), body.column("code")
                ),
                http_code,
            ),
        ),
        pc.struct_field(line_error, "code"),
    )
    message = pc.if_else(
        answered,
        pc.if_else(
            ok,
            no_string,
            pc.if_else(
                body_error.is_valid(),
                pc.struct_field(body_error, "message"),
                body.column("message"),
            ),
        ),
        pc.struct_field(line_error, "message"),
    )
    if pc.sum(pc.and_(pc.invert(answered), pc.and_(code.is_null(), message.is_null()))).as_py():
        return None  # neither a response nor an error: the line-by-line path names the line
    status, retryable = _classified(http_status, code)
    succeeded = pc.fill_null(ok, False)

    def when_succeeded(values: pa.Array) -> pa.Array:
        return pc.if_else(succeeded, values, pa.scalar(None, values.type))

    try:
        response_json = per_line(body_json).cast(pa.string())
    except pa.ArrowInvalid:
        return None  # not UTF-8: the line-by-line path names the line
    arrays = {
        "custom_id": custom_ids,
        "status": status,
        "retryable": retryable,
        "http_status": http_status,
        "response_text": when_succeeded(text),
        "response_json": response_json,
        "embedding": pa.nulls(line_count, pa.list_(pa.float32())),
        "error_code": code,
        "error_message": message,
        "input_tokens": when_succeeded(pc.struct_field(usage, "prompt_tokens")),
        "output_tokens": when_succeeded(pc.struct_field(usage, "completion_tokens")),
        "batch_request_id": envelope.batch_request_id,
    }
    batch = pa.record_batch(
        [one_chunk(arrays[f.name]).cast(f.type) for f in OUTCOME_SCHEMA], schema=OUTCOME_SCHEMA
    )
    return batch, _id_hashes(one_chunk(custom_ids))


def _read_envelope(
    chunk: bytes, lines: pa.BinaryArray, heads: pa.BinaryArray, has_body: np.ndarray
) -> _Envelope | None:
    """The fields outside the bodies: lines with a body in the usual layout from their heads,
    the other lines (error lines, other layouts) read whole by Arrow; None if a line does not
    fit."""
    usual = np.zeros(len(has_body), dtype=bool)
    if has_body.any():
        usual[has_body] = pc.match_substring_regex(_where(heads, has_body), _USUAL_HEAD).to_numpy(
            zero_copy_only=False
        )
    if not usual.any():
        return _read_whole_envelope(chunk, len(has_body))
    fast = _usual_envelope(_where(heads, usual))
    if fast is None:
        return _read_whole_envelope(chunk, len(has_body))
    if usual.all():
        return fast
    others = lines.filter(pa.array(~usual))
    rest = _read_whole_envelope(b"".join(others.to_pylist()), len(others))
    if rest is None:
        return None
    where = np.empty(len(usual), np.int64)
    where[usual] = np.arange(int(usual.sum()))
    where[~usual] = usual.sum() + np.arange(len(others))
    order = pa.array(where)
    return _Envelope(
        *(
            pa.concat_arrays([getattr(fast, f.name), getattr(rest, f.name)]).take(order)
            for f in fields(_Envelope)
        )
    )


# A usual head split at its quotes (its strings hold none): the pieces holding the values.
_ID_PIECE, _CUSTOM_ID_PIECE, _STATUS_PIECE = 3, 7, 12
_STATUS_PUNCTUATION = ": ,\t\r\n\x0b\x0c"


def _usual_envelope(heads: pa.BinaryArray) -> _Envelope | None:
    """`_Envelope` of lines whose heads match `_USUAL_HEAD`; None if a value is not UTF-8."""
    pieces = pc.split_pattern(heads, '"', max_splits=_STATUS_PIECE + 1)
    try:
        text = [
            pc.list_element(pieces, index).cast(pa.string())
            for index in (_ID_PIECE, _CUSTOM_ID_PIECE, _STATUS_PIECE)
        ]
    except pa.ArrowInvalid:
        return None
    count = len(heads)
    return _Envelope(
        batch_request_id=text[0],
        custom_id=text[1],
        http_status=pc.utf8_trim(text[2], _STATUS_PUNCTUATION).cast(pa.int32()),
        answered=pa.array(np.ones(count, dtype=bool)),
        has_body=pa.array(np.ones(count, dtype=bool)),
        error=pa.nulls(count, _ERROR_STRUCT),
    )


def _where(values: pa.Array, mask: np.ndarray) -> pa.Array:
    """The values where `mask` holds (the array itself, uncopied, where it holds for all)."""
    return values if mask.all() else values.filter(pa.array(mask))


def _read_whole_envelope(data: bytes, rows: int) -> _Envelope | None:
    """`_Envelope` of whole JSON lines read by Arrow; None if a line does not fit."""
    envelope = _read_json(data, rows, _LINE_SCHEMA)
    if envelope is None:
        return None
    response = envelope.column("response")
    return _Envelope(
        batch_request_id=envelope.column("id"),
        custom_id=envelope.column("custom_id"),
        http_status=pc.struct_field(response, "status_code").cast(pa.int32()),
        answered=response.is_valid(),
        has_body=pc.struct_field(response, "body").is_valid(),
        error=envelope.column("error"),
    )


def _read_json(data: bytes | pa.Buffer, rows: int, schema: pa.Schema) -> pa.RecordBatch | None:
    """JSON lines (one object each, `rows` of them) read with `schema`; None if any line does
    not fit it."""
    if not rows:
        return pa.RecordBatch.from_pylist([], schema=schema)
    try:
        table = pa_json.read_json(
            pa.BufferReader(data),
            read_options=pa_json.ReadOptions(block_size=_BLOCK_BYTES),
            parse_options=pa_json.ParseOptions(
                explicit_schema=schema, unexpected_field_behavior="ignore"
            ),
        )
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return None  # including a line longer than a block
    if table.num_rows != rows:  # a line holding two objects reads as two rows
        return None
    return pa.record_batch([one_chunk(column) for column in table.columns], schema=schema)


def _body_spans(
    lines: pa.BinaryArray, heads: pa.BinaryArray, starts: np.ndarray, ends: np.ndarray
) -> np.ndarray | None:
    """Where each line's `response.body` lies in the chunk: (begin, end) rows, (-1, -1) for a
    line without `"body":` in its head; None if a line with one does not end as the usual
    layout does."""
    key_at = pc.find_substring(heads, _BODY_KEY).to_numpy()
    spans = np.full((len(starts), 2), -1, np.int64)
    has_body = key_at >= 0
    if not has_body.any():
        return spans
    tails = pc.binary_slice(_where(lines, has_body), -_TAIL_WINDOW)
    tail_at = pc.find_substring_regex(tails, _TAIL_AFTER_BODY).to_numpy()
    if (tail_at < 0).any():
        return None
    tail_length = pc.binary_length(tails).to_numpy()
    spans[has_body, 0] = starts[has_body] + key_at[has_body] + len(_BODY_KEY)
    spans[has_body, 1] = ends[has_body] + 1 - tail_length + tail_at
    return spans


def _braces(data: np.ndarray, spans: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """The positions of the `{` opening and the `}` closing each span's object, past any
    whitespace; None if a span does not hold an object."""
    opens, closes = spans[:, 0].copy(), spans[:, 1] - 1
    for _ in range(_MAX_SPACES):
        opens += np.isin(data[opens], _SPACES)
        closes -= np.isin(data[closes], _SPACES)
    if (opens > closes).any() or not (
        (data[opens] == ord("{")).all() and (data[closes] == ord("}")).all()
    ):
        return None
    return opens, closes


def _gather_spans(
    chunk: pa.Buffer, opens: np.ndarray, closes: np.ndarray
) -> tuple[pa.Buffer, pa.Array]:
    """The bytes `chunk[open : close + 1]` of each span: as JSON lines (each span followed by a
    newline), and as a binary array of the spans alone. Arrow copies them, through a view of
    each span and the byte after it, whose place in the copy then takes the newline."""
    lengths = closes - opens + 2
    views = pa.Array.from_buffers(
        pa.binary_view(), len(opens), [None, _view_structs(chunk, opens, lengths), chunk]
    )
    copied = views.cast(pa.binary())
    joined = np.frombuffer(copied.buffers()[2], np.uint8)[: int(lengths.sum())].copy()
    offsets = np.r_[0, np.cumsum(lengths)]
    joined[offsets[1:] - 1] = ord("\n")
    buffer = pa.py_buffer(joined)
    lines = pa.Array.from_buffers(
        pa.binary(), len(opens), [None, pa.py_buffer(offsets.astype(np.int32)), buffer]
    )
    return buffer, pc.binary_slice(lines, 0, -1)


_VIEW_INLINE = 12


def _view_structs(buffer: pa.Buffer, begins: np.ndarray, lengths: np.ndarray) -> pa.Buffer:
    """The 16-byte views (Arrow's binary_view layout) of `buffer[begin : begin + length]`:
    the length, then up to 12 bytes inline, or a 4-byte prefix, buffer 0 and the offset."""
    data = np.frombuffer(buffer, np.uint8)
    views = np.zeros((len(begins), 16), np.uint8)
    views[:, 0:4] = lengths.astype("<i4").view(np.uint8).reshape(-1, 4)
    inline = lengths <= _VIEW_INLINE
    for j in range(_VIEW_INLINE):
        copied = np.flatnonzero(inline & (lengths > j))
        views[copied, 4 + j] = data[begins[copied] + j]
    far = np.flatnonzero(~inline)
    for j in range(4):
        views[far, 4 + j] = data[begins[far] + j]
    views[far, 12:16] = begins[far].astype("<i4").view(np.uint8).reshape(-1, 4)
    return pa.py_buffer(views)


_ID_SEEDS = random_seeds(1)


def _id_hashes(values: pa.Array) -> np.ndarray:
    """A 64-bit hash of each custom_id: equal ids hash equally; unequal ones rarely do, and
    `_best_lines` compares the ids of equal hashes."""
    (hashes,) = keyed_hashes(values, _ID_SEEDS)
    return hashes.view(np.int64)


def _first_items(lists: pa.ChunkedArray | pa.Array) -> pa.Array:
    """The first element of each list (null for a null or empty list)."""
    lists = one_chunk(lists)
    offsets = lists.offsets.to_numpy()
    first = offsets[:-1].astype(np.int64)
    present = (offsets[1:] > offsets[:-1]) & lists.is_valid().to_numpy(zero_copy_only=False)
    return lists.values.take(pa.array(first, mask=~present))


def one_chunk(values: pa.ChunkedArray | pa.Array) -> pa.Array:
    """The values as one array (a chunked array's chunks combined)."""
    return values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values


def _classified(http_status: pa.Array, code: pa.Array) -> tuple[pa.Array, pa.Array]:
    """`classify` applied to every (http_status, error_code) pair, calling it once per distinct
    pair."""
    # One text per pair, nulls included: "<status or ->|<n, or c + code>".
    key = pc.binary_join_element_wise(
        pc.fill_null(http_status.cast(pa.string()), "-"),
        pc.fill_null(pc.binary_join_element_wise("c", code, ""), "n"),
        "|",
    )
    indices = pc.dictionary_encode(key).indices.to_numpy()
    _, first_rows = np.unique(indices, return_index=True)
    verdicts = [
        classify(status, error_code)
        for status, error_code in zip(
            http_status.take(first_rows).to_pylist(), code.take(first_rows).to_pylist(), strict=True
        )
    ]
    where = pa.array(indices)
    return (
        pa.array([v[0].value for v in verdicts], pa.string()).take(where),
        pa.array([v[1] for v in verdicts], pa.bool_()).take(where),
    )


def _malformed(path: LineSource, line: int, reason: str) -> OutcomeFileError:
    return OutcomeFileError(f"{path}, line {line}: {reason}")


def _error_fields(error: Any) -> tuple[str | None, str | None]:
    """`code` and `message` of an error object (or of a body holding one under `error`)."""
    if error is None:
        return None, None
    if not isinstance(error, dict):
        return None, str(error)
    inner = error.get("error")
    if isinstance(inner, dict):
        error = inner
    code, message = error.get("code"), error.get("message")
    return (None if code is None else str(code)), (None if message is None else str(message))


def _extract_chat(body: dict[str, Any]) -> _Extracted:
    usage = body.get("usage") or {}
    choices = body.get("choices")
    text = choices[0]["message"].get("content") if choices else None
    if not isinstance(text, str):  # content parts or a tool call: see response_json
        text = None
    return text, None, usage.get("prompt_tokens"), usage.get("completion_tokens")


def _extract_completion(body: dict[str, Any]) -> _Extracted:
    usage = body.get("usage") or {}
    choices = body.get("choices")
    text = choices[0].get("text") if choices else None
    if not isinstance(text, str):
        text = None
    return text, None, usage.get("prompt_tokens"), usage.get("completion_tokens")


def _extract_response(body: dict[str, Any]) -> _Extracted:
    usage = body.get("usage") or {}
    parts = [
        part["text"]
        for item in body.get("output") or ()
        for part in item.get("content") or ()
        if part.get("type") == "output_text"
    ]
    text = "".join(parts) if parts else None
    return text, None, usage.get("input_tokens"), usage.get("output_tokens")


def _extract_moderation(body: dict[str, Any]) -> _Extracted:
    """The first input's verdict as text: `flagged: <categories>` or `not flagged` (the
    scores are in response_json). Moderations report no token usage."""
    result = body["results"][0]
    flagged = [name for name, hit in (result.get("categories") or {}).items() if hit]
    if not result.get("flagged"):
        return "not flagged", None, None, None
    return f"flagged: {', '.join(flagged)}" if flagged else "flagged", None, None, None


def _extract_embedding(body: dict[str, Any]) -> _Extracted:
    """The first input's vector (lowest `index`); a request with several inputs keeps only it."""
    usage = body.get("usage") or {}
    data = body.get("data") or ()
    embedding = None
    if data:
        first = data[0] if len(data) == 1 else min(data, key=lambda item: item.get("index", 0))
        embedding = first.get("embedding")
        if isinstance(embedding, str):  # encoding_format=base64: little-endian float32
            embedding = np.frombuffer(base64.b64decode(embedding), dtype="<f4").tolist()
    return None, embedding, usage.get("prompt_tokens"), 0 if usage else None


_EXTRACTORS: dict[str, Callable[[Any], _Extracted]] = {
    Endpoint.CHAT_COMPLETIONS.value: _extract_chat,
    Endpoint.RESPONSES.value: _extract_response,
    Endpoint.EMBEDDINGS.value: _extract_embedding,
    Endpoint.COMPLETIONS.value: _extract_completion,
    Endpoint.MODERATIONS.value: _extract_moderation,
}
