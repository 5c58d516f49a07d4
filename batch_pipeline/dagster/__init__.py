"""The Dagster layer of batch_pipeline: a thin shell over the core, one public surface.

Also the `dagster_dg_cli.registry_modules` entry point, so `dg list components` finds
`BatchPipelineComponent`.
"""

from batch_pipeline.dagster.assets import (
    DEFAULT_BACKEND_RESOURCE_KEY as DEFAULT_BACKEND_RESOURCE_KEY,
)
from batch_pipeline.dagster.assets import SUBMISSION_POOL as SUBMISSION_POOL
from batch_pipeline.dagster.assets import backend_resource_key_for as backend_resource_key_for
from batch_pipeline.dagster.assets import build_asset_specs as build_asset_specs
from batch_pipeline.dagster.assets import (
    build_batch_pipeline_assets as build_batch_pipeline_assets,
)
from batch_pipeline.dagster.checks import FAILED_SHARE_CHECK as FAILED_SHARE_CHECK
from batch_pipeline.dagster.checks import ROWS_ONCE_CHECK as ROWS_ONCE_CHECK
from batch_pipeline.dagster.checks import build_results_checks as build_results_checks
from batch_pipeline.dagster.component import BatchPipelineComponent as BatchPipelineComponent
from batch_pipeline.dagster.definitions import (
    build_batch_pipeline_defs as build_batch_pipeline_defs,
)
from batch_pipeline.dagster.jobs import SUBMISSION_TAG as SUBMISSION_TAG
from batch_pipeline.dagster.jobs import build_submit_job as build_submit_job
from batch_pipeline.dagster.partitions import build_partitions_def as build_partitions_def
from batch_pipeline.dagster.resources import BatchBackendResource as BatchBackendResource
from batch_pipeline.dagster.schedule_builder import (
    build_nightly_schedule as build_nightly_schedule,
)
from batch_pipeline.dagster.sensor_builder import (
    BatchPipelineSensorCursor as BatchPipelineSensorCursor,
)
from batch_pipeline.dagster.sensor_builder import (
    build_batch_pipeline_sensor as build_batch_pipeline_sensor,
)
from batch_pipeline.dagster.translator import BatchPipelineTranslator as BatchPipelineTranslator

__all__ = [
    "DEFAULT_BACKEND_RESOURCE_KEY",
    "FAILED_SHARE_CHECK",
    "ROWS_ONCE_CHECK",
    "SUBMISSION_POOL",
    "SUBMISSION_TAG",
    "BatchBackendResource",
    "BatchPipelineComponent",
    "BatchPipelineSensorCursor",
    "BatchPipelineTranslator",
    "backend_resource_key_for",
    "build_asset_specs",
    "build_batch_pipeline_assets",
    "build_batch_pipeline_defs",
    "build_nightly_schedule",
    "build_partitions_def",
    "build_results_checks",
    "build_submit_job",
]
