"""`BatchBackendResource`: where the Batch API is and the key to it, as Dagster config."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

import dagster as dg
from pydantic import Field

from batch_pipeline.core.backends.base import BatchBackend
from batch_pipeline.core.backends.openai import key_variable, make_backend
from batch_pipeline.core.pipeline import Pipeline, load_pipeline
from batch_pipeline.core.spec import BackendSpec, PipelineSpec

# The key is handed to the core in a private mapping under this name, never via os.environ.
_KEY_VARIABLE = "BATCH_PIPELINE_API_KEY"


class BatchBackendResource(dg.ConfigurableResource):
    """A provider's Files + Batches API (OpenAI, Azure OpenAI or the local service).

    Wire the key as `api_key=dg.EnvVar("OPENAI_API_KEY")`: the UI then shows the variable's
    name, and the value is never logged nor written to metadata.
    """

    provider: Literal["local", "openai", "azure"] = Field(
        default="local", description="Which Batch API: local, openai or azure."
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
        """The core's description of this backend (it names the key's variable, no key)."""
        # A keyless local service: no variable named, so the core sends its placeholder.
        keyless = self.provider == "local" and self.api_key is None
        return BackendSpec(
            provider=self.provider,
            base_url=self.base_url,
            **({} if keyless else {"api_key_env": _KEY_VARIABLE}),
            azure_endpoint=self.azure_endpoint,
            api_version=self.api_version,
            organization=self.organization,
            project=self.project,
            request_timeout_seconds=self.request_timeout_seconds,
            max_retries=self.max_retries,
        )

    def get_backend(self) -> BatchBackend:
        """A new core backend client; the caller closes it."""
        key = self._key()
        if key is None and (self.provider != "local" or self.api_key is not None):
            raise ValueError(
                f"BatchBackendResource: provider {self.provider} needs an API key; set "
                f"api_key={self._key_hint()}"
            )
        return make_backend(self.to_backend_spec(), env={_KEY_VARIABLE: key} if key else {})

    @contextmanager
    def open_pipeline(self, spec: PipelineSpec) -> Iterator[Pipeline]:
        """The core pipeline for `spec` on this backend, closed on exit."""
        pipeline = load_pipeline(spec, backend=self.get_backend())
        try:
            yield pipeline
        finally:
            pipeline.close()

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
