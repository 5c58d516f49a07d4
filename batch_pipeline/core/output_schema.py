"""A pipeline's output schema: the JSON Schema its answers must fit, read once at spec load.

It comes inline in the spec, from a `.json` file beside it, or from a pydantic model class.
It must lie in the subset of JSON Schema that OpenAI's structured outputs accept in strict
mode; whatever lies outside is refused, one line per problem naming the JSON path and the
rule, before anything is built or paid for. One change is made where it is safe:
`additionalProperties: false` is added to an object that does not say it (strict mode requires
it, and an answer of such a schema never holds other keys); `default` annotations are dropped
(strict mode does not take them, and every property is required anyway).

The checked schema is turned into a tree of `Node`s (`$ref`s resolved), from which the
columns' Arrow types come (`output_columns`), and which checks an answer row by row where the
columnar parse cannot name what is wrong.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

COLUMN_PREFIX = "output_"
# OpenAI's documented limits for a strict schema.
MAX_NESTING = 10
MAX_PROPERTIES = 5_000
MAX_ENUM_VALUES = 1_000
MAX_TEXT_CHARS = 120_000  # property and definition names, enum and const values together
LARGE_ENUM = 250  # one string enum larger than this ...
LARGE_ENUM_CHARS = 15_000  # ... holds at most this many characters in all
SCALAR_TYPES = ("string", "integer", "number", "boolean")
STRING_FORMATS = frozenset(
    {"date-time", "time", "date", "duration", "email", "hostname", "ipv4", "ipv6", "uuid"}
)
_ANNOTATIONS = frozenset({"description", "title", "$comment", "examples"})
_NUMBER_KEYWORDS = frozenset(
    {"enum", "const", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf"}
)
_KEYWORDS: dict[str, frozenset[str]] = {
    "string": frozenset({"enum", "const", "format", "pattern"}),
    "integer": _NUMBER_KEYWORDS,
    "number": _NUMBER_KEYWORDS,
    "boolean": frozenset({"enum", "const"}),
    "object": frozenset({"properties", "required", "additionalProperties"}),
    "array": frozenset({"items", "minItems", "maxItems"}),
    "null": frozenset(),
}
_UNSUPPORTED = frozenset(
    {"allOf", "oneOf", "not", "if", "then", "else", "dependentRequired", "dependentSchemas"}
    | {"patternProperties", "unevaluatedProperties", "propertyNames", "prefixItems"}
)
_SCHEMA_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_COLUMN_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class OutputSchemaError(ValueError):
    """An output schema that cannot be used; one line per problem, each naming its path."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class Node:
    """One checked schema node: its JSON type, whether null is allowed, and its constraints."""

    kind: str  # one of SCALAR_TYPES, "object" or "array"
    nullable: bool = False
    enum: tuple[Any, ...] | None = None
    format: str | None = None
    pattern: str | None = None
    minimum: float | None = None
    maximum: float | None = None
    exclusive_minimum: float | None = None
    exclusive_maximum: float | None = None
    multiple_of: float | None = None
    min_items: int | None = None
    max_items: int | None = None
    properties: tuple[tuple[str, Node], ...] = ()
    items: Node | None = None


@dataclass(frozen=True)
class OutputSchema:
    """A checked output schema: its name, the JSON Schema sent to the provider (normalised),
    the node tree its columns come from, and the pydantic model it came from, if any."""

    name: str
    schema: dict[str, Any]
    root: Node
    model: type | None = None

    @property
    def properties(self) -> tuple[tuple[str, Node], ...]:
        return self.root.properties

    @property
    def column_names(self) -> list[str]:
        return [COLUMN_PREFIX + name for name, _ in self.properties]


