"""`build_submit_job`: a day's `requests` then `batches`, tagged for the run queue."""

from __future__ import annotations

from typing import TYPE_CHECKING

import dagster as dg

from batch_pipeline.core.spec import PipelineSpec
from batch_pipeline.dagster.assets import build_asset_specs
from batch_pipeline.dagster.translator import BatchPipelineTranslator

if TYPE_CHECKING:  # what define_asset_job returns; dagster does not export the name
    from dagster._core.definitions.unresolved_asset_job_definition import (
        UnresolvedAssetJobDefinition,
    )

# Runs with this tag share the run queue's submission limit (see dagster.yaml).
SUBMISSION_TAG = "batch_pipeline/submission"


def build_submit_job(
    *, spec: PipelineSpec, translator: BatchPipelineTranslator | None = None
) -> UnresolvedAssetJobDefinition:
    """The job `{name}_submit_job`: builds and submits one day, then returns."""
    specs = build_asset_specs(spec, translator)
    return dg.define_asset_job(
        name=f"{spec.name}_submit_job",
        selection=dg.AssetSelection.assets(specs["requests"].key, specs["batches"].key),
        tags={SUBMISSION_TAG: "true", "batch_pipeline/pipeline": spec.name},
        description=f"Builds and submits one day of {spec.name}; returns once submitted.",
    )
