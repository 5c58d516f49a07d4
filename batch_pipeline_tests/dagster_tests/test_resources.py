"""BatchBackendResource: built from a spec, the key from an EnvVar, never shown; one client
and one ledger connection per step, closed after it."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import sqlalchemy as sa

from batch_pipeline.core.backends.base import BackendError
from batch_pipeline.core.spec import BackendSpec, PipelineSpec
from batch_pipeline.dagster import BatchBackendResource
from batch_pipeline.demo import demo_spec_data
from batch_pipeline.local_api.server import run_local_batch_api
from batch_pipeline_tests.conftest import POSTGRES_ADMIN_URL
from batch_pipeline_tests.dagster_tests.conftest import SECRET, SECRET_ENV


def test_from_spec_wires_the_key_as_the_variable_the_spec_names() -> None:
    resource = BatchBackendResource.from_spec(
        BackendSpec(provider="openai", api_key_env="TEAM_OPENAI_KEY", max_retries=5)
    )
    assert isinstance(resource.api_key, dg.EnvVar)
    assert resource.api_key.env_var_name == "TEAM_OPENAI_KEY"
    assert resource.max_retries == 5
    assert BatchBackendResource.from_spec(BackendSpec(provider="local")).api_key is None


@pytest.fixture(scope="module")
def keyed_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A local Batch API that answers only requests carrying SECRET."""
    with run_local_batch_api(tmp_path_factory.mktemp("keyed"), port=0, api_key=SECRET) as url:
        yield url


def list_batches(resource: BatchBackendResource) -> list:
    backend = resource.get_backend()
    try:
        return list(backend.iter_batches(created_after=2**31))
    finally:
        backend.close()


@pytest.mark.slow
def test_the_key_reaches_the_backend_but_not_the_environment_nor_repr(
    keyed_api: str, dagster_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    resource = BatchBackendResource(
        provider="openai", base_url=keyed_api, api_key=dg.EnvVar(SECRET_ENV)
    )
    before = dict(os.environ)
    assert list_batches(resource) == []  # a real call, authorised by the service
    monkeypatch.setenv(SECRET_ENV, "sk-not-the-key")
    with pytest.raises(BackendError) as refused:  # the service does check the key
        list_batches(resource)
    assert refused.value.status_code == 401
    monkeypatch.setenv(SECRET_ENV, SECRET)
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


def test_the_core_spec_names_the_key_variable_of_the_env_var_and_no_other() -> None:
    """The key goes into the client itself; the spec handed to the core says where it comes
    from, and names no variable that nobody set."""
    named = BatchBackendResource(provider="openai", api_key=dg.EnvVar("TEAM_OPENAI_KEY"))
    assert named.to_backend_spec().api_key_env == "TEAM_OPENAI_KEY"
    plain = BatchBackendResource(provider="openai", api_key=SECRET).to_backend_spec()
    assert "api_key_env" not in plain.model_fields_set
    assert SECRET not in repr(plain)


def _connections(database_url: str) -> int:
    """Open connections to the database of `database_url`, counted from another database."""
    name = sa.engine.make_url(database_url).database
    admin = sa.create_engine(POSTGRES_ADMIN_URL, poolclass=sa.pool.NullPool)
    try:
        with admin.connect() as conn:
            query = "SELECT count(*) FROM pg_stat_activity WHERE datname = %s"
            return conn.exec_driver_sql(query, (name,)).scalar_one()
    finally:
        admin.dispose()


@pytest.mark.slow
@pytest.mark.postgres
def test_a_step_shares_one_client_and_one_ledger_connection_closed_after_it(
    tmp_path: Path, batch_api: str, own_postgres_database: str
) -> None:
    data = demo_spec_data(base_url=batch_api)
    data["ledger"] = {"url": own_postgres_database}
    spec = PipelineSpec.from_dict(data, base_dir=tmp_path)
    seen: dict[str, Any] = {"clients": []}

    @dg.asset
    def probe(backend: BatchBackendResource) -> None:
        for _ in range(2):
            with backend.open_pipeline(spec) as pipeline:
                assert pipeline.partitions() == []  # a ledger read
                assert list(pipeline.backend.iter_batches(created_after=2**31)) == []
                seen["clients"].append(pipeline.backend.client)
        seen["connections_in_step"] = _connections(own_postgres_database)

    resources = {"backend": BatchBackendResource(base_url=batch_api)}
    with dg.instance_for_test() as instance:
        assert dg.materialize([probe], resources=resources, instance=instance).success
    first, second = seen["clients"]
    assert first is second and first.is_closed()
    assert seen["connections_in_step"] == 1
    assert _connections(own_postgres_database) == 0
