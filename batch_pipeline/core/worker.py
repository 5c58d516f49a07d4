"""What every engine step of a pipeline works with: its spec, ledger, backend and storage."""

from __future__ import annotations

import time
from collections.abc import Callable

from batch_pipeline.core.backends.base import BatchBackend
from batch_pipeline.core.ledger import Ledger
from batch_pipeline.core.spec import PipelineSpec
from batch_pipeline.core.storage import StorageRoot
from batch_pipeline.core.tuning import DEFAULT_TUNING, Tuning


class PipelineWorker:
    """Base of the engine's steps; `owner` names this process in the ledger's leases,
    `tuning` holds its backoffs and limits."""

    def __init__(
        self,
        spec: PipelineSpec,
        ledger: Ledger,
        backend: BatchBackend,
        storage: StorageRoot,
        owner: str,
        *,
        clock: Callable[[], float] = time.time,
        tuning: Tuning = DEFAULT_TUNING,
    ) -> None:
        self.spec = spec
        self.ledger = ledger
        self.backend = backend
        self.storage = storage
        self.owner = owner
        self._clock = clock
        self.tuning = tuning
