"""The Batch APIs a core test can run a pipeline against, behind one small interface.

`MemoryApi` (the in-memory backend and a manual clock: nothing waits) is the default; an
`HttpApi` is the local service over real HTTP, for the few tests that keep checking the
real thing. A test written against `BatchApi` runs unchanged on either.
"""

from __future__ import annotations

import time
from typing import Any, Protocol

import openai
import pytest

from batch_pipeline.core.backends.base import BatchBackend, NotFound
from batch_pipeline.core.backends.memory import MEMORY_BASE_URL, InMemoryBatchBackend, ManualClock
from batch_pipeline.core.backends.openai import make_backend
from batch_pipeline.core.pipeline import Pipeline
from batch_pipeline.core.spec import BackendSpec, PipelineSpec
from batch_pipeline.core.types import BatchInfo


class BatchApi(Protocol):
    """A Batch API a test runs pipelines against."""

    base_url: str

    def backend(self, spec: PipelineSpec) -> BatchBackend:
        """A backend a pipeline of `spec` talks to this API through."""
        ...

    def pipeline(self, spec: PipelineSpec, **options: Any) -> Pipeline:
        """A pipeline of `spec` bound to this API (and its clock)."""
        ...

    def batches(self, pipeline: str | None = None) -> list[BatchInfo]:
        """The batches on the service (of one pipeline, by its metadata), newest first."""
        ...

    def has_file(self, file_id: str) -> bool:
        """Whether the service still holds the file."""
        ...

    def now(self) -> float:
        """The time the API and its pipelines go by."""
        ...

    def sleep(self, seconds: float) -> None:
        """Let `seconds` pass on that time."""
        ...


def _of_pipeline(batches: list[BatchInfo], pipeline: str | None) -> list[BatchInfo]:
    return [b for b in batches if pipeline in (None, b.metadata.get("batch_pipeline_pipeline"))]


class MemoryApi:
    """The in-memory Batch API on a manual clock; `poll_interval`s pass without waiting."""

    base_url = MEMORY_BASE_URL

    def __init__(self, **settings: Any) -> None:
        self.clock = ManualClock()
        self.service = InMemoryBatchBackend(clock=self.clock, **settings)

    def backend(self, spec: PipelineSpec) -> BatchBackend:
        return self.service

    def pipeline(self, spec: PipelineSpec, **options: Any) -> Pipeline:
        options.setdefault("backend", self.service)
        options.setdefault("clock", self.clock)
        options.setdefault("sleep", self.clock.sleep)
        return Pipeline(spec, **options)

    def batches(self, pipeline: str | None = None) -> list[BatchInfo]:
        return _of_pipeline(list(self.service.iter_batches()), pipeline)

    def has_file(self, file_id: str) -> bool:
        try:
            self.service.file_content(file_id)
        except NotFound:
            return False
        return True

    def now(self) -> float:
        return self.clock()

    def sleep(self, seconds: float) -> None:
        self.clock.sleep(seconds)


class HttpApi:
    """The local service over real HTTP, on the real clock."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.service = make_backend(BackendSpec(provider="local", base_url=base_url))
        self.client = openai.OpenAI(base_url=base_url, api_key="local")

    def backend(self, spec: PipelineSpec) -> BatchBackend:
        return make_backend(spec.backend)

    def pipeline(self, spec: PipelineSpec, **options: Any) -> Pipeline:
        return Pipeline(spec, **options)

    def batches(self, pipeline: str | None = None) -> list[BatchInfo]:
        return _of_pipeline(list(self.service.iter_batches()), pipeline)

    def has_file(self, file_id: str) -> bool:
        try:
            self.client.files.retrieve(file_id)
        except openai.NotFoundError:
            return False
        return True

    def now(self) -> float:
        return time.time()

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


# Runs a test that takes the `api` fixture on the in-memory API, and again (slow) over HTTP.
on_both_apis = pytest.mark.parametrize(
    "api", ["memory", pytest.param("http", marks=pytest.mark.slow)], indirect=True
)
