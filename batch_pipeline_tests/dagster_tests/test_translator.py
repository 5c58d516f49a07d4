"""The translator: keys, group, kinds, deps and JSON metadata of the three assets."""

from __future__ import annotations

import json

import dagster as dg
import pytest

from batch_pipeline.core.spec import PipelineSpec
from batch_pipeline.dagster import BatchPipelineTranslator, build_asset_specs
from batch_pipeline.dagster.translator import provider_kind
from batch_pipeline.demo import claude_spec_data, demo_spec_data

URL = "http://127.0.0.1:9/v1"


@pytest.fixture
def spec(tmp_path) -> PipelineSpec:
    return PipelineSpec.from_dict(demo_spec_data(base_url=URL), base_dir=tmp_path)


def test_three_roles_keyed_grouped_and_chained(spec: PipelineSpec) -> None:
    specs = build_asset_specs(spec)
    assert {role: s.key for role, s in specs.items()} == {
        role: dg.AssetKey([spec.name, role]) for role in ("requests", "batches", "results")
    }
    assert all(s.group_name == spec.name and s.kinds == {"local"} for s in specs.values())
    assert [dep.asset_key for dep in specs["batches"].deps] == [specs["requests"].key]
    assert [dep.asset_key for dep in specs["results"].deps] == [specs["batches"].key]
    assert not specs["requests"].deps


@pytest.mark.parametrize(
    ("provider", "kind"),
    [("openai", "openai"), ("azure", "azure"), ("local", "local"), ("Some Cloud", "some_cloud")],
)
def test_the_kind_is_the_provider_of_the_batch_api(provider: str, kind: str) -> None:
    assert provider_kind(provider) == kind


def test_an_azure_pipeline_shows_the_azure_kind(tmp_path) -> None:
    data = demo_spec_data(base_url=URL)
    data["backend"] = {
        "provider": "azure",
        "azure_endpoint": "https://example.openai.azure.com",
        "api_version": "2024-10-21",
    }
    spec = PipelineSpec.from_dict(data, base_dir=tmp_path)
    assert all(s.kinds == {"azure"} for s in build_asset_specs(spec).values())


def test_metadata_has_short_labels_and_the_spec_as_json(spec: PipelineSpec) -> None:
    for asset_spec in build_asset_specs(spec).values():
        assert set(asset_spec.metadata) == {"provider", "model", "endpoint", "batch_pipeline/spec"}
        assert asset_spec.metadata["provider"] == "local"
        json.dumps(asset_spec.metadata["batch_pipeline/spec"].value)


def test_the_provider_is_in_every_assets_metadata(spec: PipelineSpec, tmp_path) -> None:
    claude = PipelineSpec.from_dict(claude_spec_data(base_url=URL), base_dir=tmp_path)
    for pipeline, provider in ((spec, "local"), (claude, "anthropic")):
        for asset_spec in build_asset_specs(pipeline).values():
            assert asset_spec.metadata["provider"] == provider


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://bp:hunter2-secret@db.example/ledger",
        "postgresql://bp@db.example/ledger?password=hunter2-secret",
        "postgresql:///ledger?host=db.example&user=bp&password=hunter2-secret",
        "mssql+pyodbc://@db.example/?odbc_connect=DSN%3Dx%3BUID%3Dbp%3BPWD%3Dhunter2-secret",
        "bigquery://db.example/dataset?credentials_base64=aHVudGVyMi1zZWNyZXQ=hunter2-secret",
    ],
)
def test_database_passwords_are_masked(tmp_path, url: str) -> None:
    data = demo_spec_data(base_url=URL)
    data["ledger"] = {"url": url}
    spec = PipelineSpec.from_dict(data, base_dir=tmp_path)
    text = json.dumps(build_asset_specs(spec)["results"].metadata["batch_pipeline/spec"].value)
    assert "hunter2-secret" not in text
    assert "db.example" in text


def test_a_changed_spec_changes_the_code_version(tmp_path) -> None:
    first = PipelineSpec.from_dict(demo_spec_data(base_url=URL), base_dir=tmp_path)
    data = demo_spec_data(base_url=URL)
    data["request"]["prompt"] = "Ticket: {body}"
    second = PipelineSpec.from_dict(data, base_dir=tmp_path)
    assert build_asset_specs(first)["requests"].code_version != (
        build_asset_specs(second)["requests"].code_version
    )


def test_an_unknown_role_names_itself_and_the_pipeline(spec: PipelineSpec) -> None:
    with pytest.raises(ValueError, match=r"'embeddings'.*ticket_triage"):
        BatchPipelineTranslator().get_asset_spec(spec, "embeddings")


def test_a_subclass_renames_keys_and_the_deps_follow(spec: PipelineSpec) -> None:
    class Prefixed(BatchPipelineTranslator):
        def get_asset_spec(self, spec: PipelineSpec, role: str) -> dg.AssetSpec:
            base = super().get_asset_spec(spec, role)
            return base.replace_attributes(key=base.key.with_prefix("llm"))

    specs = build_asset_specs(spec, Prefixed())
    assert specs["results"].key == dg.AssetKey(["llm", spec.name, "results"])
    assert [dep.asset_key for dep in specs["results"].deps] == [specs["batches"].key]