def load_output_schema(value: Any, *, base_dir: Path, default_name: str) -> OutputSchema:
    """The checked schema of `request.output_schema`: a mapping, a path to a `.json` file
    (relative to `base_dir`), or a pydantic model class. OutputSchemaError lists every problem."""
    model = value if isinstance(value, type) else None
    if model is not None:
        if not hasattr(model, "model_json_schema"):
            raise OutputSchemaError([f"{model.__name__} is not a pydantic model class"])
        raw: Any = model.model_json_schema()
        name = model.__name__
    elif isinstance(value, str | Path):
        raw = _read_file(Path(value), base_dir)
        name = default_name
    else:
        raw = value
        name = default_name
    if not isinstance(raw, Mapping):
        raise OutputSchemaError([f"$: a JSON Schema is an object, not {type(raw).__name__}"])
    title = raw.get("title")
    if model is None and isinstance(title, str) and _SCHEMA_NAME.fullmatch(title):
        name = title
    if not _SCHEMA_NAME.fullmatch(name):
        name = re.sub(r"[^A-Za-z0-9_-]", "_", name)[:64] or "output"
    checker = _Checker(raw)
    root = checker.check()
    if checker.problems:
        raise OutputSchemaError(checker.problems)
    return OutputSchema(name=name, schema=checker.normalised, root=root, model=model)


def _read_file(path: Path, base_dir: Path) -> Any:
    full = path if path.is_absolute() else base_dir / path
    try:
        text = full.read_text(encoding="utf-8")
    except OSError as exc:
        raise OutputSchemaError([f"cannot read the schema file {full}: {exc.strerror}"]) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise OutputSchemaError([f"{full} is not JSON: {exc}"]) from None


