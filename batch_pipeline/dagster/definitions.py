"""`build_batch_pipeline_defs`: everything Dagster needs to run one pipeline."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import dagster as dg

from batch_pipeline.core.spec import PipelineSpec
from batch_pipeline.dagster.assets import (
    SUBMISSION_POOL,
    backend_resource_key_for,
    build_batch_pipeline_assets,
)
from batch_pipeline.dagster.checks import build_results_checks
from batch_pipeline.dagster.jobs import build_submit_job
from batch_pipeline.dagster.resources import BatchBackendResource
from batch_pipeline.dagster.schedule_builder import build_nightly_schedule
from batch_pipeline.dagster.sensor_builder import build_batch_pipeline_sensor
from batch_pipeline.dagster.translator import BatchPipelineTranslator


def build_batch_pipeline_defs(
    *,
    spec: PipelineSpec,
    backend: BatchBackendResource | None = None,
    translator: BatchPipelineTranslator | None = None,
    backend_resource_key: str | None = None,
    op_tags: Mapping[str, Any] | None = None,
    retry_policy: dg.RetryPolicy | None = None,
    submission_pool: str | None = SUBMISSION_POOL,
    sensor_default_status: dg.DefaultSensorStatus = dg.DefaultSensorStatus.RUNNING,
    schedule_default_status: dg.DefaultScheduleStatus = dg.DefaultScheduleStatus.STOPPED,
) -> dg.Definitions:
    """Assets, checks, the submission job, the sensor, the nightly schedule and the backend.

    `backend` defaults to the spec's `backend:` section, its key read from the environment
    variable the spec names. `op_tags`, `retry_policy` and `submission_pool` go to the
    three assets' steps as in `build_batch_pipeline_assets`. The backend's resource key is
    `backend_resource_key`, by default `{spec.name}_batch_backend`.
    """
    backend = backend or BatchBackendResource.from_spec(spec.backend)
    backend_resource_key = backend_resource_key or backend_resource_key_for(spec)
    assets = build_batch_pipeline_assets(
        spec=spec,
        translator=translator,
        backend_resource_key=backend_resource_key,
        op_tags=op_tags,
        retry_policy=retry_policy,
        submission_pool=submission_pool,
    )
    submit_job = build_submit_job(spec=spec, translator=translator)
    return dg.Definitions(
        assets=assets,
        asset_checks=build_results_checks(
            spec=spec, translator=translator, backend_resource_key=backend_resource_key
        ),
        jobs=[submit_job],
        sensors=[
            build_batch_pipeline_sensor(
                spec=spec,
                backend=backend,
                translator=translator,
                default_status=sensor_default_status,
            )
        ],
        schedules=[
            build_nightly_schedule(
                spec=spec, job=submit_job, default_status=schedule_default_status
            )
        ],
        resources={backend_resource_key: backend},
    )
