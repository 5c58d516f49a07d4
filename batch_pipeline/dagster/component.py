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


def _section(section_type: Any) -> dg.Resolver:
    """A section as a YAML attribute: its schema is the spec's own, widened for templates;
    `{{ ... }}` templates are rendered, and the section is checked when the component loads,
    where each problem is reported on its own line."""

    def resolve(context: dg.ResolutionContext, value: Any) -> Any:
        if isinstance(value, BaseModel):
            value = value.model_dump(mode="json", exclude_unset=True)
        return context.resolve_value(value)

    return dg.Resolver(resolve, model_field_type=templatable(section_type))


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

    name: str = Field(description="Pipeline name [a-z][a-z0-9_]*: the asset key prefix and group.")
    source: Annotated[Section, _section(SourceSpec)] = Field(
        description="Where the rows come from: path (a file or folder) or sql, key, "
        "partition_column."
    )
    request: Annotated[Section, _section(RequestSpec)] = Field(
        description="What to ask for each row: model, prompt with {column} placeholders, "
        "system, endpoint, params, output_schema."
    )
    backend: Annotated[Section, _section(BackendSpec)] = Field(
        default_factory=dict,
        description="The Batch API: provider (local, openai, azure, anthropic), base_url, "
        "api_key_env (the NAME of the key's variable, never the key).",
    )
    limits: Annotated[Section, _section(LimitsSpec)] = Field(
        default_factory=dict,
        description="Requests and bytes per batch file, and the enqueued-token budget.",
    )
    retry: Annotated[Section, _section(RetrySpec)] = Field(
        default_factory=dict,
        description="Attempts of a failed request, and of an answer that misses the schema.",
    )
    output: Annotated[Section, _section(OutputSpec)] = Field(
        default_factory=dict,
        description="Where request shards (which hold source text), batch files, results "
        f"and the SQLite ledger go; by default {DEFAULT_OUTPUT_DIR}/ in the project's "
        "folder, outside the package.",
    )
    ledger: Annotated[Section, _section(LedgerSpec)] = Field(
        default_factory=dict,
        description="The ledger's database: url or url_env (PostgreSQL for shared runs); by "
        "default SQLite in the output folder.",
    )
    prices: Annotated[Section, _section(dict[str, ModelPrice])] = Field(
        default_factory=dict, description="Per-model price overrides, USD per 1M tokens."
    )
    partitions: Annotated[Section, _section(PartitionsSpec)] = Field(
        description="The days the assets cover: {start: YYYY-MM-DD, end: optional}."
    )
    schedule: Annotated[Section, _section(ScheduleSpec)] = Field(
        default_factory=dict,
        description="The nightly schedule that submits yesterday: cron and timezone.",
    )
    checks: Annotated[Section, _section(ChecksSpec)] = Field(
        default_factory=dict,
        description="Asset checks on the results: max_failed_share of rows.",
    )
    translation: Annotated[Section, _section(TranslationAttributes)] = Field(
        default_factory=dict,
        description="How the assets appear: key_prefix, group_name, tags, kinds, owners.",
    )
    op: Annotated[Section, _section(OpAttributes)] = Field(
        default_factory=dict,
        description="The steps' tags, the batches step's pool, retry_policy, backfill_policy.",
    )
    sensor_default_status: Status = Field(
        default="running",
        description="Whether the sensor that collects the batches runs once deployed. It "
        "runs by default: without it, submitted batches are never collected.",
    )
    sensor_minimum_interval_seconds: int = Field(
        default=30, description="The least time between two ticks of the sensor."
    )
    schedule_default_status: Status = Field(
        default="stopped",
        description="Whether the nightly schedule runs once deployed; stopped by default, "
        "since turning it on starts spending.",
    )

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
        except ValidationError as error:
            return None, problems + spec_problems(error)
        except SpecError as error:
            return None, [*problems, ([], str(error))]
        return spec, problems + source_problems(spec)

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
