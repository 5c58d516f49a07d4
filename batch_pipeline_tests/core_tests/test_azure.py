"""Provider `azure` end to end: a spec as written in YAML, the SDK's AzureOpenAI client, and
the local Batch API answering in Azure's dialect (`/openai/...`, `api-version`, `api-key`)."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pandas as pd
import pytest
import yaml

from batch_pipeline import PipelineSpec, load_pipeline
from batch_pipeline.core.backends.openai import make_backend
from batch_pipeline.local_api.server import run_local_batch_api
from batch_pipeline_tests.conftest import ticket_spec, write_tickets

DAY = "2026-11-20"
KEY = "azure-local-key-7f3a"
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


@pytest.mark.slow
def test_an_azure_pipeline_runs_a_partition_to_completion(tmp_path: Path) -> None:
    at = datetime(2026, 11, 20, 9, 30)
    rows = [
        {
            "ticket_id": f"A{i}",
            "subject": f"Order {i}",
            "body": f"Parcel {i} is late.",
            "created_at": at,
        }
        for i in range(7)
    ]
    write_tickets(tmp_path / "tickets.parquet", rows)
    with run_local_batch_api(
        tmp_path / "state", completion_window_seconds=30, api_key=KEY
    ) as base_url:
        spec = PipelineSpec.from_yaml(_write_spec(tmp_path, base_url.removesuffix("/v1")))
        backend = make_backend(spec.backend, env={"AZURE_OPENAI_API_KEY": KEY})
        with load_pipeline(spec, backend=backend) as pipeline:
            summary = pipeline.run(DAY, poll_interval=0.2, timeout=60)
            batches = pipeline.ledger.batches("tickets", partition=DAY)
    results = pd.read_parquet(summary.path)
    assert sorted(results["ticket_id"]) == [f"A{i}" for i in range(7)]
    assert set(results["status"]) == {"succeeded"}
    assert all(text.startswith("Subject: Order") for text in results["response_text"])
    assert batches and all(batch["status"] == "completed" for batch in batches)
