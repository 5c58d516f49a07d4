"""Stored files read one after another, each copied whole to a temporary local file while the
one before it is read.

A reader that walks an object store's files in a known order (the results join over a
generation's outcome files) would otherwise wait for each file's bytes when it reaches it, and
a Parquet reader asks for them in many ranged requests. Here one background thread fetches the
next file in one request while the current one is read. At most `ahead + 1` fetched files
wait beside the one being read (anonymous temporary files: gone once closed, or when the
process ends however it ends), so local disk stays bounded. A local folder's files are
opened in place.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
from collections.abc import Sequence
from typing import Any, BinaryIO

from batch_pipeline.core._threads import Prefetch
from batch_pipeline.core.storage import LocalStorage, StorageRoot

COPY_BYTES = 8 * 1024 * 1024


class StagedReads:
    """`storage`, except that `open_read` of the files `keys`, asked for in that order, gives
    a local copy fetched ahead of time. A key asked for out of order is read from the store;
    one passed over is dropped. Use as a context manager: it ends the fetching and removes the
    copies not read."""

    def __init__(self, storage: StorageRoot, keys: Sequence[str], *, ahead: int = 1) -> None:
        self.storage = storage
        self._pending = list(keys) if not isinstance(storage, LocalStorage) else []
        self._fetched: Prefetch[BinaryIO] | None = None
        self._lock = threading.Lock()  # one reader at a time takes from the queue
        if self._pending:
            fetches = (_local_copy(storage, key) for key in tuple(self._pending))
            self._fetched = Prefetch(fetches, depth=ahead, name="staged-reads")

    def __getattr__(self, name: str) -> Any:
        return getattr(self.storage, name)

    def open_read(self, rel: str) -> BinaryIO:
        with self._lock:
            while self._fetched is not None and rel in self._pending:
                key = self._pending.pop(0)
                copy = next(self._fetched)
                if key == rel:
                    return copy
                copy.close()
        return self.storage.open_read(rel)

    def close(self) -> None:
        """Stop fetching; close (and so remove) the copies not read."""
        with self._lock:
            fetched, self._fetched, self._pending = self._fetched, None, []
        if fetched is not None:
            fetched.close()

    def __enter__(self) -> StagedReads:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def _local_copy(storage: StorageRoot, key: str) -> BinaryIO:
    """The file `key` of `storage` in an anonymous temporary file, positioned at its start."""
    copy = tempfile.TemporaryFile(prefix="batch-pipeline-")  # noqa: SIM115 (the caller closes it)
    try:
        download = getattr(storage, "download", None)
        if download is not None:  # an object store: the whole object in one request
            download(key, copy)
        else:
            with storage.open_read(key) as source:
                shutil.copyfileobj(source, copy, COPY_BYTES)
        copy.seek(0)
    except BaseException:
        copy.close()
        raise
    return copy  # type: ignore[return-value]
