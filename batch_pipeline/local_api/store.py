"""On-disk state of the local Batch API: file blobs and JSON records of files and batches.

Layout under the state dir::

    files/<file_id>.data    the bytes of a file
    files/<file_id>.json    its metadata (the OpenAI File object, plus `_`-prefixed internals)
    batches/<batch_id>.json a batch record (the OpenAI Batch object, plus internals)
    work/<batch_id>/        a running batch: its own link to its input's bytes, and its
                            partial results (see worker.py)
    tmp/                    uploads being received, downloads being sent
    .lock                   held by the one service using the state dir

Every record write is atomic (temporary file, fsync, os.replace), so a crash leaves the old
record or the new one. Writes that only refresh the progress of a running batch skip the
fsync (`durable=False`): they are still atomic if this process dies, and the partial results
in work/ (not the record's counts) are what a resumed batch goes by. Everything is also held
in memory, so reads never touch the disk.
Ids are opaque random tokens whose leading hex digits encode the creation time, so sorting
ids sorts by creation and a pagination cursor stays valid even if its object was deleted.
"""

from __future__ import annotations

import bisect
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
from typing import Any

import orjson

from batch_pipeline.core.types import TERMINAL_BATCH_STATUSES

log = logging.getLogger(__name__)

FILE_ID_RE = re.compile(r"\Afile-[0-9a-f]{32}\Z")
BATCH_ID_RE = re.compile(r"\Abatch_[0-9a-f]{32}\Z")

TERMINAL_STATUSES = frozenset(status.value for status in TERMINAL_BATCH_STATUSES)
INPUT_LINK = "input.jsonl"
LOCK_FILE = ".lock"

Record = dict[str, Any]


def public(record: Record) -> Record:
    """The wire form of a record: without the `_`-prefixed internal fields."""
    return {k: v for k, v in record.items() if not k.startswith("_")}


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


def _link_or_copy(source: Path, dest: Path) -> None:
    """`dest` as a second name of `source`'s bytes (a copy where hard links fail)."""
    try:
        os.link(source, dest)
    except OSError:
        shutil.copyfile(source, dest)


class StateDirInUse(RuntimeError):
    """Another service holds the state dir: two would answer the same batches twice."""


def _fsync_path(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError), open(path, "rb") as f:
        os.fsync(f.fileno())


