"""A crash at any step of submission, or two runs at once, never pays for a batch twice."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
from datetime import datetime
from pathlib import Path

import openai
import pandas as pd
import pytest

from batch_pipeline import PipelineSpec
from batch_pipeline.core.pipeline import Pipeline
from batch_pipeline_tests.conftest import ticket_spec, write_tickets

DAY = "2026-11-20"
ROWS = 9
PER_FILE = 4  # three shards

# A child process that runs the pipeline and kills itself (SIGKILL: no cleanup, no finally)
# right after the backend step named on its command line.
CRASHING_CHILD = textwrap.dedent(
    """
    import json, os, signal, sys
    from batch_pipeline import PipelineSpec
    from batch_pipeline.core.backends import openai as backend_module
    from batch_pipeline.core.pipeline import Pipeline

    spec_path, step, day = sys.argv[1], sys.argv[2], sys.argv[3]
    real = getattr(backend_module.OpenAIBackend, step)

    def crash_after(self, *args, **kwargs):
        result = real(self, *args, **kwargs)
        os.kill(os.getpid(), signal.SIGKILL)
        return result

    setattr(backend_module.OpenAIBackend, step, crash_after)
    spec = PipelineSpec.from_yaml(spec_path)
    Pipeline(spec).run(day, poll_interval=0.2, timeout=60)
    """
)

RUNNING_CHILD = textwrap.dedent(
    """
    import sys
    from batch_pipeline import PipelineSpec
    from batch_pipeline.core.pipeline import Pipeline

    summary = Pipeline(PipelineSpec.from_yaml(sys.argv[1])).run(
        sys.argv[2], poll_interval=0.2, timeout=90
    )
    print(summary.rows)
    """
)


def write_spec(tmp_path: Path, base_url: str, **overrides) -> Path:
    at = datetime(2026, 11, 20, 10)
    rows = [
        {"ticket_id": f"R{i}", "subject": "s", "body": f"request {i}", "created_at": at}
        for i in range(ROWS)
    ]
    write_tickets(tmp_path / "tickets.parquet", rows)
    spec = ticket_spec(tmp_path, base_url, limits={"max_requests_per_file": PER_FILE}, **overrides)
    path = tmp_path / "pipeline.yaml"
    path.write_text(json.dumps(spec))
    return path


def run_child(script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize("step", ["upload_file", "create_batch"])
def test_crash_after_a_step_then_rerun_leaves_one_batch_per_shard(tmp_path, batch_api, step):
    spec_path = write_spec(tmp_path, batch_api, name=f"crash_{step}")
    crashed = run_child(CRASHING_CHILD, str(spec_path), step, DAY)
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr

    spec = PipelineSpec.from_yaml(spec_path)
    with Pipeline(spec) as pipeline:
        summary = pipeline.run(DAY, poll_interval=0.2, timeout=60)
        assert summary.counts["succeeded"] == ROWS
        batches = pipeline.ledger.batches(spec.name)
    results = pd.read_parquet(summary.path)
    assert sorted(results["ticket_id"]) == sorted(f"R{i}" for i in range(ROWS))

    client = openai.OpenAI(base_url=batch_api, api_key="local")
    mine = [
        b
        for b in client.batches.list(limit=100)
        if (b.metadata or {}).get("batch_pipeline_pipeline") == spec.name
    ]
    identities = [b.metadata["batch_pipeline_submission"] for b in mine]
    assert len(identities) == len(set(identities)) == 3, identities
    assert {b["batch_id"] for b in batches} == {b.id for b in mine}


def test_crash_before_the_ledger_write_is_adopted_not_paid_again(tmp_path, batch_api):
    """`create_batch` returned but the ledger never heard of the batch: the rerun finds the
    batch through the shard identity in its metadata."""
    spec_path = write_spec(tmp_path, batch_api, name="crash_ledger")
    crashed = run_child(CRASHING_CHILD, str(spec_path), "create_batch", DAY)
    assert crashed.returncode == -signal.SIGKILL
    spec = PipelineSpec.from_yaml(spec_path)
    with Pipeline(spec) as pipeline:
        assert pipeline.ledger.batches(spec.name) == []  # the write never happened
        pipeline.run(DAY, poll_interval=0.2, timeout=60)
        recorded = pipeline.ledger.batches(spec.name)
    client = openai.OpenAI(base_url=batch_api, api_key="local")
    mine = [
        b
        for b in client.batches.list(limit=100)
        if (b.metadata or {}).get("batch_pipeline_pipeline") == spec.name
    ]
    assert len(mine) == 3
    first = min(mine, key=lambda b: b.created_at)
    assert first.id in {b["batch_id"] for b in recorded}


@pytest.mark.parametrize("ledger", ["sqlite", "postgresql"])
def test_two_concurrent_runs_of_one_partition_pay_once(tmp_path, batch_api, ledger, request):
    overrides = {"name": f"concurrent_{ledger}"}
    if ledger == "postgresql":
        overrides["ledger"] = {"url": request.getfixturevalue("postgres_database")}
    spec_path = write_spec(tmp_path, batch_api, **overrides)
    children = [
        subprocess.Popen(
            [sys.executable, "-c", RUNNING_CHILD, str(spec_path), DAY],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    for child in children:
        out, err = child.communicate(timeout=120)
        assert child.returncode == 0, err
        assert out.strip() == str(ROWS)
    client = openai.OpenAI(base_url=batch_api, api_key="local")
    mine = [
        b
        for b in client.batches.list(limit=100)
        if (b.metadata or {}).get("batch_pipeline_pipeline") == overrides["name"]
    ]
    assert len(mine) == 3, [b.metadata for b in mine]
    files = [
        f for f in client.files.list(purpose="batch") if f.filename.startswith(overrides["name"])
    ]
    assert len(files) == 3
