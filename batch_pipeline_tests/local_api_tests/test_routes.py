"""Every route answers a method it does not take with 405 and an `Allow` of all it takes."""

from __future__ import annotations

from pathlib import Path

import httpx2
import pytest

from batch_pipeline.local_api import LocalApiSettings
from batch_pipeline.local_api.app import create_app

pytestmark = pytest.mark.slow

# Each path of the API (with ids of the right shape) and the methods it takes.
METHODS = {
    "/files": {"GET", "POST"},
    "/files/file-abc123": {"GET", "DELETE"},
    "/files/file-abc123/content": {"GET"},
    "/batches": {"GET", "POST"},
    "/batches/batch_abc123": {"GET"},
    "/batches/batch_abc123/cancel": {"POST"},
}
# Anthropic's Message Batches, under /v1/messages/batches only.
ANTHROPIC_METHODS = {
    "/v1/messages/batches": {"GET", "POST"},
    "/v1/messages/batches/msgbatch_abc123": {"GET", "DELETE"},
    "/v1/messages/batches/msgbatch_abc123/results": {"GET"},
    "/v1/messages/batches/msgbatch_abc123/cancel": {"POST"},
}
ALL_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")
PREFIXES = ("/v1", "/openai")  # OpenAI's paths, and Azure OpenAI's


def _allowed(methods: set[str]) -> set[str]:
    """What `Allow` must list: the methods, and HEAD wherever GET is."""
    return methods | ({"HEAD"} if "GET" in methods else set())


@pytest.mark.parametrize("prefix", PREFIXES)
@pytest.mark.parametrize("path", sorted(METHODS))
def test_a_method_a_path_does_not_take_is_405_allowing_all_it_takes(
    shared_url: str, prefix: str, path: str
) -> None:
    root = shared_url.removesuffix("/v1")
    for method in sorted(set(ALL_METHODS) - METHODS[path]):
        url = f"{root}{prefix}{path}"
        response = httpx2.request(method, url, params={"api-version": "2024-10-21"})
        assert response.status_code == 405, (method, path)
        allow = {m.strip() for m in response.headers["allow"].split(",")}
        assert allow == _allowed(METHODS[path]), (method, path)
        assert "error" in response.json()


@pytest.mark.parametrize("path", sorted(ANTHROPIC_METHODS))
def test_an_anthropic_path_answers_405_in_anthropics_shape(shared_url: str, path: str) -> None:
    root = shared_url.removesuffix("/v1")
    for method in sorted(set(ALL_METHODS) - ANTHROPIC_METHODS[path]):
        response = httpx2.request(method, f"{root}{path}")
        assert response.status_code == 405, (method, path)
        allow = {m.strip() for m in response.headers["allow"].split(",")}
        assert allow == _allowed(ANTHROPIC_METHODS[path]), (method, path)
        assert response.json()["type"] == "error", (method, path)


def test_the_table_above_covers_every_route(tmp_path: Path) -> None:
    """A route added to the service without being added here fails this test."""
    app = create_app(LocalApiSettings(state_dir=tmp_path))
    routes = {route.path: route.methods for route in app.routes}  # type: ignore[attr-defined]
    expected = {
        f"{prefix}{path}".replace("file-abc123", "{file_id}").replace(
            "batch_abc123", "{batch_id}"
        ): m
        for path, m in METHODS.items()
        for prefix in PREFIXES
    }
    for path, m in ANTHROPIC_METHODS.items():
        expected[path.replace("msgbatch_abc123", "{batch_id}")] = m
    assert routes == {path: _allowed(methods) for path, methods in expected.items()}