class _Checker:
    """Walks a raw schema once: resolves `$ref`s, collects every problem (path and rule),
    counts what the limits count, builds the `Node` tree and the normalised schema."""

    def __init__(self, raw: Mapping[str, Any]) -> None:
        self.raw = raw
        self.problems: list[str] = []
        self.property_count = 0
        self.enum_count = 0
        self.text_chars = 0
        self.normalised: dict[str, Any] = {}
        self._resolving: list[str] = []

    def problem(self, path: str, rule: str) -> None:
        self.problems.append(f"{path}: {rule}")

    def check(self) -> Node:
        raw = dict(self.raw)
        for key in ("$defs", "definitions"):
            defs = raw.get(key, {})
            if not isinstance(defs, Mapping):
                self.problem(f"$.{key}", "must be an object of named schemas")
                raw.pop(key)
                continue
            self.text_chars += sum(len(name) for name in defs)
        if raw.get("type") != "object" or "anyOf" in raw:
            self.problem("$", "the root must be an object schema (type: object), not anyOf")
        root = self._node(raw, "$", depth=0)
        self.normalised = self._normalise(raw)
        self._check_limits()
        if root.kind == "object":
            self._check_column_names(root)
        return root

    def _check_limits(self) -> None:
        for count, limit, what in (
            (self.property_count, MAX_PROPERTIES, "object properties"),
            (self.enum_count, MAX_ENUM_VALUES, "enum values"),
            (self.text_chars, MAX_TEXT_CHARS, "characters of names, enum and const values"),
        ):
            if count > limit:
                self.problem("$", f"{count} {what} in all; strict mode takes at most {limit}")

    def _check_column_names(self, root: Node) -> None:
        seen: dict[str, str] = {}
        for name, _ in root.properties:
            column = COLUMN_PREFIX + name
            if not _COLUMN_NAME.fullmatch(name):
                self.problem(
                    f"$.properties.{name}",
                    f"property name {name!r} does not make a column name {column!r}: use "
                    "letters, digits and _ only, not starting with a digit",
                )
            folded = column.casefold()
            if folded in seen:
                self.problem(
                    f"$.properties.{name}",
                    f"column {column!r} differs from {seen[folded]!r} only in case "
                    "(SQL engines fold case)",
                )
            seen[folded] = column

    # -- the walk ----------------------------------------------------------------------------

    def _resolve(self, schema: Any, path: str) -> tuple[Any, str] | None:
        """The schema a `$ref` points to (and its path), or the schema itself."""
        if not isinstance(schema, Mapping) or "$ref" not in schema:
            return schema, path
        ref = schema["$ref"]
        others = set(schema) - {"$ref"} - _ANNOTATIONS
        if others:
            self.problem(path, f"$ref with sibling keywords {sorted(others)} is not supported")
        if not isinstance(ref, str) or not ref.startswith("#/"):
            self.problem(path, f"$ref {ref!r} must point into this schema (#/$defs/<name>)")
            return None
        if ref in self._resolving or ref == "#":
            self.problem(path, f"$ref {ref!r} is recursive: a recursive schema has no column type")
            return None
        target: Any = self.raw
        for part in ref[2:].split("/"):
            part = part.replace("~1", "/").replace("~0", "~")
            if not isinstance(target, Mapping) or part not in target:
                self.problem(path, f"$ref {ref!r} does not resolve")
                return None
            target = target[part]
        return target, ref

    def _node(self, schema: Any, path: str, depth: int) -> Node:
        resolved = self._resolve(schema, path)
        if resolved is None:
            return Node("string")
        schema, where = resolved
        if where != path:
            self._resolving.append(where)
            try:
                return self._node(schema, path, depth)
            finally:
                self._resolving.pop()
        if not isinstance(schema, Mapping):
            self.problem(path, f"a schema is an object, not {json.dumps(schema)[:40]}")
            return Node("string")
        if depth > MAX_NESTING:
            self.problem(path, f"nested deeper than {MAX_NESTING} levels (strict mode's limit)")
            return Node("string")
        for key in sorted(set(schema) & _UNSUPPORTED):
            self.problem(f"{path}.{key}", f"keyword {key!r} is not supported in strict mode")
        if "anyOf" in schema:
            return self._any_of(schema, path, depth)
        kind, nullable = self._types(schema, path)
        self._check_keywords(schema, path, kind)
        if kind == "object":
            return self._object(schema, path, depth, nullable)
        if kind == "array":
            items = schema.get("items")
            if items is None:
                self.problem(path, "an array needs items")
            item = self._node(items or {"type": "string"}, f"{path}.items", depth + 1)
            return Node(
                "array",
                nullable,
                items=item,
                min_items=_int_or_none(schema.get("minItems")),
                max_items=_int_or_none(schema.get("maxItems")),
            )
        return self._scalar(schema, path, kind, nullable)

    def _types(self, schema: Mapping[str, Any], path: str) -> tuple[str, bool]:
        declared = schema.get("type")
        if declared is None and ("enum" in schema or "const" in schema):
            values = schema.get("enum") or [schema.get("const")]
            declared = sorted({json_type(v) for v in values})
            if len(declared) == 1:
                declared = declared[0]
        types = declared if isinstance(declared, list) else [declared]
        nullable = "null" in types
        others = [t for t in types if t != "null"]
        if len(others) != 1 or others[0] not in _KEYWORDS:
            self.problem(
                f"{path}.type",
                f"{json.dumps(declared)} is not one JSON type (optionally with null): a column "
                "holds one type",
            )
            return "string", nullable
        return others[0], nullable

    def _check_keywords(self, schema: Mapping[str, Any], path: str, kind: str) -> None:
        allowed = _KEYWORDS[kind] | _ANNOTATIONS | {"type", "default", "$defs", "definitions"}
        for key in sorted(set(schema) - allowed - _UNSUPPORTED):
            self.problem(f"{path}.{key}", f"keyword {key!r} is not supported for type {kind}")
        if kind == "string" and "format" in schema and schema["format"] not in STRING_FORMATS:
            self.problem(
                f"{path}.format",
                f"format {schema['format']!r} is not supported; "
                f"strict mode takes {', '.join(sorted(STRING_FORMATS))}",
            )

    def _object(self, schema: Mapping[str, Any], path: str, depth: int, nullable: bool) -> Node:
        properties = schema.get("properties")
        if not isinstance(properties, Mapping) or not properties:
            self.problem(path, "an object needs properties (strict mode has no free-form objects)")
            return Node("object", nullable)
        required = schema.get("required", [])
        missing = [name for name in properties if name not in required]
        if missing:
            self.problem(
                f"{path}.required",
                f"every property must be required in strict mode; {missing} are not (make a "
                'property optional by allowing null: type: [..., "null"])',
            )
        extra = schema.get("additionalProperties", False)
        if extra is not False:
            self.problem(f"{path}.additionalProperties", "must be false in strict mode")
        self.property_count += len(properties)
        self.text_chars += sum(len(name) for name in properties)
        children = tuple(
            (name, self._node(sub, f"{path}.properties.{name}", depth + 1))
            for name, sub in properties.items()
        )
        return Node("object", nullable, properties=children)

    def _any_of(self, schema: Mapping[str, Any], path: str, depth: int) -> Node:
        branches = schema["anyOf"]
        if not isinstance(branches, list) or not branches:
            self.problem(f"{path}.anyOf", "must be a list of schemas")
            return Node("string")
        nulls = [b for b in branches if isinstance(b, Mapping) and b.get("type") == "null"]
        others = [b for b in branches if b not in nulls]
        if len(others) != 1:
            self.problem(
                f"{path}.anyOf",
                "only anyOf [<schema>, {type: null}] has a column type (one type, or null)",
            )
            return Node("string", nullable=True)
        node = self._node(others[0], f"{path}.anyOf[{branches.index(others[0])}]", depth)
        return _with_null(node, bool(nulls))

    def _scalar(self, schema: Mapping[str, Any], path: str, kind: str, nullable: bool) -> Node:
        enum = schema.get("enum")
        if "const" in schema:
            enum = [schema["const"]]
        if enum is not None:
            enum = self._enum(enum, path, kind, nullable)
        return Node(
            kind,
            nullable,
            enum=enum,
            format=schema.get("format"),
            pattern=schema.get("pattern"),
            minimum=schema.get("minimum"),
            maximum=schema.get("maximum"),
            exclusive_minimum=schema.get("exclusiveMinimum"),
            exclusive_maximum=schema.get("exclusiveMaximum"),
            multiple_of=schema.get("multipleOf"),
        )

    def _enum(self, values: Any, path: str, kind: str, nullable: bool) -> tuple[Any, ...] | None:
        if not isinstance(values, list) or not values:
            self.problem(f"{path}.enum", "must be a non-empty list")
            return None
        allowed = {kind, "null"} if nullable else {kind}
        if kind == "number":
            allowed.add("integer")
        wrong = [v for v in values if json_type(v) not in allowed]
        if wrong:
            self.problem(f"{path}.enum", f"values {wrong[:5]} are not of type {kind}")
        self.enum_count += len(values)
        chars = sum(len(v) for v in values if isinstance(v, str))
        self.text_chars += chars
        if kind == "string" and len(values) > LARGE_ENUM and chars > LARGE_ENUM_CHARS:
            self.problem(
                f"{path}.enum",
                f"{len(values)} values of {chars} characters: an enum of more than {LARGE_ENUM} "
                f"values may hold at most {LARGE_ENUM_CHARS} characters",
            )
        return tuple(v for v in values if v is not None)

    # -- the schema sent -------------------------------------------------------------------

    def _normalise(self, schema: Any) -> Any:
        """The schema with `additionalProperties: false` on every object and no `default`."""
        if isinstance(schema, list):
            return [self._normalise(item) for item in schema]
        if not isinstance(schema, Mapping):
            return schema
        out = {k: self._normalise(v) for k, v in schema.items() if k != "default"}
        for key in ("properties", "$defs", "definitions"):
            if isinstance(schema.get(key), Mapping):  # names here are not keywords
                out[key] = {name: self._normalise(s) for name, s in schema[key].items()}
        is_object = schema.get("type") == "object" or (
            isinstance(schema.get("type"), list) and "object" in schema["type"]
        )
        if is_object and "additionalProperties" not in schema:
            out["additionalProperties"] = False
        return out


def _with_null(node: Node, nullable: bool) -> Node:
    if not nullable or node.nullable:
        return node
    return Node(**{**node.__dict__, "nullable": True})


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def json_type(value: Any) -> str:
    """The JSON Schema type name of a parsed JSON value (an integral float is a number)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"
