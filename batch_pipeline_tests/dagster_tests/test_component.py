"""BatchPipelineComponent: pipelines declared in defs.yaml files load as they do in Python."""

from __future__ import annotations

import shutil
import sys
from datetime import datetime
from pathlib import Path

import dagster as dg
import pytest

from batch_pipeline.core.spec import PipelineSpec
from batch_pipeline.dagster import BatchPipelineComponent
from batch_pipeline.dagster.component_checks import DefsYamlError
from batch_pipeline.demo import DEMO_DAYS, write_demo
from batch_pipeline_tests.dagster_tests.conftest import FIXTURES

KEY_ENV = "BP_COMPONENT_TEST_KEY"
PIPELINES = ("ticket_triage", "ticket_translation")


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, batch_api: str) -> Path:
    """The fixture project copied to tmp_path, importable, its sample table in place."""
    root = tmp_path / "project"
    shutil.copytree(FIXTURES / "project", root)
    monkeypatch.syspath_prepend(str(root / "src"))
    monkeypatch.setenv(KEY_ENV, "sk-component-test-key")
    for name in [m for m in sys.modules if m.startswith("bp_component_fixture")]:
        monkeypatch.delitem(sys.modules, name)
    write_demo(root / "src/bp_component_fixture/defs/ticket_triage", base_url=batch_api)
    return root


def test_every_spec_key_is_an_attribute() -> None:
    spec_keys = set(PipelineSpec.model_fields) - {"base_dir"}
    assert spec_keys <= set(BatchPipelineComponent.model_fields)


@pytest.mark.slow
def test_two_pipelines_load_from_their_defs_yaml(project: Path) -> None:
    """One is declared as `batch_pipeline.BatchPipelineComponent`, the other by its module."""
    defs = dg.load_from_defs_folder(path_within_project=project)
    keys = {key.to_user_string() for key in defs.resolve_all_asset_keys()}
    assert keys == {f"{p}/{role}" for p in PIPELINES for role in ("requests", "batches", "results")}
    assert {s.name for s in defs.sensors} == {f"{p}_batch_sensor" for p in PIPELINES}
    schedules = {s.name: s for s in defs.schedules}
    assert schedules["ticket_triage_nightly"].cron_schedule == "0 3 * * *"
    backend = defs.resources["ticket_triage_batch_backend"]
    assert backend.provider == "openai"
    assert isinstance(backend.api_key, dg.EnvVar) and backend.api_key.env_var_name == KEY_ENV
    translation = defs.resolve_assets_def(dg.AssetKey(["ticket_translation", "requests"]))
    days = translation.partitions_def.get_partition_keys(current_time=datetime(2027, 1, 1))
    assert (days[0], days[-1]) == ("2026-11-01", "2026-11-30")


@pytest.mark.slow
def test_relative_paths_are_relative_to_the_defs_yaml_and_the_output_is_outside_the_package(
    project: Path, batch_api: str
) -> None:
    defs = dg.load_from_defs_folder(path_within_project=project)
    job = defs.resolve_implicit_job_def_def_for_assets([dg.AssetKey(["ticket_triage", "requests"])])
    result = job.execute_in_process(
        partition_key=DEMO_DAYS[0], asset_selection=[dg.AssetKey(["ticket_triage", "requests"])]
    )
    assert result.success
    (event,) = result.get_asset_materialization_events()
    manifest = event.materialization.metadata["manifest"].value
    assert Path(manifest).is_relative_to(project / "batch_pipeline_output" / "ticket_triage")


def test_an_unknown_attribute_is_refused_by_name() -> None:
    with pytest.raises(Exception, match="colour"):
        BatchPipelineComponent.from_attributes_dict(
            attributes={
                "name": "x",
                "source": {"path": "t.parquet", "key": "k", "partition_column": "d"},
                "request": {"model": "gpt-4o-mini", "prompt": "{a}"},
                "partitions": {"start": "2026-01-01"},
                "colour": "blue",
            }
        )


def test_a_bad_spec_value_names_the_key() -> None:
    with pytest.raises(Exception, match=r"partitions\.\w*\.?start(.|\n)*2026-02-30"):
        BatchPipelineComponent.from_attributes_dict(
            attributes={
                "name": "x",
                "source": {"path": "t.parquet", "key": "k", "partition_column": "d"},
                "request": {"model": "gpt-4o-mini", "prompt": "{a}"},
                "partitions": {"start": "2026-02-30"},
            }
        )


def test_the_name_is_checked_by_the_core_when_the_component_loads() -> None:
    with pytest.raises(DefsYamlError, match=r"attributes\.name: must match"):
        BatchPipelineComponent.from_attributes_dict(
            attributes={
                "name": "Not-A-Name",
                "source": {"path": "s3://bucket/t.parquet", "key": "k", "partition_column": "d"},
                "request": {"model": "gpt-4o-mini", "prompt": "{a}"},
                "partitions": {"start": "2026-01-01"},
            }
        )
