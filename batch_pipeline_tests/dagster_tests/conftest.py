"""Fixtures of the Dagster layer's tests: a real Dagster instance on PostgreSQL configured by
the repo's dagster.yaml, the local Batch API in-process, and the demo pipeline's spec."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import sqlalchemy as sa

from batch_pipeline.core.spec import PipelineSpec
from batch_pipeline.demo import demo_spec_data, write_demo

REPO_ROOT = Path(__file__).resolve().parents[2]
FIXTURES = Path(__file__).parent / "fixtures"
SECRET_ENV = "BP_DAGSTER_TEST_API_KEY"
SECRET = "sk-test-dagster-layer-never-shown-0123456789"


@pytest.fixture(scope="session")
def dagster_env(postgres_database: str) -> Iterator[dict[str, str]]:
    """The variables the repo's dagster.yaml reads, pointing at this session's database."""
    url = sa.engine.make_url(postgres_database)
    env = {
        "DAGSTER_PG_HOST": url.host or "127.0.0.1",
        "DAGSTER_PG_PORT": str(url.port or 5432),
        "DAGSTER_PG_USER": url.username or "postgres",
        "DAGSTER_PG_DB": url.database or "",
        SECRET_ENV: SECRET,
    }
    previous = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    yield env
    for name, value in previous.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture(scope="session")
def dagster_home(tmp_path_factory: pytest.TempPathFactory, dagster_env: dict[str, str]) -> Path:
    """A DAGSTER_HOME holding the repo's own dagster.yaml, unchanged."""
    home = tmp_path_factory.mktemp("dagster_home")
    shutil.copy(REPO_ROOT / "dagster.yaml", home / "dagster.yaml")
    return home


@pytest.fixture(scope="session")
def instance(dagster_home: Path) -> Iterator[dg.DagsterInstance]:
    """The Dagster instance the repo's dagster.yaml describes, on this session's database."""
    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
        yield instance


@pytest.fixture(scope="module")
def demo_spec(
    tmp_path_factory: pytest.TempPathFactory, batch_api: str, postgres_database: str
) -> PipelineSpec:
    """The demo pipeline over the generated sample table, its ledger on PostgreSQL."""
    folder = tmp_path_factory.mktemp("demo")
    write_demo(folder, base_url=batch_api)
    data = demo_spec_data(base_url=batch_api)
    data["ledger"] = {"url": postgres_database}
    return PipelineSpec.from_dict(data, base_dir=folder)


@pytest.fixture
def subprocess_env(dagster_env: dict[str, str], tmp_path: Path) -> dict[str, str]:
    """The environment of a Dagster CLI started by a test: the demo in tmp_path, offline."""
    return {
        **os.environ,
        **dagster_env,
        "BATCH_PIPELINE_DEMO_DIR": str(tmp_path / "demo"),
        "DAGSTER_DISABLE_TELEMETRY": "1",
        "DO_NOT_TRACK": "1",
    }


def generation_of(metadata: Mapping[str, Any]) -> int:
    """The generation a materialization says it built: shown once a day is rebuilt, so a
    first generation carries none."""
    return metadata["generation"].value if "generation" in metadata else 1
