"""Provider `azure` end to end: a spec as written in YAML, the SDK's AzureOpenAI client, and
the local Batch API answering in Azure's dialect (`/openai/...`, `api-version`, `api-key`)."""

from __future__ import annotations

from pathlib import Path

import yaml

from batch_pipeline import PipelineSpec
from batch_pipeline_tests.conftest import ticket_spec

DEPLOYMENT = "tickets-gpt-4o-mini"  # on Azure the model is a deployment's name

AZURE_BACKEND_YAML = """\
backend:
  provider: azure
  azure_endpoint: {endpoint}
  api_version: 2024-10-21
  api_key_env: AZURE_OPENAI_API_KEY
"""


def _write_spec(tmp_path: Path, endpoint: str) -> Path:
    """A spec file with an Azure backend, its api_version written unquoted."""
    spec = ticket_spec(tmp_path, "unused", request={"model": DEPLOYMENT})
    del spec["backend"]
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(spec) + AZURE_BACKEND_YAML.format(endpoint=endpoint))
    return path


def test_an_unquoted_api_version_in_yaml_is_the_version_text(tmp_path: Path) -> None:
    """YAML reads `2024-10-21` as a date; the spec takes it as the text it was written as."""
    spec = PipelineSpec.from_yaml(_write_spec(tmp_path, "https://example.openai.azure.com"))
    assert spec.backend.api_version == "2024-10-21"
