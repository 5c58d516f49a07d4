"""A new `dg` project, laid out as `create-dagster project` makes it, meets the Component:
`dg scaffold defs` writes a defs.yaml that passes `dg check defs`, and `dg check defs` names
each mistake on its defs.yaml line."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from batch_pipeline_tests.dagster_tests.dagster_commands import BIN

COMPONENT = "batch_pipeline.dagster.BatchPipelineComponent"
PYPROJECT = """\
[project]
name = "support_llm"
version = "0.1.0"
requires-python = ">=3.11"
dependencies = ["dagster", "batch_pipeline"]

[tool.dg]
directory_type = "project"

[tool.dg.project]
root_module = "support_llm"
"""
DEFINITIONS = """\
from pathlib import Path

from dagster import definitions, load_from_defs_folder


@definitions
def defs():
    return load_from_defs_folder(path_within_project=Path(__file__).parent)
"""


def new_project(root: Path) -> Path:
    """The files `create-dagster project support_llm` writes that `dg` reads."""
    package = root / "src/support_llm"
    (package / "defs").mkdir(parents=True)
    (root / "pyproject.toml").write_text(PYPROJECT, encoding="utf-8")
    (root / ".gitignore").write_text(".venv/\n__pycache__/\n", encoding="utf-8")
    (package / "__init__.py").write_text("", encoding="utf-8")
    (package / "defs/__init__.py").write_text("", encoding="utf-8")
    (package / "definitions.py").write_text(DEFINITIONS, encoding="utf-8")
    return root


def dg(project: Path, *args: str) -> subprocess.Popen[str]:
    """`dg ARGS` started in the project, in this environment, its package importable."""
    home = project.parent / f"{project.name}_dagster_home"
    home.mkdir(exist_ok=True)
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n", encoding="utf-8")
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONPATH": str(project / "src"),
        "DAGSTER_HOME": str(home),
        "NO_COLOR": "1",
    }
    return subprocess.Popen(
        [str(BIN / "dg"), *args],
        cwd=project,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def finished(process: subprocess.Popen[str]) -> tuple[int, str]:
    """The exit code and output of a `dg` command once it ends."""
    output, _ = process.communicate(timeout=180)
    return process.returncode, output


def line_of(path: Path, text: str) -> int:
    lines = path.read_text(encoding="utf-8").splitlines()
    return next(number for number, line in enumerate(lines, 1) if text in line)


@pytest.mark.slow
def test_a_scaffolded_pipeline_passes_dg_check_defs_and_each_mistake_is_named(
    tmp_path: Path,
) -> None:
    project = new_project(tmp_path / "support_llm")
    code, output = finished(dg(project, "scaffold", "defs", COMPONENT, "triage"))
    assert code == 0, output
    defs_yaml = project / "src/support_llm/defs/triage/defs.yaml"
    attributes = yaml.safe_load(defs_yaml.read_text(encoding="utf-8"))["attributes"]
    assert attributes["source"]["path"] == "{{ context.project_root }}/data/triage.csv"
    assert attributes["output"]["dir"] == "{{ context.project_root }}/batch_pipeline_output"
    assert attributes["backend"] == {"provider": "local"}
    assert (project / "data/triage.csv").exists()
    assert "/batch_pipeline_output/" in (project / ".gitignore").read_text().splitlines()

    # A copy of the project whose pipeline has a typo nested in a section, a key and a
    # partition column the table lacks, a placeholder naming no column, and an invalid name;
    # both are checked at once.
    broken = tmp_path / "broken"
    shutil.copytree(project, broken)
    broken_yaml = broken / "src/support_llm/defs/triage/defs.yaml"
    text = broken_yaml.read_text(encoding="utf-8")
    text = text.replace("name: triage", "name: Triage-Tickets")
    text = text.replace("key: id", "key: ticket_id")
    text = text.replace("partition_column: created_at", "partition_column: day")
    text = text.replace("prompt: '{text}'", "prompt: '{subject}'")
    text = text.replace("  partitions:", "  limits:\n    max_request_per_file: 100\n  partitions:")
    broken_yaml.write_text(text, encoding="utf-8")
    checks = [dg(project, "check", "defs"), dg(broken, "check", "defs")]
    (passed, passed_output), (failed, output) = (finished(check) for check in checks)

    assert passed == 0, passed_output
    assert failed != 0, output
    for line_text, key, why in [
        ("name: Triage-Tickets", "name", r"must match \[a-z\]"),
        ("key: ticket_id", "source.key", "'ticket_id' is not a column of triage.csv"),
        ("partition_column: day", "source.partition_column", "'day' is not a column"),
        ("prompt: '{subject}'", "request.prompt", r"\{subject\} names no column"),
        ("max_request_per_file", "limits.max_request_per_file", "unknown key"),
    ]:
        where = f"{broken_yaml}:{line_of(broken_yaml, line_text)}"
        assert re.search(rf"{re.escape(where)} attributes\.{re.escape(key)}: .*{why}", output), (
            output
        )
