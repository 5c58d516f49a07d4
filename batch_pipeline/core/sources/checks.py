"""What a source's errors say: a missing column, a partition column of no day, a file that
cannot be read (named, with the line where a JSON field changes type)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import orjson

from batch_pipeline.core.partition import PartitionKind
from batch_pipeline.core.spec import PipelineSpec, SpecError


class SourceError(ValueError):
    """A source file whose rows cannot be read; the message names the file."""


def check_columns(
    spec: PipelineSpec, names: Sequence[str], extra: Sequence[str] = (), *, where: str = ""
) -> None:
    """SpecError unless the key, the partition column and `extra` columns are all present."""
    required = [
        ("source.key", spec.source.key),
        *([("source.partition_column", spec.source.partition_column)] * splits_by_day(spec)),
        *(("column", name) for name in extra),
    ]
    for role, column in required:
        if column not in names:
            listing = ", ".join(repr(name) for name in names) or "none"
            raise SpecError(
                f"{role}: column {column!r} is not in the source{where}; its columns: {listing}"
            )


def splits_by_day(spec: PipelineSpec) -> bool:
    """Whether partitions hold some days' rows by the partition column; with `partitions:
    none` the one partition holds every row, so the column is neither read nor needed."""
    return spec.partitioning.kind is not PartitionKind.NONE


def check_some_day(spec: PipelineSpec, sample: Any) -> None:
    """SpecError naming the partition column and `sample`, one of its values, when no value
    of it is a day (`sample` is None otherwise): no partition would hold any row, and every
    day would quietly build empty."""
    if sample is not None:
        column = spec.source.partition_column
        raise SpecError(
            f"source.partition_column: no value of column {column!r} is a day (a date, a "
            f"timestamp or text starting with YYYY-MM-DD); it holds e.g. {sample!r}, so every "
            "partition would be empty: name the column that dates the rows"
        )


_JSON_TYPE_CHANGE = re.compile(r"Column\(/([^)/]+)\) changed from (\w+) to (\w+)")
_JSON_KINDS = {
    str: "string",
    bool: "boolean",
    int: "number",
    float: "number",
    dict: "object",
    list: "array",
}


def unreadable(path: str, error: Exception, filesystem: Any = None) -> str:
    """The message for a file Arrow failed to read: its reason, and for a JSON field that
    changes type, the line where it does (Arrow counts rows within a block); `filesystem`:
    pyarrow's filesystem holding `path`, when it is not a local path."""
    reason = str(error).removeprefix("Invalid: ").strip()
    changed = _JSON_TYPE_CHANGE.search(reason)
    if changed is None:
        return f"source file {path} cannot be read: {reason}"
    field, before, after = changed.groups()
    line = _first_line_of_kind(path, field, after, filesystem)
    where = f" at line {line}" if line else ""
    return (
        f"source file {path} cannot be read: field {field!r} holds a {before} in earlier lines "
        f"and a {after}{where}; Arrow reads each JSON field as one type in every line, so "
        "write a text field's values as JSON strings throughout (or convert the file to Parquet)"
    )


def _first_line_of_kind(path: str, field: str, kind: str, filesystem: Any) -> int | None:
    """The 1-based number of the first line whose `field` is a JSON value of `kind`."""
    if filesystem is None or filesystem.type_name == "local":
        opened = open(path, "rb")  # noqa: SIM115 (closed by the with below)
    else:
        from batch_pipeline.core.object_storage import buffered

        opened = buffered(filesystem.open_input_file(path))
    with opened as lines:
        for number, line in enumerate(lines, start=1):
            try:
                value = orjson.loads(line).get(field)
            except (orjson.JSONDecodeError, AttributeError):
                continue
            if _JSON_KINDS.get(type(value)) == kind:
                return number
    return None
