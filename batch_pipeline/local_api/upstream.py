"""What the proxy responder knows of its upstream server and of each request's trip there.

`UpstreamWatch`: whether the upstream answers at all. While it does not (a vLLM or Ollama
restart takes minutes), every request waits here instead of spending its own retries, and
one probe checks the upstream with backoff; the outage is logged once, as a warning.

`Flight`: the requests of one batch that are out upstream, awaiting their answers, and
whether more may go. A batch that stops closes it, then waits for the answers already
paid for instead of throwing them away.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit, urlunsplit

log = logging.getLogger(__name__)

MIN_PROBE_DELAY = 0.1  # seconds: no tight loop whatever the backoff settings say


def shown_url(url: str) -> str:
    """`url` as logs and error lines may show it: without user info or query, which may
    hold a key."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = host + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


class Withdrawn(Exception):
    """The request was not sent: its batch stopped first."""


class Flight:
    """The requests of one batch out upstream (their tasks), and whether more may go."""

    def __init__(self) -> None:
        self.open = True
        self.out: set[asyncio.Task[object]] = set()

    def depart(self) -> asyncio.Task[object]:
        """Mark the calling task's request as sent; Withdrawn once the flight is closed."""
        if not self.open:
            raise Withdrawn
        task = asyncio.current_task()
        assert task is not None
        self.out.add(task)
        return task

    def arrive(self, task: asyncio.Task[object]) -> None:
        """The request of `task` got its answer (or lost it)."""
        self.out.discard(task)


class UpstreamWatch:
    """Holds requests while the upstream is unreachable; one probe looks for its return.

    `probe()` must return once the upstream gave any HTTP answer and raise when it gave
    none. Probes start `first_delay` apart, doubling up to `max_delay`.
    """

    def __init__(
        self,
        url: str,
        probe: Callable[[], Awaitable[object]],
        *,
        first_delay: float,
        max_delay: float,
    ) -> None:
        self.url = shown_url(url)
        self._probe = probe
        self.first_delay = max(first_delay, MIN_PROBE_DELAY)
        self.max_delay = max(max_delay, self.first_delay)
        self._up = asyncio.Event()
        self._up.set()
        self._prober: asyncio.Task[None] | None = None

    async def reachable(self) -> None:
        """Return at once while the upstream answers; else when it answers again."""
        if not self._up.is_set():
            await self._up.wait()

    def suspect(self) -> None:
        """A request got no answer: hold the others until a probe gets one."""
        if self._prober is None:
            self._up.clear()
            self._prober = asyncio.get_running_loop().create_task(self._watch())

    async def close(self) -> None:
        """Stop probing (the requests still held are cancelled by their owners)."""
        if self._prober is not None:
            self._prober.cancel()
            await asyncio.gather(self._prober, return_exceptions=True)

    async def _watch(self) -> None:
        started = time.monotonic()
        delay = self.first_delay
        down = False
        try:
            while True:
                try:
                    await self._probe()
                    break
                except Exception as exc:
                    if not down:
                        down = True
                        log.warning(
                            "upstream %s is unreachable (%s); holding its requests and "
                            "checking again every %.1f s at most",
                            self.url,
                            type(exc).__name__,
                            self.max_delay,
                        )
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, self.max_delay)
            if down:
                log.info(
                    "upstream %s answers again after %.1f s; resuming",
                    self.url,
                    time.monotonic() - started,
                )
        finally:
            self._prober = None
            self._up.set()
