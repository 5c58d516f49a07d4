"""One answer checked against the output schema's node tree in plain Python: the reference
for the columnar parse (`output_columns`), and the path that names the JSON path and the rule
for the few answers that parse does not take."""

from __future__ import annotations

import math
import re
from datetime import date, datetime
from functools import lru_cache
from typing import Any

import orjson

from batch_pipeline.core.output_schema import Node, json_type

_TYPE_CHECKS = {
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: (
        (isinstance(v, int) and not isinstance(v, bool))
        or (isinstance(v, float) and v.is_integer())
    ),
    "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
}
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


class Violation(ValueError):
    """An answer that breaks the schema: where (a JSON path) and which rule."""

    def __init__(self, path: str, rule: str) -> None:
        super().__init__(f"{path}: {rule}")


def parse_answer(text: str, root: Node) -> dict[str, Any]:
    """The answer's values, typed for Arrow (dates and times as Python objects), or
    Violation naming what is wrong (`$` with "not JSON" for text that does not parse)."""
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise Violation("$", f"not JSON ({exc})") from None
    return typed_value(value, root, "$")


def typed_value(value: Any, node: Node, path: str) -> Any:
    """`value` checked against `node`, converted as its column holds it."""
    if value is None:
        if node.nullable:
            return None
        raise Violation(path, f"null where the schema requires {node.kind}")
    if not _TYPE_CHECKS[node.kind](value):
        raise Violation(path, f"{json_type(value)} where the schema requires {node.kind}")
    if node.kind == "object":
        return _typed_object(value, node, path)
    if node.kind == "array":
        _check_count(len(value), node, path)
        assert node.items is not None
        return [typed_value(item, node.items, f"{path}[{i}]") for i, item in enumerate(value)]
    if node.enum is not None and value not in node.enum:
        shown = ", ".join(orjson.dumps(v).decode() for v in node.enum[:10])
        raise Violation(
            path, f"{orjson.dumps(value).decode()[:80]} is not one of the enum [{shown}]"
        )
    if node.kind == "integer":
        value = int(value)
        if not INT64_MIN <= value <= INT64_MAX:
            raise Violation(path, f"{value} does not fit a 64-bit integer")
    if node.kind in ("integer", "number"):
        _check_bounds(value, node, path)
        return float(value) if node.kind == "number" else value
    if node.kind == "string":
        return _typed_string(value, node, path)
    return value


def _typed_object(value: dict[str, Any], node: Node, path: str) -> dict[str, Any]:
    names = {name for name, _ in node.properties}
    extra = [key for key in value if key not in names]
    if extra:
        raise Violation(path, f"properties {extra[:5]} are not in the schema")
    out = {}
    for name, child in node.properties:
        if name not in value:
            raise Violation(path, f"required property {name!r} is missing")
        out[name] = typed_value(value[name], child, f"{path}.{name}")
    return out


def _check_count(count: int, node: Node, path: str) -> None:
    if node.min_items is not None and count < node.min_items:
        raise Violation(path, f"{count} items, fewer than minItems {node.min_items}")
    if node.max_items is not None and count > node.max_items:
        raise Violation(path, f"{count} items, more than maxItems {node.max_items}")


def _check_bounds(value: float, node: Node, path: str) -> None:
    rules = (
        (node.minimum, lambda b: value >= b, "minimum"),
        (node.maximum, lambda b: value <= b, "maximum"),
        (node.exclusive_minimum, lambda b: value > b, "exclusiveMinimum"),
        (node.exclusive_maximum, lambda b: value < b, "exclusiveMaximum"),
        (node.multiple_of, lambda b: math.isclose(value / b, round(value / b)), "multipleOf"),
    )
    for bound, holds, rule in rules:
        if bound is not None and not holds(bound):
            raise Violation(path, f"{value} breaks {rule} {bound}")


def _typed_string(value: str, node: Node, path: str) -> Any:
    if node.pattern is not None and not _compiled(node.pattern).search(value):
        raise Violation(path, f"{value[:80]!r} does not match the pattern {node.pattern!r}")
    if node.format == "date":
        try:
            return date.fromisoformat(value) if len(value) == 10 else _bad_format()
        except ValueError:
            raise Violation(path, f"{value[:80]!r} is not a date (YYYY-MM-DD)") from None
    if node.format == "date-time":
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            parsed = None
        if parsed is None or parsed.tzinfo is None:
            raise Violation(path, f"{value[:80]!r} is not a date-time with an offset (RFC 3339)")
        return parsed
    return value


def _bad_format() -> Any:
    raise ValueError("not the date's length")


@lru_cache(maxsize=256)
def _compiled(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)
