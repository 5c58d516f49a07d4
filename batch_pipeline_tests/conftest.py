"""Fixtures shared by every test folder: a local Batch API, a PostgreSQL database, an
S3-compatible server, specs."""

from __future__ import annotations

import contextlib
import os
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from batch_pipeline_tests.batch_apis import BatchApi, HttpApi, MemoryApi
from batch_pipeline_tests.gcs_server import gcs, gcs_bucket, gcs_server
from batch_pipeline_tests.s3_server import s3, s3_bucket, s3_server

# fixtures of the S3-compatible server and of the GCS emulator
__all__ = ["gcs", "gcs_bucket", "gcs_server", "s3", "s3_bucket", "s3_server"]

# `throwaway_postgres`: a PostgreSQL server of a test's own, for tests that stop it.
pytest_plugins = ["batch_pipeline_tests.throwaway_postgres"]

POSTGRES_ADMIN_URL = os.environ.get(
    "BATCH_PIPELINE_TEST_POSTGRES_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"
)
SHORT_WINDOW_SECONDS = 3.0
MODEL_FOR_ENDPOINT = {
    "/v1/embeddings": "text-embedding-3-small",
    "/v1/moderations": "omni-moderation-latest",
    "/v1/messages": "claude-haiku-4-5",
}


@pytest.fixture(scope="session")
def batch_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The local Batch API, in-process on a free port, with a short completion window."""
    from batch_pipeline.local_api.server import run_local_batch_api

    state_dir = tmp_path_factory.mktemp("batch_api_state")
    with run_local_batch_api(
        state_dir, port=0, completion_window_seconds=SHORT_WINDOW_SECONDS
    ) as base_url:
        yield base_url


@pytest.fixture
def memory_api() -> MemoryApi:
    """The in-memory Batch API on a manual clock, with the short completion window."""
    return MemoryApi(completion_window_seconds=SHORT_WINDOW_SECONDS)


@pytest.fixture(params=["memory"])
def api(request: pytest.FixtureRequest) -> BatchApi:
    """The Batch API a test runs against: in memory, unless parametrised with "http" (see
    `batch_apis.on_both_apis`), which is the local service over HTTP."""
    if request.param == "http":
        return HttpApi(request.getfixturevalue("batch_api"))
    return request.getfixturevalue("memory_api")


@contextlib.contextmanager
def _new_postgres_database() -> Iterator[str]:
    """A fresh PostgreSQL database, dropped afterwards."""
    name = f"bp_test_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    except sa.exc.OperationalError as exc:
        pytest.fail(f"PostgreSQL at {POSTGRES_ADMIN_URL} is needed for this test: {exc}")
    url = POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    yield url
    with admin.connect() as conn:
        conn.exec_driver_sql(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,)
        )
        conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}"')
    admin.dispose()


@pytest.fixture(scope="session")
def postgres_database() -> Iterator[str]:
    """A PostgreSQL database shared by this test session's tests."""
    with _new_postgres_database() as url:
        yield url


@pytest.fixture
def own_postgres_database() -> Iterator[str]:
    """A PostgreSQL database of one test's own (for a test that alters the schema)."""
    with _new_postgres_database() as url:
        yield url


def write_tickets(path: Path, rows: list[dict[str, Any]]) -> Path:
    """A source table of support tickets as Parquet."""
    import pandas as pd

    frame = pd.DataFrame(rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(path, index=False)
    return path


def store_server(request: pytest.FixtureRequest, scheme: str) -> Any:
    """The test server of an object store's URI scheme (`s3`: the S3-compatible server, `gs`:
    the GCS emulator), with the test's environment pointed at it."""
    return request.getfixturevalue({"s3": "s3", "gs": "gcs"}[scheme])


def ticket_spec(
    tmp_path: Path, base_url: str, *, endpoint: str = "/v1/chat/completions", **overrides: Any
) -> dict[str, Any]:
    """A spec mapping over `tickets.parquet` in tmp_path, pointed at the local Batch API."""
    spec: dict[str, Any] = {
        "name": "tickets",
        "source": {"path": "tickets.parquet", "key": "ticket_id", "partition_column": "created_at"},
        "request": {
            "endpoint": endpoint,
            "model": MODEL_FOR_ENDPOINT.get(endpoint, "gpt-4o-mini"),
            "prompt": "Subject: {subject}\n\n{body}",
        },
        "backend": {"provider": "local", "base_url": base_url},
        "retry": {"max_attempts": 3},
        "output": {"dir": "out"},
    }
    if endpoint in ("/v1/chat/completions", "/v1/responses", "/v1/messages"):
        spec["request"]["system"] = "You label support tickets."
    if endpoint in ("/v1/chat/completions", "/v1/responses", "/v1/completions", "/v1/messages"):
        spec["request"]["params"] = {"max_tokens": 200, "temperature": 0}
    if endpoint == "/v1/messages":  # Anthropic's Messages API, on its Message Batches
        spec["backend"]["provider"] = "anthropic"
    for section, values in overrides.items():
        if isinstance(values, dict) and isinstance(spec.get(section), dict):
            spec[section] = {**spec[section], **values}
        else:
            spec[section] = values
    return spec


@pytest.fixture
def staging(tmp_path, monkeypatch):
    """The temporary folder, empty, so a test sees what a write leaves there."""
    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder
