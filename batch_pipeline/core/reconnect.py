"""Riding through an outage of the ledger's database (a restart, a managed failover).

A ledger operation is one transaction. When it fails because the database went away (the
connection was refused, reset or ended by the server's shutdown), the whole operation runs
again from its start on a new connection, with growing pauses, until it succeeds or the
outage has lasted longer than its bound (`ledger.reconnect_seconds`). Nothing else is tried
again: a programming error or a constraint violation is raised at once. One line is logged
when an outage starts and one when it ends; the URL's password is never shown.

A database this process has never reached is not having an outage: it is the wrong address,
or down before anything started, and its error is raised at once (as a Batch API that a
first call cannot connect to).
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar, cast

import sqlalchemy as sa

log = logging.getLogger(__name__)

T = TypeVar("T")
Method = TypeVar("Method", bound=Callable[..., Any])

FIRST_PAUSE_SECONDS = 0.25
LONGEST_PAUSE_SECONDS = 5.0

# What libpq, psycopg and the server say when the server is away, going or coming back.
_TRANSIENT_MESSAGES = (
    "connection refused",
    "connection reset",
    "could not connect",
    "server closed the connection",
    "the database system is shutting down",
    "the database system is starting up",
    "the database system is in recovery mode",
    "the database system is not yet accepting connections",
    "terminating connection due to administrator command",
    "connection already closed",
    "no connection to the server",
    "could not receive data from server",
    "could not send data to server",
    "ssl connection has been closed unexpectedly",
    "connection timed out",
    "timeout expired",
)
# SQLSTATEs: admin_shutdown, crash_shutdown, cannot_connect_now; class 08 is connection trouble.
_TRANSIENT_STATES = ("57P01", "57P02", "57P03")


# The databases this process has reached: a later failure to connect to one is an outage.
_reached: set[str] = set()
_reached_lock = threading.Lock()


class LedgerUnavailableError(RuntimeError):
    """The ledger's database did not come back within `ledger.reconnect_seconds`."""


def is_transient(exc: BaseException) -> bool:
    """Whether `exc` says the database is away for now (and the operation may run again),
    rather than that the operation is wrong."""
    if isinstance(exc, sa.exc.DisconnectionError):
        return True
    if not isinstance(exc, sa.exc.DBAPIError):
        return False
    if exc.connection_invalidated:  # the dialect recognised a lost connection
        return True
    if not isinstance(exc, (sa.exc.OperationalError, sa.exc.InterfaceError)):
        return False  # integrity, programming, data errors: the statement's own fault
    state = getattr(exc.orig, "pgcode", None) or getattr(exc.orig, "sqlstate", None)
    if state and (state in _TRANSIENT_STATES or state.startswith("08")):
        return True
    message = str(exc.orig).lower()
    return any(marker in message for marker in _TRANSIENT_MESSAGES)


def first_line(exc: BaseException) -> str:
    """The driver's own message, first line: what the database said, without the SQL."""
    text = str(getattr(exc, "orig", None) or exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class Reconnect:
    """Runs operations on one database again through its outages, each outage for at most
    `seconds` (0: never). Safe to share between threads; one outage is logged once."""

    def __init__(
        self,
        where: str,
        seconds: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.where = where
        self.seconds = seconds
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._outage_since: float | None = None
        self._running = threading.local()
        self._reached = False

    @property
    def inside(self) -> bool:
        """Whether this thread is inside an operation that `run` runs."""
        return bool(getattr(self._running, "depth", 0))

    def run(self, operation: Callable[[], T]) -> T:
        """`operation()`, run again from its start after a transient failure, until it
        succeeds or the outage outlasts the bound (`LedgerUnavailableError`). An operation
        run by another one is run once: the outer one is what is run again, as a whole."""
        if self.inside:
            return operation()
        pause = FIRST_PAUSE_SECONDS
        while True:
            self._running.depth = 1
            try:
                result = operation()
            except sa.exc.SQLAlchemyError as exc:
                if self.seconds <= 0 or not is_transient(exc) or not self._ever_reached():
                    raise
                left = self._left(exc)
                if left <= 0:
                    raise LedgerUnavailableError(
                        f"the ledger's database at {self.where} has not answered for "
                        f"{self.seconds:.0f} s (ledger.reconnect_seconds): {first_line(exc)}"
                    ) from exc
                self._sleep(min(pause, left))
                pause = min(pause * 2, LONGEST_PAUSE_SECONDS)
                continue
            finally:
                self._running.depth = 0
            self._ended()
            return result

    def _ever_reached(self) -> bool:
        """Whether this process has had an answer from this database."""
        with _reached_lock:
            return self._reached or self.where in _reached

    def _left(self, exc: BaseException) -> float:
        """Seconds the current outage may still last; starts (and logs) one if none runs."""
        now = self._clock()
        with self._lock:
            if self._outage_since is None:
                self._outage_since = now
                log.warning(
                    "the ledger's database at %s is unreachable (%s); trying again for up "
                    "to %.0f s",
                    self.where,
                    first_line(exc),
                    self.seconds,
                )
            return self._outage_since + self.seconds - now

    def _ended(self) -> None:
        if not self._reached:
            with _reached_lock:
                self._reached = True
                _reached.add(self.where)
        if self._outage_since is None:  # the common case, without taking the lock
            return
        with self._lock:
            if self._outage_since is None:
                return
            lasted = self._clock() - self._outage_since
            self._outage_since = None
        log.warning("the ledger's database at %s answers again after %.1f s", self.where, lasted)


def reconnecting(method: Method) -> Method:
    """Make a method of an object holding a `Reconnect` (as `_reconnect`) one operation that
    is run again, as a whole, through an outage."""

    @functools.wraps(method)
    def run_through_outages(self: Any, *args: Any, **kwargs: Any) -> Any:
        return self._reconnect.run(lambda: method(self, *args, **kwargs))

    return cast(Method, run_through_outages)


def database_location(url: sa.URL) -> str:
    """Host, port and database of `url`: where it is, without user or password."""
    if url.get_backend_name() == "sqlite":
        return url.database or ":memory:"
    port = f":{url.port}" if url.port else ""
    return f"{url.host or 'localhost'}{port}/{url.database or ''}"
