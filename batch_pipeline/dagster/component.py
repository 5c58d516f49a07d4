"""`BatchPipelineComponent`: a pipeline declared in a `defs.yaml`, with the spec's keys and
the Dagster settings `build_batch_pipeline_defs` takes in Python."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import dagster as dg
from pydantic import BaseModel, Field, PrivateAttr, ValidationError

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
    SpecError,
)
from batch_pipeline.dagster.component_attributes import (
    AttributesTranslator,
    OpAttributes,
    TranslationAttributes,
    templatable,
)
from batch_pipeline.dagster.component_checks import (
    Problem,
    problems_error,
    sections_problems,
    source_problems,
    spec_problems,
    unset_env_problems,
)
from batch_pipeline.dagster.component_scaffolder import (
    DEFAULT_OUTPUT_DIR,
    BatchPipelineScaffolder,
)
from batch_pipeline.dagster.definitions import build_batch_pipeline_defs
from batch_pipeline.dagster.resources import BatchBackendResource


def _section(section_type: Any, description: str) -> dg.Resolver:
    """A section as a YAML attribute: its schema is the spec's own, widened for templates;
    `{{ ... }}` templates are rendered, and the section is checked when the component loads,
    where each problem is reported on its own line."""

    def resolve(context: dg.ResolutionContext, value: Any) -> Any:
        if isinstance(value, BaseModel):
            value = value.model_dump(mode="json", exclude_unset=True)
        return context.resolve_value(value)

    return dg.Resolver(resolve, model_field_type=templatable(section_type), description=description)


Section = dict[str, Any]
Status = Literal["running", "stopped"]
_DAGSTER_SECTIONS: dict[str, type[BaseModel]] = {
    "translation": TranslationAttributes,
    "op": OpAttributes,
}


@dg.scaffold_with(BatchPipelineScaffolder)
class BatchPipelineComponent(dg.Component, dg.Resolvable, dg.Model):
    """Run one LLM pipeline through a provider's Batch API, one day per partition.

    The attributes are the pipeline spec's keys, plus how Dagster shows and runs it
    (translation, op, the sensor's and the schedule's defaults). Relative paths are relative
    to the folder of the defs.yaml; `{{ context.project_root }}` is the project's folder.
    The API key is read from the variable `backend.api_key_env` names.
    """

    name: Annotated[
        str,
        dg.Resolver.default(
            description="Pipeline name [a-z][a-z0-9_]*: the asset key prefix and the group."
        ),
    ]
    source: Annotated[
        Section,
        _section(
            SourceSpec,
            "Where the rows come from: path (a file or folder) or sql, key, partition_column.",
        ),
    ]
    request: Annotated[
        Section,
        _section(
            RequestSpec,
            "What to ask for each row: model, prompt with {column} placeholders, system, "
            "endpoint, params, output_schema.",
        ),
    ]
    backend: Annotated[
        Section,
        _section(
            BackendSpec,
            "The Batch API: provider (local, openai, azure, anthropic), base_url, api_key_env "
            "(the NAME of the key's variable, never the key).",
        ),
    ] = Field(default_factory=dict)
    limits: Annotated[
        Section,
        _section(LimitsSpec, "Requests and bytes per batch file, and the enqueued-token budget."),
    ] = Field(default_factory=dict)
    retry: Annotated[
        Section,
        _section(
            RetrySpec, "Attempts of a failed request, and of an answer that misses the schema."
        ),
    ] = Field(default_factory=dict)
    output: Annotated[
        Section,
        _section(
            OutputSpec,
            "Where request shards (which hold source text), batch files, results and the "
            f"SQLite ledger go; by default {DEFAULT_OUTPUT_DIR}/ in the project's folder, "
            "outside the package.",
        ),
    ] = Field(default_factory=dict)
    ledger: Annotated[
        Section,
        _section(
            LedgerSpec,
            "The ledger's database: url or url_env (PostgreSQL for shared runs); by default "
            "SQLite in the output folder.",
        ),
    ] = Field(default_factory=dict)
    prices: Annotated[
        Section,
        _section(dict[str, ModelPrice], "Per-model price overrides, USD per 1M tokens."),
    ] = Field(default_factory=dict)
    partitions: Annotated[
        Section,
        _section(
            PartitionsSpec,
            "How rows split into partitions: {kind: daily (default), weekly, monthly or none, "
            "start: YYYY-MM-DD (needed unless none), end: optional, inclusive}.",
        ),
    ] = Field(default_factory=dict)
    schedule: Annotated[
        Section,
        _section(ScheduleSpec, "The nightly schedule that submits yesterday: cron and timezone."),
    ] = Field(default_factory=dict)
    checks: Annotated[
        Section, _section(ChecksSpec, "Asset checks on the results: max_failed_share of rows.")
    ] = Field(default_factory=dict)
    translation: Annotated[
        Section,
        _section(
            TranslationAttributes,
            "How the assets appear: key_prefix, group_name, tags, kinds, owners.",
        ),
    ] = Field(default_factory=dict)
    op: Annotated[
        Section,
        _section(
            OpAttributes,
            "The steps' tags, the batches step's pool, retry_policy, backfill_policy.",
        ),
    ] = Field(default_factory=dict)
    sensor_default_status: Annotated[
        Status,
        dg.Resolver.default(
            description="Whether the sensor runs once deployed. It runs by default: without "
            "it, submitted batches are never collected. Its ticks poll, collect and submit for "
            "real, previews (`dagster sensor preview`, the UI's test) included."
        ),
    ] = "running"
    sensor_minimum_interval_seconds: Annotated[
        int, dg.Resolver.default(description="The least time between two ticks of the sensor.")
    ] = 30
    schedule_default_status: Annotated[
        Status,
        dg.Resolver.default(
            description="Whether the nightly schedule runs once deployed; stopped by default, "
            "since turning it on starts spending."
        ),
    ] = "stopped"

    _spec: PipelineSpec | None = PrivateAttr(default=None)

    @classmethod
    def load(cls, attributes: BaseModel | None, context: dg.ComponentLoadContext) -> Any:
        """Resolve the attributes, then check them, naming each problem's defs.yaml line."""
        tree = context.resolution_context.source_position_tree
        raw = attributes.model_dump(exclude_unset=True) if attributes is not None else {}
        error = problems_error(unset_env_problems(raw), tree, context.path)
        if error is None:
            component = super().load(attributes, context)
            component._spec, problems = component._checked_spec(context)
            error = problems_error(problems, tree, context.path)
        if error is not None:
            raise error
        return component

    def _checked_spec(
        self, context: dg.ComponentLoadContext
    ) -> tuple[PipelineSpec | None, list[Problem]]:
        problems: list[Problem] = []
        for key, model in _DAGSTER_SECTIONS.items():
            try:
                model.model_validate(getattr(self, key))
            except ValidationError as error:
                problems += [([key, *path], why) for path, why in spec_problems(error)]
        try:
            spec = self.to_spec(context.path, project_root=context.project_root)
        except (ValidationError, SpecError) as error:
            found = (
                spec_problems(error) if isinstance(error, ValidationError) else [([], str(error))]
            )
            sections = self.model_dump(mode="json", include={"source", "request"})
            return None, problems + found + sections_problems(sections, context.path)
        return spec, problems + source_problems(spec.source, spec.request, spec.base_dir)

    def to_spec(self, base_dir: Path, project_root: Path | None = None) -> PipelineSpec:
        """The pipeline spec these attributes describe, validated by the core (pydantic's
        `ValidationError` names each bad key). Without `output.dir`, the output goes to
        `{project_root}/batch_pipeline_output`."""
        data = self.model_dump(mode="json", exclude_unset=True, include=_SPEC_KEYS)
        if project_root is not None and "dir" not in data.get("output", {}):
            data["output"] = {
                **data.get("output", {}),
                "dir": str(project_root / DEFAULT_OUTPUT_DIR),
            }
        return PipelineSpec.model_validate({**data, "base_dir": base_dir})

    def build_defs(self, context: dg.ComponentLoadContext) -> dg.Definitions:
        spec = self._spec or self.to_spec(context.path, project_root=context.project_root)
        op = OpAttributes.model_validate(self.op)
        return build_batch_pipeline_defs(
            spec=spec,
            backend=BatchBackendResource.from_spec(spec.backend),
            translator=AttributesTranslator(TranslationAttributes.model_validate(self.translation)),
            op_tags=op.tags or None,
            retry_policy=op.retry_policy.to_policy() if op.retry_policy else None,
            backfill_policy=op.backfill_policy.to_policy() if op.backfill_policy else None,
            submission_pool=op.pool,
            sensor_default_status=dg.DefaultSensorStatus(self.sensor_default_status.upper()),
            sensor_minimum_interval_seconds=self.sensor_minimum_interval_seconds,
            schedule_default_status=dg.DefaultScheduleStatus(self.schedule_default_status.upper()),
        )


_SPEC_KEYS = set(PipelineSpec.model_fields) - {"base_dir"}
