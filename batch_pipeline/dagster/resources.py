"""`BatchBackendResource`: where the Batch API is and the key to it, as Dagster config.

Like dagster-openai's `OpenAIResource`, it builds its client in `setup_for_execution` and
closes it in `teardown_after_execution`: one backend client, and one ledger connection per
ledger, serve a whole step (or sensor tick) and are closed after it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Literal

import dagster as dg
from pydantic import Field, PrivateAttr

from batch_pipeline.core.backends.base import key_variable
from batch_pipeline.core.spec import BackendSpec, PipelineSpec

if TYPE_CHECKING:  # the SDK, the ledger and the pipeline load in the step that uses them
    from batch_pipeline.core.backends.base import BatchBackend
    from batch_pipeline.core.ledger import Ledger
    from batch_pipeline.core.pipeline import Pipeline
    from batch_pipeline.core.sources import Table


class _StepClients:
    """One backend client, and one ledger per ledger URL, shared by a step's pipelines."""

    def __init__(self, backend: BatchBackend) -> None:
        self.backend = backend
        self._ledgers: dict[tuple[str, float], Ledger] = {}

    def pipeline(self, spec: PipelineSpec, dataframe: Table | None = None) -> Pipeline:
        """The pipeline for `spec` on these clients (closing them is `close`'s job), reading
        `dataframe` in place of the spec's source when given."""
        from batch_pipeline.core.ledger import Ledger
        from batch_pipeline.core.pipeline import Pipeline

        url, reconnect = spec.ledger_url, spec.ledger.reconnect_seconds
        if (url, reconnect) not in self._ledgers:
            self._ledgers[url, reconnect] = Ledger(url, reconnect_seconds=reconnect)
        return Pipeline(
            spec, dataframe=dataframe, backend=self.backend, ledger=self._ledgers[url, reconnect]
        )

    def close(self) -> None:
        try:
            self.backend.close()
        finally:
            for ledger in self._ledgers.values():
                ledger.close()


class BatchBackendResource(dg.ConfigurableResource):
    """A provider's Files + Batches API (OpenAI, Azure OpenAI, Anthropic's Message Batches or
    the local service).

    Wire the key as `api_key=dg.EnvVar("OPENAI_API_KEY")`: the UI then shows the variable's
    name, and the value is never logged nor written to metadata.
    """

    provider: Literal["local", "openai", "azure", "anthropic"] = Field(
        default="local", description="Which Batch API: local, openai, azure or anthropic."
    )
    base_url: str | None = Field(
        default=None,
        description="Base URL ending in /v1 (local: http://127.0.0.1:8780/v1 by default).",
    )
    azure_endpoint: str | None = Field(
        default=None, description="Azure OpenAI resource endpoint (provider azure)."
    )
    api_version: str | None = Field(
        default=None, description="Azure OpenAI API version (provider azure)."
    )
    api_key: str | None = Field(
        default=None,
        repr=False,
        description="The API key; set it with dg.EnvVar(...). Optional for provider local.",
    )
    organization: str | None = Field(default=None, description="OpenAI organization id.")
    project: str | None = Field(default=None, description="OpenAI project id.")
    request_timeout_seconds: float = Field(
        default=60.0, description="Timeout of one API request, in seconds."
    )
    max_retries: int = Field(
        default=3, description="Retries of a transient API failure (never of a batch create)."
    )

    _step: _StepClients | None = PrivateAttr(default=None)

    @classmethod
    def from_spec(cls, backend: BackendSpec) -> BatchBackendResource:
        """The resource a spec's `backend:` section describes; the key from its variable
        (provider local only sends one from a variable its spec names: a local service with
        auth; never the default OPENAI_API_KEY).
        """
        variable = key_variable(backend)
        api_key = dg.EnvVar(variable) if variable is not None else None
        return cls(
            provider=backend.provider,
            base_url=backend.base_url,
            azure_endpoint=backend.azure_endpoint,
            api_version=backend.api_version,
            api_key=api_key,
            organization=backend.organization,
            project=backend.project,
            request_timeout_seconds=backend.request_timeout_seconds,
            max_retries=backend.max_retries,
        )

    def to_backend_spec(self) -> BackendSpec:
        """The core's description of this backend. It holds no key: `get_backend` hands the
        key to the client itself. It names the key's variable when the key is an EnvVar."""
        variable = self.api_key.env_var_name if isinstance(self.api_key, dg.EnvVar) else None
        named = {"api_key_env": variable} if variable else {}
        return BackendSpec(
            provider=self.provider,
            base_url=self.base_url,
            **named,
            azure_endpoint=self.azure_endpoint,
            api_version=self.api_version,
            organization=self.organization,
            project=self.project,
            request_timeout_seconds=self.request_timeout_seconds,
            max_retries=self.max_retries,
        )

    def get_backend(self) -> BatchBackend:
        """A new core backend client; the caller closes it."""
        from batch_pipeline.core.backends.openai import make_backend

        key = self._key()
        if key is None and (self.provider != "local" or self.api_key is not None):
            raise ValueError(
                f"BatchBackendResource: provider {self.provider} needs an API key; set "
                f"api_key={self._key_hint()}"
            )
        return make_backend(self.to_backend_spec(), env={}, api_key=key)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        self._step = _StepClients(self.get_backend())

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        step, self._step = self._step, None
        if step is not None:
            step.close()

    @contextmanager
    def open_pipeline(
        self, spec: PipelineSpec, *, dataframe: Table | None = None
    ) -> Iterator[Pipeline]:
        """The core pipeline for `spec` on this backend (its rows from `dataframe` when given:
        those an upstream asset loaded).

        In a step Dagster set the resource up for, it runs on the step's client and ledger,
        which Dagster closes after the step; used directly (a sensor that closes over the
        resource, a script), it opens its own and closes them on exit.
        """
        if self._step is not None:
            yield self._step.pipeline(spec, dataframe)
            return
        clients = _StepClients(self.get_backend())
        try:
            yield clients.pipeline(spec, dataframe)
        finally:
            clients.close()

    def _key_hint(self) -> str:
        if isinstance(self.api_key, dg.EnvVar):
            return f"dg.EnvVar({self.api_key.env_var_name!r}) and that variable is not set"
        return 'dg.EnvVar("OPENAI_API_KEY")'

    def _key(self) -> str | None:
        # Dagster resolves an EnvVar field when it initialises the resource; a resource used
        # directly from Python still holds the EnvVar itself.
        if isinstance(self.api_key, dg.EnvVar):
            return self.api_key.get_value()
        return self.api_key
