"""One schema for result files written apart (days built from different sources).

The rule, column by column: the types of every file holding the column are unified with
pyarrow's permissive promotion (int32 and int64 give int64, int64 and double give double,
timestamps take the finer unit, a column missing or all-null in a file takes the others'
type). Types with no common type (int64 and string, timestamp and string, ...) become
string, each value cast to its text. A column whose values cannot be cast to text (lists,
structs) beside another type is an error that names the column, the files and both types.
"""

from __future__ import annotations

from collections.abc import Sequence

import pyarrow as pa

FALLBACK_TYPE = pa.string()


class SchemaConflict(ValueError):
    """Files whose column types have no common type, not even text."""


def unified_schema(schemas: Sequence[tuple[str, pa.Schema]]) -> pa.Schema:
    """The schema every `(name, schema)` is cast to, columns in first-seen order."""
    seen: dict[str, list[tuple[str, pa.Field]]] = {}
    for name, schema in schemas:
        for field in schema:
            seen.setdefault(field.name, []).append((name, field))
    return pa.schema([_unified_field(column, fields) for column, fields in seen.items()])


def conform(table: pa.Table, schema: pa.Schema, name: str) -> pa.Table:
    """`table` (the file `name`) cast to `schema`; a column it lacks is all null."""
    columns = []
    for field in schema:
        if field.name not in table.column_names:
            columns.append(pa.nulls(len(table), field.type))
            continue
        column = table.column(field.name)
        try:
            columns.append(column.cast(field.type))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as exc:
            raise SchemaConflict(
                f"column {field.name!r} of {name} is {column.type}, which does not convert to "
                f"{field.type} (the type the other files unify to): {exc}"
            ) from None
    return pa.Table.from_arrays(columns, schema=schema)


def _unified_field(column: str, fields: list[tuple[str, pa.Field]]) -> pa.Field:
    try:
        return pa.unify_schemas(
            [pa.schema([field]) for _, field in fields], promote_options="permissive"
        ).field(column)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        pass
    for name, field in fields:
        if not pa.types.is_null(field.type) and not _castable_to_text(field.type):
            other_name, other = next((n, f) for n, f in fields if f.type != field.type)
            raise SchemaConflict(
                f"column {column!r} is {field.type} in {name} but {other.type} in "
                f"{other_name}, and {field.type} has no text form to read them together"
            )
    return pa.field(column, FALLBACK_TYPE)


def _castable_to_text(type_: pa.DataType) -> bool:
    try:
        pa.nulls(1, type_).cast(FALLBACK_TYPE)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
        return False
    return True
