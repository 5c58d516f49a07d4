"""What starting a command or loading the code location imports: only what it uses.

Each case imports in a fresh interpreter and lists which heavy modules came with it."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from batch_pipeline_tests.benchmarks.fixtures import REPO_ROOT, command_env

LOCAL_SERVICE = (
    "batch_pipeline.local_api.app",
    "batch_pipeline.local_api.server",
    "batch_pipeline.local_api.worker",
    "uvicorn",
)


def loaded_after(code: str, watched: tuple[str, ...]) -> list[str]:
    """The `watched` modules in sys.modules after running `code` in a new interpreter."""
    listing = f"print(json.dumps([m for m in {watched!r} if m in sys.modules]))"
    script = f"import json, sys\n{code}\n{listing}"
    done = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", script],
        capture_output=True,
        text=True,
        check=True,
        env=command_env(),
        cwd=REPO_ROOT,
        timeout=120,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_the_command_line_parses_its_arguments_without_the_service_pandas_or_dagster() -> None:
    code = "from batch_pipeline.cli import build_parser\nbuild_parser().parse_args(['serve'])"
    watched = ("pandas", "pyarrow", "openai", "dagster", "sqlalchemy", *LOCAL_SERVICE)
    assert loaded_after(code, watched) == []


def test_the_code_location_loads_without_pandas_the_sdks_or_the_service() -> None:
    watched = ("pandas", "openai", "anthropic", "duckdb", "sqlalchemy", *LOCAL_SERVICE)
    assert loaded_after("import batch_pipeline.definitions", watched) == []


@pytest.mark.parametrize(
    "module", ["batch_pipeline.core.pipeline", "batch_pipeline.core.backends.base"]
)
def test_the_core_loads_no_provider_sdk_until_a_backend_is_made(module: str) -> None:
    # pandas is not asserted: pyarrow imports it the first time it converts Python values.
    assert loaded_after(f"import {module}", ("openai", "anthropic", "duckdb")) == []