class _IdFactory:
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
        with self._lock:
            stamp = max(time.time_ns() // 1000, self._last + 1)
            self._last = stamp
        return f"{prefix}{stamp:014x}{secrets.token_hex(9)}"


class _Table:
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
        return self.dir / f"{record_id}.json"


class Store:
    """Files and batches of the local Batch API, persisted under `root`."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.files_dir = self.root / "files"
        self.batches_dir = self.root / "batches"
        self.work_root = self.root / "work"
        self.tmp_dir = self.root / "tmp"
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock_file = _lock_state_dir(self.root / LOCK_FILE)
        for d in (self.files_dir, self.batches_dir, self.work_root, self.tmp_dir):
            d.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(self.tmp_dir, ignore_errors=True)
        self.tmp_dir.mkdir(exist_ok=True)
        self._lock = threading.RLock()
        self._ids = _IdFactory()
        self._files = _Table(self.files_dir, FILE_ID_RE)
        self._batches = _Table(self.batches_dir, BATCH_ID_RE)
        for table in (self._files, self._batches):
            for record_id in table.load():
                self._ids.observe(record_id)
        self._drop_files_without_blob()
        self._drop_blobs_without_record()

    def close(self) -> None:
        """Let another service open the state dir."""
        if not self._lock_file.closed:
            self._lock_file.close()

    # ------------------------------------------------------------------ helpers

    def _drop_files_without_blob(self) -> None:
        for file_id in list(self._files.ids):
            if not self.blob_path(file_id).exists():
                log.warning("file %s has no content on disk; dropping its record", file_id)
                self._files.records.pop(file_id, None)
                self._files.path(file_id).unlink(missing_ok=True)
        self._files.ids = sorted(self._files.records)

    def _drop_blobs_without_record(self) -> None:
        for blob in self.files_dir.glob("*.data"):
            if blob.stem not in self._files.records:
                blob.unlink(missing_ok=True)

    def _persist(self, table: _Table, record_id: str, *, durable: bool = True) -> None:
        """Write the current version of a record, never overwriting a newer one."""
        with self._lock:
            record = table.records.get(record_id)
            if record is None:
                return
            version = table.versions.get(record_id, 0) + 1
            table.versions[record_id] = version
            data = orjson.dumps(record)
            io_lock = table.io_locks.setdefault(record_id, threading.Lock())
        with io_lock:
            written = table.written.get(record_id, 0)
            if written >= version:
                # A newer version is on disk already; make it durable if this one had to be.
                if durable and table.synced.get(record_id, 0) < version:
                    _fsync_path(table.path(record_id))
                    table.synced[record_id] = written
                return
            atomic_write_bytes(table.path(record_id), data, durable=durable)
            table.written[record_id] = version
            if durable:
                table.synced[record_id] = version

    def new_tmp_path(self, suffix: str = ".part") -> Path:
        """A fresh path under the state dir's tmp folder (same file system as the blobs)."""
        return self.tmp_dir / f"{secrets.token_hex(12)}{suffix}"

    # ------------------------------------------------------------------ files

    def blob_path(self, file_id: str) -> Path:
        """Where the bytes of a file live (the id must already be validated)."""
        return self.files_dir / f"{file_id}.data"

    def new_file_id(self) -> str:
        """A fresh file id."""
        return self._ids.new("file-")

    def add_file(
        self,
        source: Path,
        *,
        filename: str,
        purpose: str,
        file_id: str | None = None,
        expires_at: int | None = None,
        keep_source: bool = False,
    ) -> Record:
        """Store the bytes at `source` as a new file (moved, or hard-linked/copied if kept)."""
        file_id = file_id or self.new_file_id()
        blob = self.blob_path(file_id)
        if keep_source:
            tmp = self.new_tmp_path()
            _link_or_copy(source, tmp)
            os.replace(tmp, blob)
        else:
            with open(source, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(source, blob)
        record: Record = {
            "id": file_id,
            "object": "file",
            "bytes": blob.stat().st_size,
            "created_at": int(time.time()),
            "expires_at": expires_at,
            "filename": filename,
            "purpose": purpose,
            "status": "processed",
            "status_details": None,
        }
        with self._lock:
            if file_id not in self._files.records:
                bisect.insort(self._files.ids, file_id)
            self._files.records[file_id] = record
        self._persist(self._files, file_id)
        return dict(record)

    def download_path(self, file_id: str) -> Path | None:
        """A private name for a live file's bytes, for one download to read from, so that a
        delete while it is sent cannot cut it short; None if there is no such file. The
        caller removes it when done (a restart empties tmp/ too)."""
        path = self.new_tmp_path(".download")
        return path if self._link_live_file(file_id, path) else None

    def _link_live_file(self, file_id: str, dest: Path) -> bool:
        """`dest` as a second name of a live file's bytes; False if the file is unknown,
        deleted or expired. A delete drops the record under the lock before the bytes, so
        a record seen under it still has them."""
        with self._lock:
            record = self._files.records.get(file_id)
            if record is None or _expired(record):
                return False
            _link_or_copy(self.blob_path(file_id), dest)
        return True

    def get_file(self, file_id: str) -> Record | None:
        """The record of a live file, or None (malformed id, unknown, deleted or expired)."""
        if not FILE_ID_RE.match(file_id):
            return None
        with self._lock:
            record = self._files.records.get(file_id)
            if record is None or _expired(record):
                return None
            return dict(record)

    def list_files(
        self, *, purpose: str | None, order: str, after: str | None, limit: int
    ) -> tuple[list[Record], bool]:
        """A page of files by creation time and whether more follow."""
        with self._lock:
            ids = self._files.ids
            if order == "asc":
                start = bisect.bisect_right(ids, after) if after else 0
                candidates: Iterable[str] = (ids[i] for i in range(start, len(ids)))
            else:
                end = bisect.bisect_left(ids, after) if after else len(ids)
                candidates = (ids[i] for i in range(end - 1, -1, -1))
            page: list[Record] = []
            for file_id in candidates:
                record = self._files.records[file_id]
                if _expired(record) or (purpose and record["purpose"] != purpose):
                    continue
                if len(page) == limit:
                    return page, True
                page.append(dict(record))
            return page, False

    def delete_file(self, file_id: str) -> bool:
        """Delete a file's record and bytes; False if there was no such file."""
        if not FILE_ID_RE.match(file_id):
            return False
        with self._lock:
            record = self._files.records.pop(file_id, None)
            if record is None:
                return False
            index = bisect.bisect_left(self._files.ids, file_id)
            if index < len(self._files.ids) and self._files.ids[index] == file_id:
                del self._files.ids[index]
            io_lock = self._files.io_locks.setdefault(file_id, threading.Lock())
        with io_lock:
            self._files.path(file_id).unlink(missing_ok=True)
            self._files.written.pop(file_id, None)
            self._files.synced.pop(file_id, None)
        self.blob_path(file_id).unlink(missing_ok=True)
        return True

    def delete_expired_files(self, now: float | None = None) -> int:
        """Delete files whose `expires_at` has passed; returns how many."""
        now = time.time() if now is None else now
        with self._lock:
            expired = [i for i, r in self._files.records.items() if _expired(r, now)]
        return sum(self.delete_file(file_id) for file_id in expired)

    # ------------------------------------------------------------------ batches

    def new_batch_id(self) -> str:
        """A fresh batch id."""
        return self._ids.new("batch_")

    def add_batch(self, record: Record) -> Record | None:
        """Store a new batch record (its `id` from new_batch_id), with the batch's own link to
        its input's bytes; None if the input file is gone.

        As with the providers, deleting the input file afterwards (or its expiry) does not
        take the requests from the batch.
        """
        batch_id = record["id"]
        if not self._link_live_file(record["input_file_id"], self.work_dir(batch_id) / INPUT_LINK):
            self.remove_work_dir(batch_id)
            return None
        with self._lock:
            self._batches.records[batch_id] = dict(record)
            bisect.insort(self._batches.ids, batch_id)
        self._persist(self._batches, batch_id)
        return dict(record)

    def get_batch(self, batch_id: str) -> Record | None:
        """A copy of a batch record, or None."""
        if not BATCH_ID_RE.match(batch_id):
            return None
        with self._lock:
            record = self._batches.records.get(batch_id)
            return None if record is None else dict(record)

    def update_batch(
        self,
        batch_id: str,
        *,
        expect: Iterable[str] | None = None,
        persist: bool = True,
        durable: bool = True,
        **fields: Any,
    ) -> Record | None:
        """Set fields of a batch; with `expect`, only if its status is one of those.

        Returns the updated record, or None when the batch is unknown or the status did not
        match. Nested values are replaced, never mutated, so copies stay consistent. With
        `persist`, the record is written to disk (without fsync unless `durable`).
        """
        with self._lock:
            record = self._batches.records.get(batch_id)
            if record is None or (expect is not None and record["status"] not in set(expect)):
                return None
            record.update(fields)
            result = dict(record)
        if persist:
            self._persist(self._batches, batch_id, durable=durable)
        return result

    def persist_batch(self, batch_id: str, *, durable: bool = True) -> None:
        """Write a batch's in-memory record to disk (without fsync unless `durable`)."""
        self._persist(self._batches, batch_id, durable=durable)

    def list_batches(self, *, after: str | None, limit: int) -> tuple[list[Record], bool]:
        """A page of batches, newest first, and whether more follow."""
        with self._lock:
            ids = self._batches.ids
            end = bisect.bisect_left(ids, after) if after else len(ids)
            chosen = ids[max(0, end - limit - 1) : end][::-1]
            has_more = len(chosen) > limit
            return [dict(self._batches.records[i]) for i in chosen[:limit]], has_more

    def unfinished_batch_ids(self) -> list[str]:
        """Ids of batches not yet in a terminal status, oldest first."""
        with self._lock:
            return [
                i
                for i in self._batches.ids
                if self._batches.records[i]["status"] not in TERMINAL_STATUSES
            ]

    def enqueued_prompt_tokens(self, model: str | None) -> int:
        """Prompt tokens of the model's validated batches that are not finished yet."""
        with self._lock:
            return sum(
                record.get("_prompt_tokens", 0)
                for record in self._batches.records.values()
                if record.get("_validated")
                and record.get("model") == model
                and record["status"] not in TERMINAL_STATUSES
            )

    def batch_input_path(self, record: Record) -> Path:
        """Where a batch reads its requests: its own link (`add_batch`), or the input file's
        bytes for a batch created without one."""
        link = self.work_root / record["id"] / INPUT_LINK
        return link if link.exists() else self.blob_path(record["input_file_id"])

    def work_dir(self, batch_id: str) -> Path:
        """The folder for a running batch's partial results (created on demand)."""
        path = self.work_root / batch_id
        path.mkdir(parents=True, exist_ok=True)
        return path

    def remove_work_dir(self, batch_id: str) -> None:
        """Drop a finished batch's partial results."""
        shutil.rmtree(self.work_root / batch_id, ignore_errors=True)


def _lock_state_dir(path: Path) -> Any:
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


def _expired(record: Record, now: float | None = None) -> bool:
    expires_at = record.get("expires_at")
    return expires_at is not None and expires_at <= (time.time() if now is None else now)
