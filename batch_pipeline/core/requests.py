"""Source rows -> validated Batch API request lines, a record batch at a time.

Every row either becomes one JSONL request line or is rejected with a reason that names the
column at fault; nothing is dropped. The work is columnar: checks run as Arrow kernels, each
line is assembled by one Arrow join of precomputed byte pieces and the row's values
(`_request_line`), and repeated keys are found in a compact set of hashes (`_key_set`). Token
counts are estimated from byte lengths; only rows whose byte count does not fit the context
window, and every row under an enqueued-token budget, are tokenized exactly.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from batch_pipeline.core._key_set import KeySet
from batch_pipeline.core._request_line import LineLayout, Template
from batch_pipeline.core._threads import parallel_map
from batch_pipeline.core.custom_id import custom_ids_for, key_texts, utf8_or_null
from batch_pipeline.core.output_forms import output_schema_params
from batch_pipeline.core.partition import Partition, partition_key
from batch_pipeline.core.spec import PipelineSpec, SpecError
from batch_pipeline.core.tokens import (
    byte_lengths,
    context_window,
    count_tokens,
    estimate_from_byte_lengths,
    estimate_tokens,
    exact_tokens_batch,
    request_overhead_tokens,
    tool_tokens,
)
from batch_pipeline.core.types import Endpoint

LINE_SLICE_ROWS = 16_384
MAX_OUTPUT_PARAMS = ("max_tokens", "max_completion_tokens", "max_output_tokens")
# row_number: the row's 0-based position in the partition's source stream (keys may repeat).
REJECTED_SCHEMA = pa.schema(
    [
        ("row_number", pa.int64()),
        ("key", pa.string()),
        ("custom_id", pa.string()),
        ("code", pa.string()),
        ("reason", pa.string()),
    ]
)


class RejectCode:
    """Machine-readable rejection codes, beside the human reason."""

    NULL_KEY = "null_key"
    DUPLICATE_KEY = "duplicate_key"
    INVALID_TEXT = "invalid_text"
    NULL_VALUE = "null_value"
    EMPTY_VALUE = "empty_value"
    CONTEXT_WINDOW_EXCEEDED = "context_window_exceeded"
    REQUEST_TOO_LARGE = "request_too_large"
    TOKEN_BUDGET_EXCEEDED = "token_budget_exceeded"


_EMPTY = pa.scalar(b"", pa.large_binary())


def max_output_tokens(params: Mapping[str, Any]) -> int | None:
    """The output cap a request's params set (`max_tokens` and its newer names), if any."""
    for name in MAX_OUTPUT_PARAMS:
        value = params.get(name)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


@dataclass(frozen=True)
class BuiltRequests:
    """One record batch's outcome: the accepted requests (columnar) and the rejected rows."""

    custom_ids: pa.Array
    keys: pa.Array
    lines: pa.ChunkedArray  # large_binary; each a JSON object followed by "\n"
    estimated_input_tokens: np.ndarray
    rejected: pa.Table  # REJECTED_SCHEMA
    source_rows: int

    def __len__(self) -> int:
        return len(self.lines)

    def __iter__(self) -> Iterator[tuple[str, bytes, int]]:
        """(custom_id, line bytes, estimated input tokens) of each accepted request."""
        yield from zip(
            self.custom_ids.to_pylist(),
            self.lines.to_pylist(),
            self.estimated_input_tokens.tolist(),
            strict=True,
        )


