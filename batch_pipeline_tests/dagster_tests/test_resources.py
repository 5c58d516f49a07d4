"""BatchBackendResource: built from a spec, the key from an EnvVar, never shown."""

from __future__ import annotations

import os

import dagster as dg
import pytest

from batch_pipeline.core.spec import BackendSpec
from batch_pipeline.dagster import BatchBackendResource
from batch_pipeline_tests.dagster_tests.conftest import SECRET, SECRET_ENV


def test_from_spec_wires_the_key_as_the_variable_the_spec_names() -> None:
    resource = BatchBackendResource.from_spec(
        BackendSpec(provider="openai", api_key_env="TEAM_OPENAI_KEY", max_retries=5)
    )
    assert isinstance(resource.api_key, dg.EnvVar)
    assert resource.api_key.env_var_name == "TEAM_OPENAI_KEY"
    assert resource.max_retries == 5
    assert BatchBackendResource.from_spec(BackendSpec(provider="local")).api_key is None


@pytest.mark.slow
def test_the_key_reaches_the_backend_but_not_the_environment_nor_repr(
    batch_api: str, dagster_env: dict[str, str]
) -> None:
    resource = BatchBackendResource(
        provider="openai", base_url=batch_api, api_key=dg.EnvVar(SECRET_ENV)
    )
    before = dict(os.environ)
    backend = resource.get_backend()
    try:
        assert list(backend.iter_batches(created_after=2**31)) == []  # a real call, authorised
    finally:
        backend.close()
    assert dict(os.environ) == before
    assert SECRET not in repr(resource)
    assert SECRET not in repr(resource.to_backend_spec())


@pytest.mark.slow
def test_initialised_by_dagster_the_env_var_is_resolved(
    batch_api: str, dagster_env: dict[str, str]
) -> None:
    resource = BatchBackendResource(
        provider="local", base_url=batch_api, api_key=dg.EnvVar(SECRET_ENV)
    )
    with dg.build_resources({"backend": resource}) as resources:
        assert resources.backend.api_key == SECRET
        assert SECRET not in repr(resources.backend)


def test_a_missing_key_is_named_without_a_value() -> None:
    resource = BatchBackendResource(provider="openai", api_key=dg.EnvVar("BP_NOT_SET_ANYWHERE"))
    with pytest.raises(ValueError, match="BP_NOT_SET_ANYWHERE"):
        resource.get_backend()


def test_a_local_key_variable_the_spec_names_but_nobody_set_is_named() -> None:
    named = BackendSpec(provider="local", api_key_env="BP_LOCAL_KEY_NOT_SET")
    with pytest.raises(ValueError, match="BP_LOCAL_KEY_NOT_SET"):
        BatchBackendResource.from_spec(named).get_backend()


@pytest.mark.slow
def test_a_local_service_never_gets_the_default_openai_key(
    batch_api: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Like the core's backend: a real key in OPENAI_API_KEY stays home when the spec points
    at a local service without naming a variable of its own."""
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    resource = BatchBackendResource.from_spec(BackendSpec(provider="local", base_url=batch_api))
    assert resource.api_key is None
    backend = resource.get_backend()
    try:
        assert backend.client.api_key != SECRET
        assert list(backend.iter_batches(created_after=2**31)) == []
    finally:
        backend.close()
    named = BackendSpec(provider="local", base_url=batch_api, api_key_env="LOCAL_KEY")
    assert BatchBackendResource.from_spec(named).api_key.env_var_name == "LOCAL_KEY"
