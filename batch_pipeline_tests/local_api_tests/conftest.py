"""Fixtures: the local Batch API started in-process on a free port, and SDK clients."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from openai import OpenAI

from batch_pipeline.local_api import LocalApiSettings, LocalBatchApi
from batch_pipeline_tests.local_api_tests.upstream_server import (  # noqa: F401 - fixtures
    proxy_options,
    upstream,
    upstream_server,
)


class StartApi:
    """Starts local Batch APIs for a test; `start_api(**options)` returns a base URL."""

    def __init__(self, default_state_dir: Path) -> None:
        self.default_state_dir = default_state_dir
        self.servers: list[LocalBatchApi] = []

    def __call__(self, **options: Any) -> str:
        options.setdefault("state_dir", self.default_state_dir)
        options.setdefault("port", 0)
        options.setdefault("completion_window_seconds", 60.0)
        options.setdefault("progress_interval_seconds", 0.2)
        server = LocalBatchApi(LocalApiSettings(**options))
        self.servers.append(server)
        return server.start()

    def stop_all(self) -> None:
        """Stop every server started so far (as a shutdown of the service would)."""
        for server in self.servers:
            server.stop()


@pytest.fixture
def start_api(tmp_path: Path) -> Iterator[StartApi]:
    """Start local Batch APIs with given settings (state dir tmp_path/state by default)."""
    launcher = StartApi(tmp_path / "state")
    yield launcher
    launcher.stop_all()


@pytest.fixture(scope="module")
def shared_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One local Batch API shared by a module's tests (default settings): for tests that
    do not depend on what else is stored."""
    settings = LocalApiSettings(state_dir=tmp_path_factory.mktemp("state"), port=0)
    with LocalBatchApi(settings) as url:
        yield url


@pytest.fixture(scope="module")
def shared_client(shared_url: str) -> OpenAI:
    """An SDK client of the module's shared local Batch API."""
    return OpenAI(base_url=shared_url, api_key="sk-local-test", max_retries=0)


@pytest.fixture
def api_url(start_api: StartApi) -> str:
    """A local Batch API with default settings (echo responder, 60 s window)."""
    return start_api()


@pytest.fixture
def client(api_url: str) -> OpenAI:
    """The official SDK pointed at the local Batch API (no retries: faults stay visible)."""
    return OpenAI(base_url=api_url, api_key="sk-local-test", max_retries=0)
