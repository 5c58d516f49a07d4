"""BatchPipelineComponent loaded from a defs.yaml as `dg check defs` loads it: each mistake
is named with its line, templates fill numbers, and the Dagster attributes reach the
definitions."""

from __future__ import annotations

import re
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest
import yaml

from batch_pipeline.dagster import BatchPipelineComponent
from batch_pipeline.dagster.component_checks import DefsYamlError
from batch_pipeline.dagster.component_scaffolder import (
    BatchPipelineScaffoldParams,
    scaffold_attributes,
)

TABLE = "id,created_at,text\n1,2026-01-01,My invoice is wrong\n"
COMPONENT = "batch_pipeline.dagster.BatchPipelineComponent"


@pytest.fixture(autouse=True)
def in_tmp_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Dagster's test component tree is rooted in the working folder."""
    monkeypatch.chdir(tmp_path)


def good_attributes() -> dict:
    return {
        "name": "triage",
        "source": {"path": "tickets.csv", "key": "id", "partition_column": "created_at"},
        "request": {"model": "gpt-4o-mini", "prompt": "{text}"},
        "partitions": {"start": "2026-01-01"},
    }


def write_defs(folder: Path, attributes: dict) -> Path:
    """A defs folder holding the sample table and a defs.yaml of `attributes` in block
    style, one key a line."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tickets.csv").write_text(TABLE, encoding="utf-8")
    text = yaml.safe_dump({"type": COMPONENT, "attributes": attributes}, sort_keys=False)
    (folder / "defs.yaml").write_text(text, encoding="utf-8")
    return folder / "defs.yaml"


def line_of(path: Path, text: str) -> int:
    """The 1-based number of the first line of `path` that contains `text`."""
    lines = path.read_text(encoding="utf-8").splitlines()
    return next(number for number, line in enumerate(lines, 1) if text in line)


def load(path: Path, context: dg.ComponentLoadContext | None = None) -> BatchPipelineComponent:
    """The component the defs.yaml at `path` declares, loaded as a defs folder loads it."""
    found = BatchPipelineComponent.from_yaml_path(path, context)
    while not isinstance(found, BatchPipelineComponent):  # folders, then the defs.yaml
        found = (
            next(iter(found.children.values()))
            if hasattr(found, "children")
            else found.components[0]
        )
    return found


def load_error(path: Path) -> str:
    """The message a failed load gives, as `dg check defs` shows it under the tree."""
    with pytest.raises(Exception) as caught:
        load(path)
    error = caught.value
    while error is not None and not isinstance(error, DefsYamlError):
        error = error.__cause__
    assert error is not None, f"no DefsYamlError in {caught.value!r}"
    return str(error)


def assert_reported(message: str, path: Path, line_text: str, key: str, why: str) -> None:
    line = line_of(path, line_text)
    pattern = rf"{re.escape(str(path))}:{line} attributes\.{re.escape(key)}: .*{why}"
    assert re.search(pattern, message), message


MISTAKES = {
    "missing source file": (
        lambda a: a["source"].update(path="nowhere.csv"),
        ("path: nowhere.csv", "source.path", "does not exist"),
    ),
    "key not in the source": (
        lambda a: a["source"].update(key="ticket_id"),
        ("key: ticket_id", "source.key", "'ticket_id' is not a column"),
    ),
    "partition column not in the source": (
        lambda a: a["source"].update(partition_column="day"),
        ("partition_column: day", "source.partition_column", "'day' is not a column"),
    ),
    "placeholder naming no column": (
        lambda a: a["request"].update(prompt="Subject: {subject}"),
        ("prompt: 'Subject:", "request.prompt", r"\{subject\} names no column"),
    ),
    "nested typo": (
        lambda a: a["request"].update(promt=a["request"].pop("prompt")),
        ("promt:", "request.promt", "unknown key"),
    ),
    "invalid name": (
        lambda a: a.update(name="Ticket-Triage"),
        ("name: Ticket-Triage", "name", r"must match \[a-z\]"),
    ),
    "unset environment variable, called": (
        lambda a: a["source"].update(key="{{ env('BP_TEST_UNSET_KEY') }}"),
        ("key: '{{ env(", "source.key", "BP_TEST_UNSET_KEY is not set"),
    ),
    "unset environment variable": (
        lambda a: a["request"].update(model="{{ env.BP_TEST_UNSET_MODEL }}"),
        ("model: '{{ env.", "request.model", "BP_TEST_UNSET_MODEL is not set"),
    ),
}


@pytest.mark.parametrize("mistake", list(MISTAKES))
def test_each_mistake_is_named_on_its_defs_yaml_line(tmp_path: Path, mistake: str) -> None:
    change, (line_text, key, why) = MISTAKES[mistake]
    attributes = good_attributes()
    change(attributes)
    path = write_defs(tmp_path / "triage", attributes)
    message = load_error(path)
    assert_reported(message, path, line_text, key, why)
    assert "Traceback" not in message


def test_a_spec_error_and_a_source_mistake_are_reported_together(tmp_path: Path) -> None:
    attributes = good_attributes()
    attributes["limits"] = {"max_requests_per_fle": 10}
    attributes["source"]["key"] = "ticket_id"
    path = write_defs(tmp_path / "triage", attributes)
    message = load_error(path)
    assert_reported(message, path, "max_requests_per_fle", "limits.max_requests_per_fle", "unknown")
    assert_reported(message, path, "key: ticket_id", "source.key", "not a column")


def test_templates_fill_numbers_and_booleans_inside_sections(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BP_TEST_ATTEMPTS", "5")
    monkeypatch.setenv("BP_TEST_KEEP", "true")
    attributes = good_attributes()
    attributes["retry"] = {"max_attempts": "{{ env.BP_TEST_ATTEMPTS }}"}
    attributes["output"] = {"keep_provider_files": "{{ env.BP_TEST_KEEP }}"}
    component = load(write_defs(tmp_path / "triage", attributes))
    spec = component.to_spec(tmp_path / "triage")
    assert spec.retry.max_attempts == 5 and spec.output.keep_provider_files is True


def test_the_dagster_attributes_reach_the_definitions(tmp_path: Path) -> None:
    attributes = good_attributes()
    attributes["translation"] = {
        "key_prefix": ["warehouse"],
        "group_name": "llm",
        "tags": {"team": "support"},
        "kinds": ["openai", "batch"],
    }
    attributes["op"] = {
        "tags": {"queue": "llm"},
        "pool": "uploads",
        "retry_policy": {"max_retries": 2, "delay": 10, "backoff": "exponential"},
        "backfill_policy": {"type": "multi_run", "max_partitions_per_run": 7},
    }
    attributes["sensor_default_status"] = "stopped"
    attributes["sensor_minimum_interval_seconds"] = 120
    attributes["schedule_default_status"] = "running"
    defs = dg.build_defs_for_component(component=load(write_defs(tmp_path / "t", attributes)))
    batches = defs.resolve_assets_def(dg.AssetKey(["warehouse", "triage", "batches"]))
    spec = batches.specs_by_key[dg.AssetKey(["warehouse", "triage", "batches"])]
    assert spec.group_name == "llm" and spec.tags["team"] == "support"
    assert set(spec.kinds) == {"openai", "batch"}
    assert [dep.asset_key for dep in spec.deps] == [
        dg.AssetKey(["warehouse", "triage", "requests"])
    ]
    assert batches.node_def.tags["queue"] == "llm" and batches.node_def.pool == "uploads"
    assert batches.node_def.retry_policy == dg.RetryPolicy(
        max_retries=2, delay=10, backoff=dg.Backoff.EXPONENTIAL
    )
    assert batches.backfill_policy == dg.BackfillPolicy.multi_run(max_partitions_per_run=7)
    (sensor,) = defs.sensors
    assert sensor.default_status == dg.DefaultSensorStatus.STOPPED
    assert sensor.minimum_interval_seconds == 120
    (schedule,) = defs.schedules
    assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING


def test_without_an_output_dir_the_output_goes_outside_the_package(tmp_path: Path) -> None:
    path = write_defs(tmp_path / "src/project/defs/triage", good_attributes())
    context = dg.ComponentTree.for_test().load_context
    component = load(path, context)
    spec = component.to_spec(path.parent, project_root=context.project_root)
    assert spec.pipeline_dir == context.project_root / "batch_pipeline_output" / "triage"
    assert not spec.pipeline_dir.is_relative_to(path.parent)


def test_every_attribute_has_a_description() -> None:
    schema = BatchPipelineComponent.model().model_json_schema()
    objects = [schema, *schema["$defs"].values()]
    undescribed = [
        f"{obj.get('title')}.{name}"
        for obj in objects
        for name, field in obj.get("properties", {}).items()
        if not field.get("description")
    ]
    assert undescribed == []


def test_a_scaffolded_pipeline_over_a_given_table_prompts_with_its_other_columns(
    tmp_path: Path,
) -> None:
    table = pd.DataFrame(
        {"ticket_id": [1], "created_at": ["2026-01-01"], "subject": ["Hi"], "body": ["Help"]}
    )
    (tmp_path / "data").mkdir()
    table.to_parquet(tmp_path / "data/tickets.parquet")
    params = BatchPipelineScaffoldParams(
        source_path="data/tickets.parquet", key="ticket_id", provider="anthropic"
    )
    attributes = scaffold_attributes("triage", "data/tickets.parquet", params, tmp_path)
    assert attributes["request"]["prompt"] == "body: {body}\nsubject: {subject}"
    assert attributes["backend"] == {"provider": "anthropic", "api_key_env": "ANTHROPIC_API_KEY"}
    path = tmp_path / "src/project/defs/triage/defs.yaml"
    path.parent.mkdir(parents=True)
    text = yaml.safe_dump({"type": COMPONENT, "attributes": attributes}, sort_keys=False)
    path.write_text(text, encoding="utf-8")
    spec = load(path).to_spec(path.parent)
    assert spec.source.path == f"{tmp_path}/data/tickets.parquet"
    assert spec.pipeline_dir == tmp_path / "batch_pipeline_output" / "triage"
