"""The Dagster-only attributes of `BatchPipelineComponent` (translation, op settings, the
sensor's and the schedule's defaults), and the YAML schema of the spec's sections.

The spec's sections keep their own schema for `dg check yaml` and editors, widened so that a
`{{ ... }}` template stands for any value (a number, a boolean) and an unknown key passes the
schema: `BatchPipelineComponent` then reports it on its own line when it loads.
"""

from __future__ import annotations

import types
from dataclasses import dataclass, field
from functools import cache
from typing import Any, Literal, Union, get_args, get_origin

import dagster as dg
from pydantic import BaseModel, ConfigDict, Field, create_model

from batch_pipeline.core.spec import PipelineSpec
from batch_pipeline.dagster.translator import BatchPipelineTranslator


class _Attributes(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TranslationAttributes(_Attributes):
    """How the three assets appear in Dagster, as dagster-dbt's and dagster-sling's
    `translation` does."""

    key_prefix: list[str] = Field(
        default_factory=list,
        description="Put before every asset key: [warehouse] makes warehouse/<name>/requests.",
    )
    group_name: str | None = Field(
        default=None, description="The assets' group; by default the pipeline's name."
    )
    tags: dict[str, str] = Field(
        default_factory=dict, description="Tags added to every asset (and shown as filters)."
    )
    kinds: list[str] | None = Field(
        default=None,
        description="The kinds (icons) of the assets; by default the provider's: openai, "
        "azure, anthropic or local.",
    )
    owners: list[str] = Field(
        default_factory=list, description="Owners of the assets: emails or team:name."
    )


class RetryPolicyAttributes(_Attributes):
    """A Dagster retry policy for the assets' steps (a step retried re-uses its build)."""

    max_retries: int = Field(default=1, ge=0, description="Retries after the first failure.")
    delay: float | None = Field(default=None, ge=0, description="Seconds before a retry.")
    backoff: Literal["linear", "exponential"] | None = Field(
        default=None, description="How the delay grows from one retry to the next."
    )
    jitter: Literal["full", "plus_minus"] | None = Field(
        default=None, description="Randomness added to the delay."
    )

    def to_policy(self) -> dg.RetryPolicy:
        """The Dagster `RetryPolicy` these settings describe."""
        return dg.RetryPolicy(
            max_retries=self.max_retries,
            delay=self.delay,
            backoff=dg.Backoff(self.backoff.upper()) if self.backoff else None,
            jitter=dg.Jitter(self.jitter.upper()) if self.jitter else None,
        )


class BackfillPolicyAttributes(_Attributes):
    """How a backfill (or `dg launch --partition-range`) over many days runs."""

    type: Literal["single_run", "multi_run"] = Field(
        default="single_run",
        description="single_run: one run builds and submits the whole range; multi_run: "
        "runs of at most max_partitions_per_run days each.",
    )
    max_partitions_per_run: int = Field(
        default=7, ge=1, description="Days per run when type is multi_run."
    )

    def to_policy(self) -> dg.BackfillPolicy:
        """The Dagster `BackfillPolicy` these settings describe."""
        if self.type == "single_run":
            return dg.BackfillPolicy.single_run()
        return dg.BackfillPolicy.multi_run(max_partitions_per_run=self.max_partitions_per_run)


class OpAttributes(_Attributes):
    """Settings of the steps that materialize the assets, as dagster-sling's `op`."""

    tags: dict[str, str] = Field(
        default_factory=dict,
        description="Tags of the steps, e.g. dagster-k8s/config or a run queue's tag.",
    )
    pool: str | None = Field(
        default="batch_pipeline_submission",
        description="The concurrency pool of the batches step, which bounds uploads across "
        "every run; null runs it outside any pool.",
    )
    retry_policy: RetryPolicyAttributes | None = Field(
        default=None, description="Retry a failed step: {max_retries, delay, backoff, jitter}."
    )
    backfill_policy: BackfillPolicyAttributes | None = Field(
        default=None,
        description="Let a backfill or `dg launch --partition-range` run a range of days in "
        "one run ({type: single_run}) or in runs of N days ({type: multi_run, "
        "max_partitions_per_run: N}); by default each day is a run of its own.",
    )


@dataclass(frozen=True)
class AttributesTranslator(BatchPipelineTranslator):
    """The base translator with the `translation:` attributes applied to every asset."""

    attributes: TranslationAttributes = field(default_factory=TranslationAttributes)

    def get_asset_spec(self, spec: PipelineSpec, role: str) -> dg.AssetSpec:
        asset_spec = super().get_asset_spec(spec, role)
        given = self.attributes
        changes: dict[str, Any] = {}
        if given.key_prefix:
            changes["key"] = asset_spec.key.with_prefix(given.key_prefix)
        if given.group_name:
            changes["group_name"] = given.group_name
        if given.kinds is not None:
            changes["kinds"] = set(given.kinds)
        if given.owners:
            changes["owners"] = given.owners
        merged = asset_spec.merge_attributes(tags=given.tags) if given.tags else asset_spec
        return merged.replace_attributes(**changes) if changes else merged


def templatable(annotation: Any) -> Any:
    """`annotation` as the YAML schema takes it: every leaf may also be a `{{ ... }}` text,
    and a section's unknown keys pass (the load names them, each on its line)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return _templatable_model(annotation)
    origin = get_origin(annotation)
    if origin in (Union, types.UnionType):
        return Union[(*(templatable(arg) for arg in get_args(annotation)), str)]
    if origin is dict:
        key, value = get_args(annotation)
        return dict[key, templatable(value)] | str
    if annotation in (str, Any):
        return annotation
    return annotation | str


@cache
def _templatable_model(model: type[BaseModel]) -> type[BaseModel]:
    fields: dict[str, Any] = {}
    for name, info in model.model_fields.items():
        if info.exclude:
            continue
        # a missing key passes too: the load names it with the others
        default = None if info.is_required() else info.get_default(call_default_factory=True)
        fields[name] = (templatable(info.annotation), Field(default, description=info.description))
    return create_model(
        model.__name__,
        __config__=ConfigDict(extra="allow"),
        __doc__=model.__doc__,
        **fields,
    )
