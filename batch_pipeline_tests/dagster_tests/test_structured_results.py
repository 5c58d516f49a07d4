"""A structured pipeline in Dagster: the results asset's column schema shows the typed
`output_*` columns."""

from __future__ import annotations

import dagster as dg
import pytest

from batch_pipeline.core.spec import PipelineSpec
from batch_pipeline.dagster import build_batch_pipeline_defs
from batch_pipeline.demo import (
    DEMO_DAYS,
    QUIET_RUN_CONFIG,
    TYPED_SPEC_FILE,
    execute_run_request,
    sensor_run_requests,
    write_demo,
)

pytestmark = pytest.mark.slow


def test_the_results_column_schema_shows_the_typed_output_columns(tmp_path, batch_api):
    write_demo(tmp_path, base_url=batch_api)
    spec = PipelineSpec.from_yaml(tmp_path / TYPED_SPEC_FILE)
    defs = build_batch_pipeline_defs(spec=spec)
    day = DEMO_DAYS[0]
    with dg.instance_for_test() as instance:
        defs.resolve_job_def(f"{spec.name}_submit_job").execute_in_process(
            partition_key=day, instance=instance, run_config=QUIET_RUN_CONFIG
        )
        (request,) = sensor_run_requests(defs, spec, instance, expected=1, timeout_seconds=60)
        run = execute_run_request(defs, request, instance)
    assert run.success
    (event,) = run.get_asset_materialization_events()
    columns = {
        column.name: column.type
        for column in event.materialization.metadata["dagster/column_schema"].schema.columns
    }
    assert columns["output_category"] == "string"
    assert columns["output_urgency"] == "int64"
    assert columns["output_tags"] == "list<item: string>"
    assert columns["output_summary"] == "string"
    assert columns["response_text"] == "string"
