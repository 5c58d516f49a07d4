"""Answers in a pipeline's output schema turned into typed Arrow columns, a column at a time.

The answers' texts are read by Arrow's JSON reader with an explicit schema (the columns'
types, with dates and times read as text first): one pass over the bytes, no Python object per
answer. An answer that cannot be one object on one line (no `{...}`, a line break) goes
through `_output_rows` one by one at once, which names the JSON path and the rule. Arrow
refuses a block holding an answer with a value of the wrong type or a key the schema does not
have: the block is read again without the row Arrow names (or, past a few, in smaller pieces),
and the refused answers go one by one. What the reader does not check (nulls where the schema
allows none, enums, formats, bounds, pattern, item counts) is checked column-wise over all it
read, and the answers that fail a check go one by one too, for the message.

One difference from a full JSON Schema validator: a key missing from an answer reads as null,
so an answer leaving out a property that allows null is taken with null there (strict mode
never leaves a key out).
"""

from __future__ import annotations

import re
from collections.abc import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pa_json

from batch_pipeline.core._output_rows import Violation, parse_answer
from batch_pipeline.core.output_schema import COLUMN_PREFIX, Node, OutputSchema

_SCALARS: dict[str, pa.DataType] = {
    "string": pa.string(),
    "integer": pa.int64(),
    "number": pa.float64(),
    "boolean": pa.bool_(),
}
_FORMATS: dict[str, pa.DataType] = {"date": pa.date32(), "date-time": pa.timestamp("us", "UTC")}
_MIN_BLOCK_BYTES = 1 << 16
_REFUSED_ROW = re.compile(r"in row (\d+)")
_GUIDED_RETRIES = 4  # rows a read skips by Arrow's word before it is split instead
_SPLIT_INTO = 16  # pieces a refused block is read again in
_ROW_BY_ROW_BELOW = 64  # a refused piece this small goes answer by answer
_EMPTY = pa.scalar(b"", pa.large_binary())


def arrow_type(node: Node, *, as_read: bool = False) -> pa.DataType:
    """The column type of a node; `as_read`: as the JSON reader takes it (formats as text)."""
    if node.kind == "object":
        return pa.struct(
            [
                pa.field(name, arrow_type(child, as_read=as_read), nullable=True)
                for name, child in node.properties
            ]
        )
    if node.kind == "array":
        assert node.items is not None
        return pa.list_(arrow_type(node.items, as_read=as_read))
    if node.format in _FORMATS and not as_read:
        return _FORMATS[node.format]
    return _SCALARS[node.kind]


def output_fields(schema: OutputSchema | None) -> list[pa.Field]:
    """The results' `output_<property>` columns (nullable: a row that failed has none)."""
    if schema is None:
        return []
    return [pa.field(COLUMN_PREFIX + name, arrow_type(node)) for name, node in schema.properties]


def parse_outputs(texts: pa.Array, root: Node) -> tuple[pa.StructArray, pa.Array]:
    """Each answer's typed values (a struct of the top-level properties) and, for an answer
    that does not fit, the reason (JSON path and rule), both null where the text is null."""
    texts = texts.cast(pa.string())
    count = len(texts)
    target = arrow_type(root)
    errors = np.full(count, None, dtype=object)
    present = texts.is_valid().to_numpy(zero_copy_only=False)
    readable = present & _one_object_on_one_line(texts)
    one_by_one: list[np.ndarray] = [np.flatnonzero(present & ~readable)]
    reads: list[tuple[np.ndarray, pa.StructArray]] = []
    _read_rows(texts, np.flatnonzero(readable), root, reads, one_by_one, _GUIDED_RETRIES)
    pieces = []
    if reads:  # the checks the reader does not make, over every answer it read at once
        rows = np.concatenate([rows for rows, _ in reads])
        typed, bad = typed_column(pa.concat_arrays([values for _, values in reads]), root)
        pieces.append((rows[~bad], typed.filter(pa.array(~bad)) if bad.any() else typed))
        one_by_one.append(rows[bad])
    rows = np.concatenate(one_by_one)
    if len(rows):
        pieces.append(_row_by_row(texts, rows, root, target, errors))
    return _placed(pieces, count, target), pa.array(errors.tolist(), pa.string())


def _one_object_on_one_line(texts: pa.Array) -> np.ndarray:
    """Where a text may be one JSON object on one line: it opens with `{` and closes with
    `}` (spaces aside) and holds no line break (which JSON allows only between tokens: such
    an answer is taken one by one). The others go one by one at once, not through a block
    the reader refuses."""
    trimmed = pc.utf8_trim_whitespace(texts)
    ok = pc.and_(pc.starts_with(trimmed, "{"), pc.ends_with(trimmed, "}"))
    for newline in ("\n", "\r"):
        ok = pc.and_(ok, pc.invert(pc.match_substring(texts, newline)))
    return ok.fill_null(False).to_numpy(zero_copy_only=False)


