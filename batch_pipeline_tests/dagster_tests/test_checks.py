"""The results checks as Definitions: they read the ledger through the pipeline's backend
resource, and leave Dagster's preview warning to the user's own filters."""

from __future__ import annotations

import warnings

import dagster as dg

from batch_pipeline.core.spec import PipelineSpec
from batch_pipeline.dagster import (
    FAILED_SHARE_CHECK,
    ROWS_ONCE_CHECK,
    backend_resource_key_for,
    build_batch_pipeline_defs,
    build_results_checks,
)
from batch_pipeline.demo import demo_spec_data

URL = "http://127.0.0.1:9/v1"


def test_the_checks_run_on_the_backend_resource_of_the_definitions(tmp_path) -> None:
    spec = PipelineSpec.from_dict(demo_spec_data(base_url=URL), base_dir=tmp_path)
    defs = build_batch_pipeline_defs(spec=spec)
    names = {key.name for checks in defs.asset_checks for key in checks.check_keys}
    assert names == {ROWS_ONCE_CHECK, FAILED_SHARE_CHECK}
    for checks in defs.asset_checks:
        assert backend_resource_key_for(spec) in checks.required_resource_keys


def test_the_preview_warning_of_partitioned_checks_is_not_silenced(tmp_path) -> None:
    """A user who turns Dagster's preview warnings into errors gets them, not a library that
    quietly overrode the filter."""
    spec = PipelineSpec.from_dict(demo_spec_data(base_url=URL), base_dir=tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        build_results_checks(spec=spec)
    previews = [w for w in caught if issubclass(w.category, dg.PreviewWarning)]
    assert previews and all("partitions_def" in str(w.message) for w in previews)
