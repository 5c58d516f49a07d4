"""The in-memory state of one running batch, shared by the engine's parts."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from batch_pipeline.local_api.partial_results import PartialResults
from batch_pipeline.local_api.upstream import Flight


@dataclass
class BatchRun:
    """A batch being run: why it stops, its request tasks, its results so far."""

    batch_id: str
    stopped: asyncio.Event = field(default_factory=asyncio.Event)
    stop_reason: str | None = None  # "cancelled" | "expired" | "shutdown"
    task: asyncio.Task[None] | None = None
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    stop_waiter: asyncio.Task[Any] | None = None
    hanging: int = 0
    total: int = 0
    chunks: int = 0
    last_persist: float = 0.0
    published: Any = None  # the request counts last put in the record (in memory)
    persisted: Any = None  # ... and last written to disk
    partial: PartialResults | None = None
    input_path: Path | None = None
    offset: int = 0  # in the input file, where the next chunk starts
    flight: Flight = field(default_factory=Flight)

    def request_stop(self, reason: str) -> None:
        """Stop the batch for `reason` (the first reason given is kept)."""
        if self.stop_reason is None:
            self.stop_reason = reason
            self.stopped.set()

    async def wait_any(self) -> None:
        """Until one request task ends or the batch is told to stop."""
        assert self.stop_waiter is not None
        await asyncio.wait([*self.tasks, self.stop_waiter], return_when=asyncio.FIRST_COMPLETED)
