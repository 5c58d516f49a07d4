"""The state of a running local Batch API service that its routes share: its settings,
its store and its batch engine."""

from __future__ import annotations

from batch_pipeline.core.tokens import default_encoding
from batch_pipeline.local_api.responders import make_responder
from batch_pipeline.local_api.settings import LocalApiSettings
from batch_pipeline.local_api.store import Store
from batch_pipeline.local_api.worker import BatchEngine


class LocalBatchService:
    """The service's state shared by the routes: store, engine and settings."""

    def __init__(self, settings: LocalApiSettings) -> None:
        self.settings = settings
        self.store: Store | None = None
        self.engine: BatchEngine | None = None
        self.startup_error: Exception | None = None  # why `open` failed, for the caller

    def open(self) -> None:
        """Load the state dir and the tokenizer, and start the batch engine."""
        default_encoding()
        self.store = Store(self.settings.state_dir)
        self.engine = BatchEngine(self.store, self.settings, make_responder(self.settings))
        self.engine.start()

    def close(self) -> None:
        """Stop the batch engine (work in progress is resumed at the next open) and let go of
        the state dir."""
        if self.engine is not None:
            self.engine.stop()
            self.engine = None
        if self.store is not None:
            self.store.close()
            self.store = None

    @property
    def running_store(self) -> Store:
        """The store of the started service."""
        assert self.store is not None, "service not started"
        return self.store

    @property
    def running_engine(self) -> BatchEngine:
        """The batch engine of the started service."""
        assert self.engine is not None, "service not started"
        return self.engine
