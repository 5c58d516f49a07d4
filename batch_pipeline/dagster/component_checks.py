"""What `BatchPipelineComponent` checks when it loads, each problem on its defs.yaml line.

Loading is what `dg check defs` runs, so what is cheap is checked here rather than at the
first materialization: the spec's keys and values, the environment variables its templates
read, and a local source's file and header (the key, the partition column and every column
the prompt names).
"""

from __future__ import annotations

import csv
import json
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from dagster_shared.yaml_utils.source_position import SourcePositionTree
from pydantic import ValidationError

from batch_pipeline.core.prompt_template import parse_template
from batch_pipeline.core.spec import RequestSpec, SourceSpec
from batch_pipeline.core.storage_uri import is_remote, local_path_of

Problem = tuple[Sequence[str | int], str]  # (the key's path under attributes, what is wrong)

_TEMPLATE = re.compile(r"\{\{(.*?)\}\}", re.DOTALL)
# `env.NAME`, or `env('NAME')` with no default
_ENV_ATTRIBUTE = re.compile(
    r"\benv(?:\.([A-Za-z_][A-Za-z0-9_]*)|\(\s*['\"]([A-Za-z_][A-Za-z0-9_]*)['\"]\s*\))"
)
_HAS_FALLBACK = re.compile(r"\bdefault\s*\(|\bor\b")


class DefsYamlError(ValueError):
    """A defs.yaml the pipeline cannot load from: one line per problem, `file:line key: why`."""


def problems_error(
    problems: Sequence[Problem], tree: SourcePositionTree | None, fallback: Path
) -> DefsYamlError | None:
    """A `DefsYamlError` listing `problems` at their lines, if there are any."""
    if not problems:
        return None
    lines = [f"{_where(tree, path, fallback)} {_dotted(path)}: {why}" for path, why in problems]
    noun = "problem" if len(lines) == 1 else "problems"
    return DefsYamlError(f"{len(lines)} {noun} in the pipeline's attributes:\n" + "\n".join(lines))


def _dotted(path: Sequence[str | int]) -> str:
    return ".".join(str(part) for part in ["attributes", *path])


def _where(tree: SourcePositionTree | None, path: Sequence[str | int], fallback: Path) -> str:
    """`file:line` of the key at `path` (or of its nearest ancestor in the file)."""
    if tree is None:
        return str(fallback / "defs.yaml")
    position, _ = tree.lookup_closest_and_path(["attributes", *path], None)
    return f"{position.filename}:{position.start.line}"


def unset_env_problems(raw: Any, path: Sequence[str | int] = ()) -> list[Problem]:
    """Every `{{ env.NAME }}` whose variable is unset (Dagster would render it as null),
    unless the template gives a fallback (`default(...)`, `or`)."""
    if isinstance(raw, dict):
        return [p for key, value in raw.items() for p in unset_env_problems(value, [*path, key])]
    if isinstance(raw, list):
        return [p for i, value in enumerate(raw) for p in unset_env_problems(value, [*path, i])]
    if not isinstance(raw, str):
        return []
    problems: list[Problem] = []
    for expression in _TEMPLATE.findall(raw):
        if _HAS_FALLBACK.search(expression):
            continue
        for attribute, called in _ENV_ATTRIBUTE.findall(expression):
            name = attribute or called
            if name not in os.environ:
                problems.append((path, f"the environment variable {name} is not set"))
    return problems


def spec_problems(error: ValidationError) -> list[Problem]:
    """The spec's validation errors, each at the key it is about."""
    problems: list[Problem] = []
    for detail in error.errors():
        path = [part for part in detail["loc"] if part != "base_dir"]
        message = detail["msg"].removeprefix("Value error, ")
        if detail["type"] == "extra_forbidden":
            message = "unknown key"
        elif detail["type"] == "missing":
            message = "required key is missing"
        elif _shown(detail.get("input"), path):
            message = f"{message} (got {detail['input']!r})"
        problems.append((path or _named_path(message), message))
    return problems


def _shown(value: Any, path: Sequence[str | int]) -> bool:
    """Whether a bad value is worth quoting: a scalar, not a URL (which may hold a password)."""
    scalar = isinstance(value, str | int | float | bool) and len(str(value)) <= 80
    return scalar and not any("url" in str(part) for part in path)


def _named_path(message: str) -> list[str]:
    """The key a whole-spec message starts with (`request.params: ...`), else none."""
    head = message.split(":", 1)[0].split(" ")[0]
    return head.split(".") if re.fullmatch(r"[a-z_]+(\.[a-z_]+)*", head) else []


def source_problems(
    source: SourceSpec, request: RequestSpec | None, base_dir: Path
) -> list[Problem]:
    """A local source file or folder that is missing, or whose header lacks the key, the
    partition column or a column the prompt names (when `request` is valid). Object stores
    and databases are read at the first materialization only."""
    if source.path is None or is_remote(source.path):
        return []
    location = Path(local_path_of(source.path)).expanduser()
    location = location if location.is_absolute() else base_dir / location
    if not location.exists():
        return [(["source", "path"], f"{location} does not exist")]
    columns = source_header(location)
    if columns is None:  # a folder with no data file yet
        return []
    problems: list[Problem] = []
    for key in ("key", "partition_column"):
        column = getattr(source, key)
        if column not in columns:
            problems.append((["source", key], f"{column!r} is not a column of {location.name}"))
    for column in request.placeholders if request is not None else []:
        if column not in columns:
            text_key = "prompt" if _names(request.prompt, column) else "system"
            problems.append(
                (["request", text_key], f"{{{column}}} names no column of {location.name}")
            )
    return problems


def sections_problems(attributes: dict[str, Any], base_dir: Path) -> list[Problem]:
    """`source_problems` for attributes whose spec as a whole is invalid: the source is
    checked whenever its own section (and the request's, for the prompt) is valid."""
    try:
        source = SourceSpec.model_validate(attributes.get("source"))
    except ValidationError:
        return []
    try:
        request = RequestSpec.model_validate(attributes.get("request"))
    except ValidationError:
        request = None
    return source_problems(source, request, base_dir)


def _names(text: str, column: str) -> bool:
    return any(name == column for _, name in parse_template(text))


def source_header(location: Path) -> set[str] | None:
    """The column names of a local source file (of the first data file of a folder, with
    the folder's hive-style `name=value` levels), read without reading its rows."""
    if location.is_dir():
        first = next(_data_files(location), None)
        if first is None:
            return None
        levels = {part.split("=", 1)[0] for part in first.relative_to(location).parts[:-1]}
        header = _file_header(first)
        return None if header is None else header | levels
    return _file_header(location)


def _data_files(folder: Path) -> Iterable[Path]:
    for path in sorted(folder.rglob("*")):
        hidden = any(part.startswith((".", "_")) for part in path.relative_to(folder).parts)
        if not hidden and path.suffix in (".parquet", ".csv", ".jsonl") and path.is_file():
            yield path


def _file_header(path: Path) -> set[str] | None:
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return set(pq.read_schema(path).names)
    with path.open(encoding="utf-8", newline="") as handle:
        if path.suffix == ".csv":
            return set(next(csv.reader(handle), []))
        if path.suffix == ".jsonl":
            first = handle.readline()
            return set(json.loads(first)) if first.strip() else None
    return None