def _read_rows(
    texts: pa.Array,
    rows: np.ndarray,
    root: Node,
    reads: list[tuple[np.ndarray, pa.StructArray]],
    one_by_one: list[np.ndarray],
    guided: int,
) -> None:
    """Read the answers at `rows` column-wise; adds what was read (rows, values) to `reads`
    and the rows Arrow refuses to `one_by_one`. Where Arrow names the row it refused, the
    rows before it are read again and the rest after it (up to `guided` times); otherwise,
    or past that, the rows are read in smaller pieces."""
    if not len(rows):
        return
    read, refused = _read_json(texts.take(pa.array(rows)), root)
    if read is not None:
        reads.append((rows, read))
    elif len(rows) < _ROW_BY_ROW_BELOW:
        one_by_one.append(rows)
    elif refused is not None and guided and refused < len(rows):
        one_by_one.append(rows[refused : refused + 1])
        _read_rows(texts, rows[:refused], root, reads, one_by_one, 0)
        _read_rows(texts, rows[refused + 1 :], root, reads, one_by_one, guided - 1)
    else:
        for part in np.array_split(rows, _SPLIT_INTO):
            _read_rows(texts, part, root, reads, one_by_one, _GUIDED_RETRIES)


def _read_json(texts: pa.Array, root: Node) -> tuple[pa.StructArray | None, int | None]:
    """The texts (one JSON object each, no newline) read as the root's struct in one block;
    else None and, where Arrow says it, the row it refused."""
    lines = pc.binary_join_element_wise(
        texts.cast(pa.large_binary()), pa.scalar(b"\n", pa.large_binary()), _EMPTY
    )
    offsets = np.frombuffer(lines.buffers()[1], np.int64)
    start, end = int(offsets[lines.offset]), int(offsets[lines.offset + len(lines)])
    data = lines.buffers()[2].slice(start, end - start)
    read_type = arrow_type(root, as_read=True)
    try:
        table = pa_json.read_json(
            pa.BufferReader(data),
            # One block: rows are numbered from the first in Arrow's errors; no threads.
            read_options=pa_json.ReadOptions(
                block_size=max(end - start + 1, _MIN_BLOCK_BYTES), use_threads=False
            ),
            parse_options=pa_json.ParseOptions(
                explicit_schema=pa.schema(list(read_type)), unexpected_field_behavior="error"
            ),
        )
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as exc:
        refused = _REFUSED_ROW.search(str(exc))
        return None, int(refused.group(1)) if refused else None
    if table.num_rows != len(texts):  # two objects in one text
        return None, None
    columns = [column.combine_chunks() for column in table.columns]
    return pa.StructArray.from_arrays(columns, fields=list(read_type)), None


# -- the checks and conversions the reader does not make ------------------------------------


def typed_column(values: pa.Array, node: Node) -> tuple[pa.Array, np.ndarray]:
    """`values` as read (formats as text) converted to the node's type, and the rows that
    break a rule of the node (null not allowed, enum, format, bounds, pattern, item counts)."""
    valid = values.is_valid().to_numpy(zero_copy_only=False)
    bad = np.zeros(len(values), dtype=bool) if node.nullable else ~valid
    if node.kind == "object":
        return _typed_struct(values, node, valid, bad)
    if node.kind == "array":
        return _typed_list(values, node, valid, bad)
    for check in _scalar_checks(node):
        bad |= valid & ~check(values).fill_null(False).to_numpy(zero_copy_only=False)
    if node.format in _FORMATS:
        values, unparsed = _parsed_format(values, node.format)
        bad |= unparsed
    return values, bad


def _typed_struct(
    values: pa.StructArray, node: Node, valid: np.ndarray, bad: np.ndarray
) -> tuple[pa.Array, np.ndarray]:
    children = []
    for index, (_, child) in enumerate(node.properties):
        typed, child_bad = typed_column(values.field(index), child)
        children.append(typed)
        bad |= valid & child_bad
    fields = list(arrow_type(node))
    mask = None if valid.all() else pa.array(~valid)
    return pa.StructArray.from_arrays(children, fields=fields, mask=mask), bad


