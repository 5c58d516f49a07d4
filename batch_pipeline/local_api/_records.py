"""The on-disk pieces of the local Batch API's store: atomic record writes, time-ordered
opaque ids, a table of JSON records, and the lock that keeps a state dir to one service."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import secrets
import shutil
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any, NamedTuple

import orjson

log = logging.getLogger(__name__)

Record = dict[str, Any]


def atomic_write_bytes(path: Path, data: bytes, *, durable: bool = True) -> None:
    """Write `data` to `path` so that a crash leaves either the old or the new content.

    `durable=False` skips the fsync: cheaper, atomic against a crash of the process, but the
    new content may not survive a crash of the machine.
    """
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def link_or_copy(source: Path, dest: Path) -> None:
    """`dest` as a second name of `source`'s bytes (a copy where hard links fail)."""
    try:
        os.link(source, dest)
    except OSError:
        shutil.copyfile(source, dest)


class StateDirInUse(RuntimeError):
    """Another service holds the state dir: two would answer the same batches twice."""


def fsync_path(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError), open(path, "rb") as f:
        os.fsync(f.fileno())


class IdFactory:
    """Opaque ids: 14 hex digits of creation time in microseconds, then 18 random ones."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last = 0

    def observe(self, existing_id: str) -> None:
        """Never issue an id sorting before one that already exists (clock steps back)."""
        stamp = int(existing_id.split("-", 1)[-1].split("_", 1)[-1][:14], 16)
        with self._lock:
            self._last = max(self._last, stamp)

    def new(self, prefix: str) -> str:
        """A fresh id after every one issued or observed."""
        with self._lock:
            stamp = max(time.time_ns() // 1000, self._last + 1)
            self._last = stamp
        return f"{prefix}{stamp:014x}{secrets.token_hex(9)}"


class PendingWrite(NamedTuple):
    """A version of a record to write: its id, version number, bytes and disk lock."""

    record_id: str
    version: int
    data: bytes
    io_lock: threading.Lock


class Table:
    """Records of one kind, in memory and on disk, ordered by id."""

    def __init__(self, directory: Path, id_re: re.Pattern[str]) -> None:
        self.dir = directory
        self.id_re = id_re
        self.records: dict[str, Record] = {}
        self.ids: list[str] = []  # sorted ascending == creation order
        self.versions: dict[str, int] = {}
        self.written: dict[str, int] = {}
        self.synced: dict[str, int] = {}  # the latest version written with fsync
        self.io_locks: dict[str, threading.Lock] = {}

    def load(self) -> Iterable[str]:
        """Read the records on disk (dropping leftover temporary files); their ids, sorted."""
        for path in self.dir.glob(".*.tmp"):
            path.unlink(missing_ok=True)
        for path in self.dir.glob("*.json"):
            record_id = path.stem
            if not self.id_re.match(record_id):
                continue
            try:
                record = orjson.loads(path.read_bytes())
            except (OSError, orjson.JSONDecodeError) as exc:
                log.warning("ignoring unreadable record %s: %s", path.name, exc)
                continue
            self.records[record_id] = record
        self.ids = sorted(self.records)
        return self.ids

    def path(self, record_id: str) -> Path:
        """Where a record is written."""
        return self.dir / f"{record_id}.json"

    def io_lock(self, record_id: str) -> threading.Lock:
        """The lock that orders the disk writes of one record."""
        return self.io_locks.setdefault(record_id, threading.Lock())

    def next_version(self, record_id: str) -> PendingWrite | None:
        """A write of the record as it is now, under a new version number (None if there is
        no such record); to be taken under the store's lock, written outside it."""
        record = self.records.get(record_id)
        if record is None:
            return None
        version = self.versions.get(record_id, 0) + 1
        self.versions[record_id] = version
        return PendingWrite(record_id, version, orjson.dumps(record), self.io_lock(record_id))

    def write(
        self,
        record_id: str,
        version: int,
        data: bytes,
        io_lock: threading.Lock,
        *,
        durable: bool = True,
    ) -> None:
        """Write a version of a record unless a newer one is on disk already (then only make
        that one durable if this one had to be)."""
        with io_lock:
            written = self.written.get(record_id, 0)
            if written >= version:
                if durable and self.synced.get(record_id, 0) < version:
                    fsync_path(self.path(record_id))
                    self.synced[record_id] = written
                return
            atomic_write_bytes(self.path(record_id), data, durable=durable)
            self.written[record_id] = version
            if durable:
                self.synced[record_id] = version

    def remove(self, record_id: str, io_lock: threading.Lock) -> None:
        """Remove a record's file (its record already dropped from memory)."""
        with io_lock:
            self.path(record_id).unlink(missing_ok=True)
            self.written.pop(record_id, None)
            self.synced.pop(record_id, None)


def lock_state_dir(path: Path) -> Any:
    """The open, exclusively locked lock file of a state dir (the lock goes with the process);
    StateDirInUse if another service holds it."""
    handle = open(path, "a+b")  # noqa: SIM115 - held open for the life of the store
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise StateDirInUse(
            f"another local Batch API service is using the state dir {path.parent}; "
            "stop it or give this one another --state-dir"
        ) from None
    return handle