class _Verdicts:
    """Each row's first rejection (code and reason), or none yet."""

    def __init__(self, rows: int) -> None:
        self.codes = np.full(rows, None, dtype=object)
        self.reasons = np.full(rows, None, dtype=object)
        self.pending = np.ones(rows, dtype=bool)

    def reject(self, mask: np.ndarray | pa.Array, code: str, reason: str) -> None:
        if isinstance(mask, pa.Array | pa.ChunkedArray):
            mask = pc.fill_null(mask, False).to_numpy(zero_copy_only=False)
        self.reject_rows(np.flatnonzero(mask & self.pending), code, reason)

    def reject_rows(self, rows: np.ndarray, code: str, reasons: str | Sequence[str]) -> None:
        self.codes[rows] = code
        self.reasons[rows] = reasons
        self.pending[rows] = False

    def table(self, first_row: int, key_text: pa.Array, custom_ids: pa.Array) -> pa.Table:
        """The rejected rows, numbered from `first_row` (the batch's place in the stream)."""
        rows = np.flatnonzero(~self.pending)
        taken = pa.array(rows, pa.int64())
        return pa.table(
            [
                pa.array(rows + first_row, pa.int64()),
                key_text.take(taken),
                custom_ids.take(taken),
                pa.array(self.codes[rows].tolist(), pa.string()),
                pa.array(self.reasons[rows].tolist(), pa.string()),
            ],
            schema=REJECTED_SCHEMA,
        )


def source_columns(spec: PipelineSpec) -> list[str]:
    """The source columns a build of `spec` reads, in its order (`RequestBuilder.columns`),
    from the spec's texts alone: for a reader of the same rows that builds no requests."""
    request = spec.request
    texts = [("request.system", request.system)] if request.system else []
    texts.append(("request.prompt", request.prompt))
    placeholders = _placeholders([Template.parse(name, text) for name, text in texts])
    return list(dict.fromkeys([spec.source.key, *placeholders]))


def _placeholders(templates: Sequence[Template]) -> list[str]:
    return list(dict.fromkeys(name for t in templates for name in t.columns))