def _typed_list(
    values: pa.ListArray, node: Node, valid: np.ndarray, bad: np.ndarray
) -> tuple[pa.Array, np.ndarray]:
    assert node.items is not None
    lengths = pc.list_value_length(values).fill_null(0)
    for limit, too in ((node.min_items, pc.less), (node.max_items, pc.greater)):
        if limit is not None:
            bad |= valid & too(lengths, limit).to_numpy(zero_copy_only=False)
    items, item_bad = typed_column(values.flatten(), node.items)
    parents = pc.list_parent_indices(values).to_numpy()
    bad[parents[item_bad]] = True
    offsets = np.concatenate([[0], np.cumsum(lengths.to_numpy())]).astype(np.int32)
    mask = None if valid.all() else pa.array(~valid)
    typed = pa.ListArray.from_arrays(pa.array(offsets), items, type=arrow_type(node), mask=mask)
    return typed, bad


def _scalar_checks(node: Node) -> list[Callable[[pa.Array], pa.Array]]:
    """Column-wise checks of a scalar node's rules: each gives true where a value holds."""
    checks: list[Callable[[pa.Array], pa.Array]] = []
    if node.enum is not None:
        allowed = pa.array(list(node.enum), _SCALARS[node.kind])
        checks.append(lambda v: pc.is_in(v, value_set=allowed))
    for bound, compare in (
        (node.minimum, pc.greater_equal),
        (node.maximum, pc.less_equal),
        (node.exclusive_minimum, pc.greater),
        (node.exclusive_maximum, pc.less),
    ):
        if bound is not None:
            checks.append(lambda v, b=bound, c=compare: c(v, b))
    if node.multiple_of is not None:
        step = node.multiple_of
        checks.append(lambda v: _multiple_of(v, step))
    if node.pattern is not None:
        checks.append(lambda v: _regex_holds(v, node.pattern or ""))
    return checks


def _multiple_of(values: pa.Array, step: float) -> pa.Array:
    quotient = pc.divide(values.cast(pa.float64()), step)
    return pc.less_equal(pc.abs(pc.subtract(quotient, pc.round(quotient))), 1e-9)


def _regex_holds(values: pa.Array, pattern: str) -> pa.Array:
    """Where `pattern` matches (RE2); a pattern RE2 cannot take sends every value on."""
    try:
        return pc.match_substring_regex(values, pattern)
    except pa.ArrowInvalid:
        return pa.array(np.zeros(len(values), dtype=bool))


def _parsed_format(values: pa.Array, fmt: str) -> tuple[pa.Array, np.ndarray]:
    """Text values of a date or date-time column as dates or UTC timestamps, and the rows
    whose text is not one (null there)."""
    if fmt == "date":
        parsed = pc.strptime(values, "%Y-%m-%d", "s", error_is_null=True)
        parsed = pc.if_else(pc.equal(pc.utf8_length(values), 10), parsed, None).cast(pa.date32())
    else:
        try:
            parsed = values.cast(_FORMATS[fmt])
        except pa.ArrowInvalid:  # some value is not one: each is cast alone
            parsed = pa.array([_one_timestamp(value) for value in values], _FORMATS[fmt])
    unparsed = pc.and_(values.is_valid(), parsed.is_null()).to_numpy(zero_copy_only=False)
    return parsed, unparsed


def _one_timestamp(value: pa.Scalar) -> object:
    try:
        return pa.array([value.as_py()], pa.string()).cast(_FORMATS["date-time"])[0].as_py()
    except pa.ArrowInvalid:
        return None


# -- answers one by one, and the pieces put in place ----------------------------------------


def _row_by_row(
    texts: pa.Array, rows: np.ndarray, root: Node, target: pa.DataType, errors: np.ndarray
) -> tuple[np.ndarray, pa.StructArray]:
    """The answers at `rows` parsed and checked one by one; the reason of each that does not
    fit goes into `errors`, and its values are null."""
    values = []
    for row, text in zip(rows.tolist(), texts.take(pa.array(rows)).to_pylist(), strict=True):
        try:
            values.append(parse_answer(text, root))
        except Violation as exc:
            errors[row] = str(exc)
            values.append(None)
    return rows, pa.array(values, target)


def _placed(
    pieces: list[tuple[np.ndarray, pa.StructArray]], count: int, target: pa.DataType
) -> pa.StructArray:
    """The pieces' values at their rows, null at every other row."""
    pieces = [(rows, values) for rows, values in pieces if len(rows)]
    if not pieces:
        return pa.nulls(count, target)
    rows = np.concatenate([rows for rows, _ in pieces])
    values = pa.concat_arrays([values.cast(target) for _, values in pieces])
    where = np.full(count, -1, dtype=np.int64)
    where[rows] = np.arange(len(rows))
    return values.take(pa.array(where, mask=where < 0))
