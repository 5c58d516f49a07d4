"""The end of a stopped batch's requests: those not sent are dropped at once; those out
upstream get a grace period for their answers (paid for, and not to be sent again after a
restart), and any still missing then are dropped and counted in a warning."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from batch_pipeline.local_api.batch_run import BatchRun

log = logging.getLogger(__name__)

# Longest wait for answers already asked for when the service stops: the engine's stop
# waits SHUTDOWN_WAIT_SECONDS for its batches, and the service's close a little longer.
SHUTDOWN_DRAIN_SECONDS = 15.0
SHUTDOWN_WAIT_SECONDS = SHUTDOWN_DRAIN_SECONDS + 5.0


async def drain(run: BatchRun, drain_seconds: float) -> None:
    """End the request tasks of a stopped batch, waiting up to `drain_seconds` (less on
    shutdown) for the answers of those already sent upstream."""
    run.flight.open = False
    out = run.tasks & run.flight.out
    for task in run.tasks - out:
        task.cancel()
    grace = drain_seconds
    if run.stop_reason == "shutdown":
        grace = min(grace, SHUTDOWN_DRAIN_SECONDS)
    pending: set[Any] = set()
    if out:
        _, pending = await asyncio.wait(out, timeout=grace)
    if pending:
        log.warning(
            "batch %s (%s): %d request(s) sent upstream got no answer within %.0f s; "
            "their answers are dropped",
            run.batch_id,
            run.stop_reason,
            len(pending),
            grace,
        )
    for task in pending:
        task.cancel()
    await asyncio.gather(*list(run.tasks), return_exceptions=True)
