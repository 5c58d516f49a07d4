"""The module workspace.yaml loads: a code server imports it on every run launch, so
importing it writes nothing; the demo's files appear when a run first needs them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import anthropic
import dagster as dg
import pytest

from batch_pipeline.demo import CLAUDE_PIPELINE, DEMO_DAYS, SOURCE_FILE, SPEC_FILE
from batch_pipeline_tests.dagster_tests.conftest import REPO_ROOT

LOAD = (
    "import batch_pipeline.definitions as module; "
    "repository = module.defs.get_repository_def(); "
    "assert repository.get_sensor_def('ticket_triage_batch_sensor')"
)
SKIPPED = {".git", ".venv", "__pycache__", ".pytest_cache", ".ruff_cache"}


def files_under(root: Path) -> dict[Path, int]:
    """Every file under `root` (skipping VCS, venv and cache folders) with its mtime."""
    found = {}
    for folder, folders, names in os.walk(root):
        folders[:] = [name for name in folders if name not in SKIPPED]
        for name in names:
            path = Path(folder, name)
            found[path] = path.stat().st_mtime_ns
    return found


@pytest.mark.slow
def test_importing_the_definitions_writes_no_file(tmp_path: Path) -> None:
    cwd, home = tmp_path / "cwd", tmp_path / "dagster_home"
    cwd.mkdir()
    home.mkdir()
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("BATCH_PIPELINE_", "DAGSTER_"))
    }
    env.update(
        DAGSTER_HOME=str(home),
        PYTHONDONTWRITEBYTECODE="1",
        DAGSTER_DISABLE_TELEMETRY="1",
        PYTHONPATH=str(REPO_ROOT),
    )
    before = files_under(REPO_ROOT)
    subprocess.run([sys.executable, "-c", LOAD], cwd=cwd, env=env, check=True, timeout=120)
    assert files_under(REPO_ROOT) == before
    assert list(cwd.rglob("*")) == []
    assert list(home.rglob("*")) == []


@pytest.mark.slow
def test_the_first_step_writes_the_sample_table(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, batch_api: str
) -> None:
    """The demo folder of `dagster dev` is filled by the `requests` run, not by the load."""
    folder = tmp_path / "ui"
    monkeypatch.setenv("BATCH_PIPELINE_DEMO_DIR", str(folder))
    monkeypatch.setenv("BATCH_PIPELINE_DEMO_API_URL", batch_api)
    from batch_pipeline.definitions import ui_demo_defs

    defs = ui_demo_defs()
    assert not folder.exists()
    job = defs.resolve_implicit_global_asset_job_def()
    with dg.instance_for_test() as instance:
        result = job.execute_in_process(
            instance=instance,
            partition_key=DEMO_DAYS[0],
            asset_selection=[dg.AssetKey(["ticket_triage", "requests"])],
        )
    assert result.success
    assert (folder / SOURCE_FILE).is_file() and (folder / SPEC_FILE).is_file()


@pytest.mark.slow
def test_the_claude_pipeline_of_the_ui_sends_its_batch_to_the_anthropic_dialect(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, batch_api: str
) -> None:
    monkeypatch.setenv("BATCH_PIPELINE_DEMO_DIR", str(tmp_path / "ui"))
    monkeypatch.setenv("BATCH_PIPELINE_DEMO_API_URL", batch_api)
    from batch_pipeline.definitions import ui_demo_defs

    job = ui_demo_defs().resolve_implicit_global_asset_job_def()
    roles = ("requests", "batches")
    with dg.instance_for_test() as instance:
        result = job.execute_in_process(
            instance=instance,
            partition_key=DEMO_DAYS[0],
            asset_selection=[dg.AssetKey([CLAUDE_PIPELINE, role]) for role in roles],
        )
    assert result.success
    metadata = {
        event.asset_key.path[-1]: event.materialization.metadata
        for event in result.get_asset_materialization_events()
    }
    (batch_id,) = metadata["batches"]["batch_ids"].value
    client = anthropic.Anthropic(base_url=batch_api.removesuffix("/v1"), api_key="any")
    counts = client.messages.batches.retrieve(batch_id).request_counts
    sent = counts.processing + counts.succeeded + counts.errored
    assert sent == metadata["requests"]["dagster/row_count"].value