class RequestBuilder:
    """Turns a partition's record batches into request lines; remembers the partition's keys
    so that a key seen in an earlier batch is rejected as a duplicate."""

    def __init__(self, spec: PipelineSpec) -> None:
        request = spec.request
        self.spec = spec
        self.key = spec.source.key
        self.endpoint = Endpoint(request.endpoint)
        self.model = request.model
        if request.system is not None and not self.endpoint.takes_system:
            raise SpecError(f"request.system: {self.endpoint} takes no system text; remove it")
        self.prompt = Template.parse("request.prompt", request.prompt)
        self.system = Template.parse("request.system", request.system) if request.system else None
        self.max_output_tokens = max_output_tokens(request.params)
        self.context_window = context_window(request.model, request.context_window)
        self.max_line_bytes = spec.limits.max_bytes_per_file
        params = {**request.params, **output_schema_params(self.endpoint, spec.output_schema)}
        self.overhead = request_overhead_tokens(
            self.endpoint, 1 if self.system is None else 2
        ) + tool_tokens(self.endpoint, params, self.model)
        self._layout = LineLayout(self.endpoint, self.model, params, self.prompt, self.system)
        self._partition: str | None = None
        self._seen_keys = KeySet()
        self._rows_read = 0

    @property
    def templates(self) -> list[Template]:
        return [self.prompt] if self.system is None else [self.system, self.prompt]

    @property
    def placeholders(self) -> list[str]:
        """The columns the texts refer to, in order, without repeats."""
        return _placeholders(self.templates)

    @property
    def columns(self) -> list[str]:
        """The source columns a build reads: the key and the placeholders."""
        return list(dict.fromkeys([self.key, *self.placeholders]))

    def check_schema(self, schema: pa.Schema) -> None:
        """SpecError, before any row is read, if the key or a placeholder names no column.

        An empty schema (a source holding no data at all) has nothing to check.
        """
        names = schema.names
        if not names:
            return
        listing = ", ".join(repr(name) for name in names)
        if self.key not in names:
            raise SpecError(
                f"source.key: column {self.key!r} is not in the source; its columns: {listing}"
            )
        for template in self.templates:
            for column in template.columns:
                if column not in names:
                    raise SpecError(
                        f"{template.name}: placeholder {{{column}}} names no column; "
                        f"the source's columns: {listing}"
                    )

    @property
    def _named_columns(self) -> str:
        return ", ".join(repr(column) for column in self.placeholders) or "none"

    def reset(self) -> None:
        """Forget the keys seen so far (a new partition starts)."""
        self._seen_keys = KeySet()
        self._rows_read = 0

    def build(self, batch: pa.RecordBatch, partition: str | Partition) -> BuiltRequests:
        """Check every row of `batch` and build the lines of those that pass (a key given as
        text is parsed when a new partition starts)."""
        day_key = partition_key(partition)
        if day_key != self._partition:
            self.spec.partitioning.of(partition)  # a key given as text must name one
            self.reset()
            self._partition = day_key
        self.check_schema(batch.schema)
        verdicts = _Verdicts(batch.num_rows)
        keys = batch.column(self.key)
        key_text = key_texts(keys)
        custom_ids = custom_ids_for(day_key, key_text)
        verdicts.reject(pc.is_null(keys), RejectCode.NULL_KEY, f"key column {self.key!r} is null")
        verdicts.reject(
            pc.and_(pc.is_valid(keys), pc.is_null(key_text)),
            RejectCode.INVALID_TEXT,
            f"key column {self.key!r} is not valid UTF-8 text",
        )
        verdicts.reject(
            self._seen_keys.repeated(key_text),
            RejectCode.DUPLICATE_KEY,
            f"duplicate key: key column {self.key!r} repeats the key of an earlier row of "
            f"partition {day_key}",
        )
        texts = {column: self._column_text(batch, column, verdicts) for column in self.placeholders}
        input_bytes = self._input_bytes(texts, batch.num_rows)
        exact = self._check_context(texts, input_bytes, verdicts)

        accepted = np.flatnonzero(verdicts.pending)
        lines = self._lines(accepted, custom_ids, texts)
        lines, accepted = self._check_line_size(lines, accepted, verdicts)
        estimated = self._estimate(accepted, texts, input_bytes, exact)
        lines, accepted, estimated = self._check_budget(lines, accepted, estimated, verdicts)

        rejected = verdicts.table(self._rows_read, key_text, custom_ids)
        self._rows_read += batch.num_rows
        return BuiltRequests(
            custom_ids=_rows_of(custom_ids, accepted),
            keys=_rows_of(key_text, accepted),
            lines=lines,
            estimated_input_tokens=estimated,
            rejected=rejected,
            source_rows=batch.num_rows,
        )

    # -- checks -------------------------------------------------------------------------------

    def _column_text(self, batch: pa.RecordBatch, column: str, verdicts: _Verdicts) -> pa.Array:
        """The column as text, after rejecting rows whose value is not usable text."""
        text, undecodable = _as_text(batch.column(column))
        verdicts.reject(
            undecodable,
            RejectCode.INVALID_TEXT,
            f"column {column!r} is not valid UTF-8 text (it cannot be encoded)",
        )
        verdicts.reject(pc.is_null(text), RejectCode.NULL_VALUE, f"column {column!r} is null")
        blank = pc.or_(pc.equal(pc.binary_length(text), 0), pc.utf8_is_space(text))
        verdicts.reject(blank, RejectCode.EMPTY_VALUE, f"column {column!r} is empty")
        return text

    def _input_bytes(self, texts: Mapping[str, pa.Array], rows: int) -> np.ndarray:
        """UTF-8 bytes of the filled system and prompt texts, without building them."""
        lengths = {column: byte_lengths(text) for column, text in texts.items()}
        total = np.zeros(rows, dtype=np.int64)
        for template in self.templates:
            total += template.literal_bytes
            for column in template.columns:
                total += lengths[column]
        return total

    def _check_context(
        self, texts: Mapping[str, pa.Array], input_bytes: np.ndarray, verdicts: _Verdicts
    ) -> dict[int, int]:
        """Reject rows too long for the model; returns the exact counts it had to make.

        Bytes bound tokens from above, so only rows whose byte count does not fit are counted.
        """
        limit = self.context_window - (self.max_output_tokens or 0)
        near = np.flatnonzero(verdicts.pending & (input_bytes + self.overhead > limit))
        if near.size == 0:
            return {}
        tokens = self._exact_tokens(near, texts)
        too_long = tokens > limit
        reserved = (
            f" less {self.max_output_tokens} reserved for output" if self.max_output_tokens else ""
        )
        verdicts.reject_rows(
            near[too_long],
            RejectCode.CONTEXT_WINDOW_EXCEEDED,
            [
                f"input of {count} tokens (from columns {self._named_columns}) does not fit "
                f"the context window of {self.model}: {self.context_window} tokens{reserved}"
                for count in tokens[too_long].tolist()
            ],
        )
        return dict(zip(near.tolist(), tokens.tolist(), strict=True))

    def _check_line_size(
        self, lines: pa.ChunkedArray, accepted: np.ndarray, verdicts: _Verdicts
    ) -> tuple[pa.ChunkedArray, np.ndarray]:
        sizes = byte_lengths(lines)
        too_big = sizes > self.max_line_bytes
        if not too_big.any():
            return lines, accepted
        verdicts.reject_rows(
            accepted[too_big],
            RejectCode.REQUEST_TOO_LARGE,
            [
                f"request line of {size} bytes (from columns {self._named_columns}) is larger than "
                f"limits.max_bytes_per_file ({self.max_line_bytes})"
                for size in sizes[too_big].tolist()
            ],
        )
        return lines.filter(pa.array(~too_big)), accepted[~too_big]

    def _check_budget(
        self,
        lines: pa.ChunkedArray,
        accepted: np.ndarray,
        tokens: np.ndarray,
        verdicts: _Verdicts,
    ) -> tuple[pa.ChunkedArray, np.ndarray, np.ndarray]:
        """Reject requests that alone hold more input tokens (counted exactly) than the
        enqueued-token budget: the provider would refuse every batch holding one, however
        empty its queue, until the shard gave up a day later."""
        budget = self.spec.limits.enqueued_tokens
        over = np.zeros(len(tokens), dtype=bool) if budget is None else tokens > budget
        if not over.any():
            return lines, accepted, tokens
        verdicts.reject_rows(
            accepted[over],
            RejectCode.TOKEN_BUDGET_EXCEEDED,
            [
                f"input of {count} tokens (from columns {self._named_columns}) is more than "
                f"limits.enqueued_tokens ({budget}): no batch holding it could be enqueued"
                for count in tokens[over].tolist()
            ],
        )
        return lines.filter(pa.array(~over)), accepted[~over], tokens[~over]

    # -- tokens -------------------------------------------------------------------------------

    def _exact_tokens(self, rows: np.ndarray, texts: Mapping[str, pa.Array]) -> np.ndarray:
        """The exact input tokens of some rows; a text without placeholders is counted once."""
        taken = pa.array(rows, pa.int64())
        values = {column: text.take(taken) for column, text in texts.items()}
        total = np.full(len(rows), self.overhead, dtype=np.int64)
        for template in self.templates:
            if template.columns:
                total += exact_tokens_batch(template.fill(values).to_pylist(), self.model)
            else:
                total += count_tokens(template.literal_text, self.model)
        return total

    def _estimate(
        self,
        accepted: np.ndarray,
        texts: Mapping[str, pa.Array],
        input_bytes: np.ndarray,
        exact: Mapping[int, int],
    ) -> np.ndarray:
        """Each accepted row's input tokens: counted exactly under a token budget, else the
        cheap estimate, or the exact count where the context check made one."""
        if self.spec.limits.counts_tokens_exactly:
            return self._exact_tokens(accepted, texts)
        estimated = estimate_from_byte_lengths(input_bytes[accepted], overhead=self.overhead)
        if exact:
            for position, row in enumerate(accepted.tolist()):
                if row in exact:
                    estimated[position] = exact[row]
        return estimated

    # -- lines --------------------------------------------------------------------------------

    def _lines(
        self, accepted: np.ndarray, custom_ids: pa.Array, texts: Mapping[str, pa.Array]
    ) -> pa.ChunkedArray:
        """The accepted rows' lines, built in slices on the worker threads (the numpy and
        Arrow work releases the GIL)."""
        # custom_ids need no escaping: a valid partition and a readable key or hash are made
        # of letters, digits and "_.-:" only.
        columns: dict[str | None, pa.Array] = {
            None: pc.cast(_rows_of(custom_ids, accepted), pa.large_binary()),
            **{column: _rows_of(text, accepted) for column, text in texts.items()},
        }
        starts = range(0, len(accepted), LINE_SLICE_ROWS)
        slices = parallel_map(
            lambda start: self._layout.lines(
                {name: array.slice(start, LINE_SLICE_ROWS) for name, array in columns.items()}
            ),
            starts,
        )
        return pa.chunked_array(slices, pa.large_binary())


