"""Storage roots: where request, batch and result files live, behind one small interface.

Files are addressed by relative, `/`-separated keys (`requests/partition=2024-05-01/...`, all
named by `layout`), and the interface is what an object store offers too: read a file as a
stream, write a whole file atomically from a stream, list a prefix, ask whether a file exists
and its size, delete. Nothing outside a storage root's implementation needs a local path:
`LocalStorage` here serves folders, `object_storage.ObjectStorage` object stores (s3://,
gs://, az://), and `storage_for` picks one from the root's URI. Every write is atomic: readers
see the old file or the new one, never a half-written one.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Protocol, runtime_checkable

from batch_pipeline.core.storage_uri import check_key, is_remote, local_path_of

TEMP_PREFIX = ".tmp-"


@runtime_checkable
class StorageRoot(Protocol):
    """A folder-like place for files, addressed by relative keys."""

    def uri(self, rel: str) -> str:
        """Where `rel` lives, as a string a person or another tool can use."""
        ...

    def exists(self, rel: str) -> bool: ...

    def size(self, rel: str) -> int:
        """The file's size in bytes (FileNotFoundError if there is none)."""
        ...

    def open_read(self, rel: str) -> BinaryIO:
        """The file as a seekable binary stream (FileNotFoundError if there is none)."""
        ...

    def atomic_write(
        self, rel: str, *, durable: bool = True, streamed: bool = False
    ) -> contextlib.AbstractContextManager[BinaryIO]:
        """A binary file whose content appears under `rel` only if the block ends normally;
        `durable=False` skips flushing it to disk, for copies that can be fetched again;
        `streamed=True` asks a remote store to send the bytes on as they are written (for a
        large file written over a long time), where the file may then not be read back or
        sought in."""
        ...

    def write_bytes(self, rel: str, data: bytes) -> None: ...

    def read_bytes(self, rel: str) -> bytes: ...

    def list(self, prefix: str = "") -> list[str]:
        """The relative keys of the files under the folder `prefix`, sorted."""
        ...

    def delete(self, rel: str) -> None:
        """Remove one file; a missing file is not an error."""
        ...

    def delete_tree(self, prefix: str) -> None:
        """Remove every file under the folder `prefix`; a missing folder is not an error."""
        ...


@dataclass(frozen=True)
class StoredFile:
    """One file of a storage root, for readers that take a local path or such a file."""

    storage: StorageRoot
    key: str

    def open(self) -> BinaryIO:
        return self.storage.open_read(self.key)

    def __str__(self) -> str:
        return self.storage.uri(self.key)


class LocalStorage:
    """A storage root on the local filesystem (or a mounted network filesystem)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).expanduser().resolve()

    def __repr__(self) -> str:
        return f"LocalStorage({str(self.root)!r})"

    def local_path(self, rel: str) -> Path:
        """The absolute path of `rel` (this implementation's own; callers of the interface
        never need one); a path that would leave the root is refused."""
        return self.root.joinpath(*check_key(rel))

    def uri(self, rel: str) -> str:
        return str(self.local_path(rel))

    def exists(self, rel: str) -> bool:
        return self.local_path(rel).is_file()

    def size(self, rel: str) -> int:
        return self.local_path(rel).stat().st_size

    def open_read(self, rel: str) -> BinaryIO:
        return self.local_path(rel).open("rb")

    @contextlib.contextmanager
    def atomic_write(
        self, rel: str, *, durable: bool = True, streamed: bool = False
    ) -> Iterator[BinaryIO]:
        """Write to a temporary file beside the target, fsync it (if `durable`), then rename it
        into place (`streamed` changes nothing on a local disk).

        On an exception the temporary file is removed and the target is left untouched.
        """
        target = self.local_path(rel)
        target.parent.mkdir(parents=True, exist_ok=True)
        # A name of its own, opened with the usual mode (not mkstemp's 0600, which the rename
        # would carry over): the file is as readable as any other written here.
        temporary = target.with_name(f"{TEMP_PREFIX}{target.name}.{uuid.uuid4().hex}")
        handle = temporary.open("xb")
        try:
            with handle:
                yield handle
                handle.flush()
                if durable:
                    os.fsync(handle.fileno())
            os.replace(temporary, target)
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise
        if durable:
            _fsync_dir(target.parent)

    def write_bytes(self, rel: str, data: bytes) -> None:
        with self.atomic_write(rel) as out:
            out.write(data)

    def read_bytes(self, rel: str) -> bytes:
        return self.local_path(rel).read_bytes()

    def list(self, prefix: str = "") -> list[str]:
        base = self.local_path(prefix) if prefix else self.root
        if not base.is_dir():
            return []
        found = []
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames[:] = [name for name in dirnames if not name.startswith(TEMP_PREFIX)]
            for filename in filenames:
                if filename.startswith(TEMP_PREFIX):
                    continue
                found.append(Path(dirpath, filename).relative_to(self.root).as_posix())
        return sorted(found)

    def delete(self, rel: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.local_path(rel).unlink()

    def delete_tree(self, prefix: str) -> None:
        if not prefix:
            raise ValueError("delete_tree needs a folder inside the root, not the root itself")
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(self.local_path(prefix))


def _fsync_dir(folder: Path) -> None:
    """Make a rename durable; some platforms (Windows) cannot open folders, which is fine."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def scratch_for(storage: StorageRoot) -> Iterator[StorageRoot]:
    """Where files that are read back at once and then dropped (a batch's downloaded output)
    are written: `storage` itself when it is a local folder; for an object store, a temporary
    folder of this machine, removed when the block ends (also on an error), so those bytes
    never travel to the store and back. The caller reads them within the block."""
    if isinstance(storage, LocalStorage):
        yield storage
        return
    folder = tempfile.mkdtemp(prefix="batch-pipeline-")
    try:
        yield LocalStorage(Path(folder))
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def storage_for(root: str | Path, options: Mapping[str, Any] | None = None) -> StorageRoot:
    """The storage implementation for `root`: a local path or file:// URL, or an object
    store's URI (s3://, gs://, az://, abfs://) reached with the non-secret `options`. An
    object store is reached once here, so a missing bucket or refused credentials stop the
    caller before it builds or submits anything."""
    text = str(root)
    if not is_remote(text):
        return LocalStorage(Path(local_path_of(text)))
    from batch_pipeline.core.object_storage import ObjectStorage

    storage = ObjectStorage(text, options)
    storage.check()
    return storage
