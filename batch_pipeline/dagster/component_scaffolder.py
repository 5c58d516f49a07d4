"""`dg scaffold defs batch_pipeline.dagster.BatchPipelineComponent NAME`: a defs.yaml that
loads as written.

Paths start from `{{ context.project_root }}`, the output goes to `batch_pipeline_output/`
in the project's folder (added to its .gitignore: the request shards hold source text), and
without `--source-path` a three-row sample table is written to `data/NAME.csv`.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Any, Literal

import dagster as dg
from pydantic import BaseModel, Field

from batch_pipeline.dagster.component_checks import source_header

DEFAULT_OUTPUT_DIR = "batch_pipeline_output"
PROJECT_ROOT = "{{ context.project_root }}"
_MODELS = {
    "local": "gpt-4o-mini",
    "openai": "gpt-4o-mini",
    "azure": "gpt-4o-mini",
    "anthropic": "claude-3-5-haiku-latest",
}
_API_KEY_VARIABLES = {
    "openai": "OPENAI_API_KEY",
    "azure": "AZURE_OPENAI_API_KEY",
    "anthropic": "ANTHROPIC_API_KEY",
}
_SAMPLE_DAY = date(2026, 1, 1)


class BatchPipelineScaffoldParams(BaseModel):
    """The options of `dg scaffold defs batch_pipeline.dagster.BatchPipelineComponent`."""

    source_path: str | None = Field(
        default=None,
        description="The source table (.parquet, .csv, .jsonl or a folder), relative to the "
        "project's folder; by default a sample written to data/NAME.csv.",
    )
    key: str = Field(default="id", description="The column holding each row's unique key.")
    partition_column: str = Field(
        default="created_at", description="The date or timestamp column partitions are days of."
    )
    provider: Literal["local", "openai", "azure", "anthropic"] = Field(
        default="local",
        description="The Batch API; local is the service `batch-pipeline serve` starts.",
    )
    model: str | None = Field(default=None, description="The model; a small one by default.")
    start: date = Field(default=_SAMPLE_DAY, description="The first day of the partitions.")


class BatchPipelineScaffolder(dg.Scaffolder[BatchPipelineScaffoldParams]):
    """Writes a defs.yaml that passes `dg check defs`, as dagster-sling's scaffolder does."""

    @classmethod
    def get_scaffold_params(cls) -> type[BatchPipelineScaffoldParams]:
        return BatchPipelineScaffoldParams

    def scaffold(self, request: dg.ScaffoldRequest[BatchPipelineScaffoldParams]) -> None:
        from dagster.components.component_scaffolding import scaffold_component

        params = request.params or BatchPipelineScaffoldParams()
        name = _pipeline_name(request.target_path.name)
        project_root = request.project_root or Path.cwd()
        if params.source_path is None:
            source = f"data/{name}.csv"
            _write_sample(project_root / source, params)
        else:
            source = params.source_path
        scaffold_component(request, scaffold_attributes(name, source, params, project_root))
        _ignore_output(project_root)


def scaffold_attributes(
    name: str, source: str, params: BatchPipelineScaffoldParams, project_root: Path
) -> dict[str, Any]:
    """The attributes of a new pipeline reading `source` (relative to the project)."""
    location = source if Path(source).is_absolute() else f"{PROJECT_ROOT}/{source}"
    columns = _text_columns(project_root / source, params)
    endpoint = {"endpoint": "/v1/messages"} if params.provider == "anthropic" else {}
    backend: dict[str, Any] = {"provider": params.provider}
    if params.provider in _API_KEY_VARIABLES:
        backend["api_key_env"] = _API_KEY_VARIABLES[params.provider]
    if params.provider == "azure":
        backend |= {
            "azure_endpoint": "https://YOUR-RESOURCE.openai.azure.com",
            "api_version": "2024-10-21",
        }
    return {
        "name": name,
        "source": {
            "path": location,
            "key": params.key,
            "partition_column": params.partition_column,
        },
        "request": {
            **endpoint,
            "model": params.model or _MODELS[params.provider],
            "prompt": _prompt(columns),
            "params": {"max_tokens": 200},
        },
        "backend": backend,
        "output": {"dir": f"{PROJECT_ROOT}/{DEFAULT_OUTPUT_DIR}"},
        "partitions": {"start": params.start.isoformat()},
    }


def _prompt(columns: list[str]) -> str:
    """A prompt showing each column: `{text}` alone, or `name: {name}` lines."""
    if len(columns) == 1:
        return f"{{{columns[0]}}}"
    return "\n".join(f"{column}: {{{column}}}" for column in columns)


def _pipeline_name(folder: str) -> str:
    """The folder's name as a pipeline name ([a-z][a-z0-9_]*)."""
    name = "".join(c if c.isalnum() else "_" for c in folder.lower()).strip("_")
    return name if name[:1].isalpha() else f"pipeline_{name}"


def _text_columns(path: Path, params: BatchPipelineScaffoldParams) -> list[str]:
    """The source's columns the prompt shows: all but the key and partition column."""
    header = source_header(path) if path.exists() else None
    skipped = {params.key, params.partition_column}
    columns = sorted(header - skipped) if header else []
    return columns or ["text"]


def _write_sample(path: Path, params: BatchPipelineScaffoldParams) -> None:
    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    day = params.start.isoformat()
    texts = ["My invoice is wrong", "The app crashes when I log in", "How do I export my data?"]
    lines = [f"{params.key},{params.partition_column},text"]
    lines += [f"{number},{day},{text}" for number, text in enumerate(texts, start=1)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _ignore_output(project_root: Path) -> None:
    """Add the output folder to the project's .gitignore, if it has one."""
    ignore = project_root / ".gitignore"
    if not ignore.exists():
        return
    text = ignore.read_text(encoding="utf-8")
    if f"/{DEFAULT_OUTPUT_DIR}/" not in text.splitlines():
        separator = "" if not text or text.endswith("\n") else "\n"
        ignore.write_text(f"{text}{separator}/{DEFAULT_OUTPUT_DIR}/\n", encoding="utf-8")