def _rows_of(array: pa.Array, rows: np.ndarray) -> pa.Array:
    """`array` at the (ascending) `rows`; no copy when they are all of its rows."""
    if len(rows) == len(array):
        return array
    return array.take(pa.array(rows, pa.int64()))


# -- text conversion ----------------------------------------------------------------------------

# Types whose Arrow cast to text equals Python's str() (dates: isoformat).
_CAST_TO_TEXT = (pa.types.is_integer, pa.types.is_date32, pa.types.is_null)
_TEXT_OR_BYTES = (
    pa.types.is_string,
    pa.types.is_large_string,
    pa.types.is_binary,
    pa.types.is_large_binary,
)


def _as_text(column: pa.Array | pa.ChunkedArray) -> tuple[pa.Array, np.ndarray]:
    """(large_string text of each value, rows whose bytes are not valid UTF-8).

    Strings are checked, bytes decoded, other values rendered like `str()` (dates and times
    in ISO form); undecodable rows come back null.
    """
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if pa.types.is_dictionary(column.type):
        column = column.dictionary_decode()
    kind = column.type
    no_errors = np.zeros(len(column), dtype=bool)
    if any(check(kind) for check in _TEXT_OR_BYTES):
        try:
            text = pc.cast(column, pa.large_string())  # bytes are checked by the cast,
            text.validate(full=True)  # strings (which Arrow may hold unchecked) here
        except pa.ArrowInvalid:
            return _decode(column)
        return text, no_errors
    if any(check(kind) for check in _CAST_TO_TEXT):
        return pc.cast(column, pa.large_string()), no_errors
    rendered = [None if value is None else _render(value) for value in column.to_pylist()]
    return pa.array(rendered, pa.large_string()), no_errors


