"""`BatchPipelineComponent`: a pipeline declared in a `defs.yaml`, with the spec's keys."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import dagster as dg
from pydantic import Field, TypeAdapter

from batch_pipeline.core.spec import (
    BackendSpec,
    ChecksSpec,
    LedgerSpec,
    LimitsSpec,
    ModelPrice,
    OutputSpec,
    PartitionsSpec,
    PipelineSpec,
    RequestSpec,
    RetrySpec,
    ScheduleSpec,
    SourceSpec,
)
from batch_pipeline.dagster.definitions import build_batch_pipeline_defs
from batch_pipeline.dagster.resources import BatchBackendResource


def _section(section_type: Any) -> dg.Resolver:
    """A spec section as a YAML attribute: its schema is the spec's own (so `dg check yaml`
    points at a bad key); `{{ ... }}` templates in its text fields are rendered (a number or
    date field takes a literal: the schema checks it before rendering), and it is kept as
    the mapping the spec is then built from."""
    adapter = TypeAdapter(section_type)

    def resolve(context: dg.ResolutionContext, value: Any) -> dict[str, Any]:
        raw = adapter.dump_python(value, mode="json", exclude_unset=True)
        checked = adapter.validate_python(context.resolve_value(raw))
        return adapter.dump_python(checked, mode="json", exclude_unset=True)

    return dg.Resolver(resolve, model_field_type=section_type)


Section = dict[str, Any]


class BatchPipelineComponent(dg.Component, dg.Resolvable, dg.Model):
    """Run one LLM pipeline through a provider's Batch API, one day per partition.

    The attributes are the pipeline spec's keys. Relative paths are relative to the folder of
    the defs.yaml; the API key is read from the variable `backend.api_key_env` names.
    """

    name: str = Field(description="Pipeline name: the asset key prefix and the group.")
    source: Annotated[Section, _section(SourceSpec)] = Field(
        description="Where the rows come from."
    )
    request: Annotated[Section, _section(RequestSpec)] = Field(
        description="What to ask for each row."
    )
    backend: Annotated[Section, _section(BackendSpec)] = Field(
        default_factory=dict, description="The Batch API; the key's variable NAME."
    )
    limits: Annotated[Section, _section(LimitsSpec)] = Field(default_factory=dict)
    retry: Annotated[Section, _section(RetrySpec)] = Field(default_factory=dict)
    output: Annotated[Section, _section(OutputSpec)] = Field(default_factory=dict)
    ledger: Annotated[Section, _section(LedgerSpec)] = Field(default_factory=dict)
    prices: Annotated[Section, _section(dict[str, ModelPrice])] = Field(
        default_factory=dict, description="Per-model price overrides, USD per 1M tokens."
    )
    partitions: Annotated[Section, _section(PartitionsSpec)] = Field(
        description="The days the assets cover: {start: YYYY-MM-DD, end: optional}."
    )
    schedule: Annotated[Section, _section(ScheduleSpec)] = Field(default_factory=dict)
    checks: Annotated[Section, _section(ChecksSpec)] = Field(default_factory=dict)

    def to_spec(self, base_dir: Path) -> PipelineSpec:
        """The pipeline spec these attributes describe, validated by the core."""
        return PipelineSpec.from_dict(
            self.model_dump(mode="json", exclude_unset=True), base_dir=base_dir
        )

    def build_defs(self, context: dg.ComponentLoadContext) -> dg.Definitions:
        spec = self.to_spec(context.path)
        return build_batch_pipeline_defs(
            spec=spec, backend=BatchBackendResource.from_spec(spec.backend)
        )
