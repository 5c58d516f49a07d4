"""Dagster's own tools on the repo: `dagster definitions validate`, `dg list components`, and
the webserver (on the PostgreSQL instance) answering GraphQL about the demo pipeline."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from batch_pipeline_tests.dagster_tests.conftest import FIXTURES, REPO_ROOT
from batch_pipeline_tests.dagster_tests.dagster_commands import (
    BIN,
    free_port,
    webserver_command,
)

pytestmark = pytest.mark.slow

WEBSERVER_START_SECONDS = 90.0
QUERY = """
{
  repositoriesOrError {
    ... on RepositoryConnection {
      nodes {
        assetNodes { assetKey { path } kinds }
        sensors { name }
        schedules { name cronSchedule }
      }
    }
  }
}
"""


def run(command: list[str], env: dict[str, str], cwd: Path = REPO_ROOT) -> str:
    done = subprocess.run(
        command, cwd=cwd, env=env, capture_output=True, text=True, timeout=180, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_dagster_definitions_validate_passes(subprocess_env: dict[str, str]) -> None:
    output = run(
        [str(BIN / "dagster"), "definitions", "validate", "-w", "workspace.yaml"], subprocess_env
    )
    assert "Validation successful" in output or "success" in output.lower()


def test_dg_lists_the_component(subprocess_env: dict[str, str], tmp_path: Path) -> None:
    output = run([str(BIN / "dg"), "list", "components", "--json"], subprocess_env, cwd=tmp_path)
    summaries = {item["key"]: item["summary"] for item in json.loads(output)["items"]}
    assert summaries["batch_pipeline.dagster.BatchPipelineComponent"].startswith(
        "Run one LLM pipeline through a provider's Batch API"
    )


def test_dg_check_yaml_points_at_a_value_of_the_wrong_type(
    subprocess_env: dict[str, str], tmp_path: Path
) -> None:
    """The schema takes a template for any value and leaves unknown keys to `dg check defs`
    (which names each on its own line); it catches what no template could be, at the line of
    its section."""
    project = tmp_path / "project"
    shutil.copytree(FIXTURES / "project", project)
    defs_yaml = project / "src/bp_component_fixture/defs/ticket_triage/defs.yaml"
    run([str(BIN / "dg"), "check", "yaml", str(defs_yaml.parent)], subprocess_env, cwd=project)

    text = defs_yaml.read_text().replace("max_failed_share: 0.1", "max_failed_share: [0.1]")
    defs_yaml.write_text(text)
    done = subprocess.run(
        [str(BIN / "dg"), "check", "yaml", str(defs_yaml.parent)],
        cwd=project,
        env=subprocess_env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 1
    assert "defs.yaml:21" in done.stdout and "max_failed_share': [0.1]" in done.stdout


@pytest.fixture
def webserver(subprocess_env: dict[str, str], dagster_home: Path) -> Iterator[str]:
    """dagster-webserver on a free port, on the instance the repo's dagster.yaml describes."""
    port = free_port()
    process = subprocess.Popen(
        webserver_command(port),
        cwd=REPO_ROOT,
        env={**subprocess_env, "DAGSTER_HOME": str(dagster_home)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_until_answering(url, process)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def test_the_webserver_lists_the_assets_sensor_and_schedule(webserver: str) -> None:
    request = urllib.request.Request(
        f"{webserver}/graphql",
        data=json.dumps({"query": QUERY}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        (repository,) = json.load(response)["data"]["repositoriesOrError"]["nodes"]
    kinds = {"/".join(node["assetKey"]["path"]): node["kinds"] for node in repository["assetNodes"]}
    # the demo's plain, typed and Claude pipelines and the judge of the plain one's answers,
    # each of its provider's kind
    pipelines = {
        "ticket_triage": "local",
        "ticket_triage_claude": "anthropic",
        "ticket_triage_judge": "local",
        "ticket_triage_typed": "local",
    }
    assert kinds == {
        f"{p}/{role}": [kind]
        for p, kind in pipelines.items()
        for role in ("requests", "batches", "results")
    }
    assert sorted(s["name"] for s in repository["sensors"]) == sorted(
        f"{p}_batch_sensor" for p in pipelines
    )
    assert {s["name"]: s["cronSchedule"] for s in repository["schedules"]} == {
        f"{p}_nightly": "0 1 * * *" for p in pipelines
    }


def _wait_until_answering(url: str, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + WEBSERVER_START_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"dagster-webserver exited: {process.stderr.read()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/server_info", timeout=2):
                return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.5)
    pytest.fail(f"dagster-webserver did not answer within {WEBSERVER_START_SECONDS:.0f} s")
