"""On-disk state of the local Batch API: file blobs and JSON records of files and batches.

Layout under the state dir::

    files/<file_id>.data    the bytes of a file
    files/<file_id>.json    its metadata (the OpenAI File object, plus `_`-prefixed internals)
    batches/<batch_id>.json a batch record (the OpenAI Batch object, plus internals)
    work/<batch_id>/        a running batch: its own link to its input's bytes, and its
                            partial results (see partial_results.py)
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
import logging
import os
import re
import secrets
import shutil
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from batch_pipeline.core.types import TERMINAL_BATCH_STATUSES
from batch_pipeline.local_api._records import (
    IdFactory,
    Record,
    Table,
    link_or_copy,
    lock_state_dir,
)

log = logging.getLogger(__name__)

FILE_ID_RE = re.compile(r"\Afile-[0-9a-f]{32}\Z")
BATCH_ID_RE = re.compile(r"\Abatch_[0-9a-f]{32}\Z")

TERMINAL_STATUSES = frozenset(status.value for status in TERMINAL_BATCH_STATUSES)
INPUT_LINK = "input.jsonl"
LOCK_FILE = ".lock"


def public(record: Record) -> Record:
    """The wire form of a record: without the `_`-prefixed internal fields."""
    return {k: v for k, v in record.items() if not k.startswith("_")}


class Store:
    """Files and batches of the local Batch API, persisted under `root`."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.files_dir = self.root / "files"
        self.batches_dir = self.root / "batches"
        self.work_root = self.root / "work"
        self.tmp_dir = self.root / "tmp"
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock_file = lock_state_dir(self.root / LOCK_FILE)
        for d in (self.files_dir, self.batches_dir, self.work_root, self.tmp_dir):
            d.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(self.tmp_dir, ignore_errors=True)
        self.tmp_dir.mkdir(exist_ok=True)
        self._lock = threading.RLock()
        self._ids = IdFactory()
        self._files = Table(self.files_dir, FILE_ID_RE)
        self._batches = Table(self.batches_dir, BATCH_ID_RE)
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

    def _persist(self, table: Table, record_id: str, *, durable: bool = True) -> None:
        """Write the current version of a record, never overwriting a newer one."""
        with self._lock:
            version = table.next_version(record_id)
        if version is not None:
            table.write(*version, durable=durable)

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
            link_or_copy(source, tmp)
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
            link_or_copy(self.blob_path(file_id), dest)
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
            candidates = _from_cursor(self._files.ids, after, ascending=order == "asc")
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
            io_lock = self._files.io_lock(file_id)
        self._files.remove(file_id, io_lock)
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
        return self._insert_batch(record)

    def add_inline_batch(self, record: Record, requests: Path) -> Record:
        """Store a new batch whose requests came inline in its create call (Anthropic's):
        `requests`, their JSONL (a path under tmp/), becomes the batch's own input."""
        target = self.work_dir(record["id"]) / INPUT_LINK
        with open(requests, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(requests, target)
        return self._insert_batch(record)

    def _insert_batch(self, record: Record) -> Record:
        batch_id = record["id"]
        with self._lock:
            self._batches.records[batch_id] = dict(record)
            bisect.insort(self._batches.ids, batch_id)
        self._persist(self._batches, batch_id)
        return dict(record)

    def delete_batch(self, batch_id: str) -> bool:
        """Forget a batch's record (its result files stay until they expire or are deleted);
        False if there was no such batch."""
        if not BATCH_ID_RE.match(batch_id):
            return False
        with self._lock:
            if self._batches.records.pop(batch_id, None) is None:
                return False
            index = bisect.bisect_left(self._batches.ids, batch_id)
            if index < len(self._batches.ids) and self._batches.ids[index] == batch_id:
                del self._batches.ids[index]
            io_lock = self._batches.io_lock(batch_id)
        self._batches.remove(batch_id, io_lock)
        self.remove_work_dir(batch_id)
        return True

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

    def list_batches(
        self,
        *,
        after: str | None,
        limit: int,
        before: str | None = None,
        anthropic: bool = False,
    ) -> tuple[list[Record], bool]:
        """A page of batches, newest first, and whether more follow: the `limit` older than
        `after` (or the newest), or with `before` the `limit` just newer than it. Each
        dialect lists its own: Anthropic's batches (`anthropic`) or the Files-based ones."""
        with self._lock:
            ids = self._batches.ids
            candidates = _from_cursor(ids, before or after, ascending=before is not None)
            page: list[Record] = []
            for batch_id in candidates:
                record = self._batches.records[batch_id]
                if (record.get("_dialect") == "anthropic") != anthropic:
                    continue
                if len(page) == limit:
                    break
                page.append(dict(record))
            else:
                return (page[::-1] if before is not None else page), False
            return (page[::-1] if before is not None else page), True

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


def _from_cursor(ids: list[str], cursor: str | None, *, ascending: bool) -> Iterator[str]:
    """The sorted `ids` past `cursor` (from the start without one), in the order asked."""
    if ascending:
        start = bisect.bisect_right(ids, cursor) if cursor else 0
        return (ids[i] for i in range(start, len(ids)))
    end = bisect.bisect_left(ids, cursor) if cursor else len(ids)
    return (ids[i] for i in range(end - 1, -1, -1))


def _expired(record: Record, now: float | None = None) -> bool:
    expires_at = record.get("expires_at")
    return expires_at is not None and expires_at <= (time.time() if now is None else now)