def _decode(column: pa.Array) -> tuple[pa.Array, np.ndarray]:
    """The column as text, and the rows whose bytes are not UTF-8 (null in the text)."""
    text = utf8_or_null(column)
    undecodable = pc.and_(column.is_valid(), text.is_null())
    return text, undecodable.to_numpy(zero_copy_only=False)


def _render(value: object) -> str:
    if isinstance(value, date | datetime | time):
        return value.isoformat()
    return str(value)


# -- estimates for existing lines (retries) ---------------------------------------------------


def body_input_texts(body: Mapping[str, Any]) -> list[str]:
    """The texts of a request body that count as input tokens."""
    texts: list[str] = []
    for message in body.get("messages") or ():
        content = message.get("content")
        if isinstance(content, str):
            texts.append(content)
    for name in ("instructions", "system", "input", "prompt"):
        value = body.get(name)
        if isinstance(value, str):
            texts.append(value)
        elif isinstance(value, list):
            texts.extend(item for item in value if isinstance(item, str))
    return texts


def estimate_request_tokens(
    requests: Sequence[Mapping[str, Any]], *, exact: bool = False
) -> np.ndarray:
    """Input tokens of parsed request lines of one file (one model), as the builder figures
    them (estimated, or with `exact` counted text by text): for retry shards made from
    existing lines."""
    if not requests:
        return np.zeros(0, dtype=np.int64)
    texts = [body_input_texts(request["body"]) for request in requests]
    model = requests[0]["body"]["model"]
    overheads = np.array(
        [
            request_overhead_tokens(request["url"], len(parts))
            + tool_tokens(request["url"], request["body"], model)
            for request, parts in zip(requests, texts, strict=True)
        ],
        dtype=np.int64,
    )
    if exact:
        return overheads + np.array(
            [sum(count_tokens(text, model) for text in parts) for parts in texts], dtype=np.int64
        )
    return estimate_tokens(["".join(parts) for parts in texts], model) + overheads
