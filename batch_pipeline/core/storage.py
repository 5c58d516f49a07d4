"""Storage roots: where request, batch and result files live, behind one small interface.

Paths inside a root are relative, `/`-separated strings (`requests/partition=2024-05-01/...`),
so an object store (s3://, gs://) can implement the same interface later. Every write is
atomic: readers see the old file or the new one, never a half-written one.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Protocol, runtime_checkable

TEMP_PREFIX = ".tmp-"


@runtime_checkable
class StorageRoot(Protocol):
    """A folder-like place for files, addressed by relative paths."""

    def uri(self, rel: str) -> str:
        """Where `rel` lives, as a string a person or another tool can use."""
        ...

    def exists(self, rel: str) -> bool: ...

    def open_read(self, rel: str) -> BinaryIO: ...

    def atomic_write(
        self, rel: str, *, durable: bool = True
    ) -> contextlib.AbstractContextManager[BinaryIO]:
        """A binary file whose content appears under `rel` only if the block ends normally;
        `durable=False` skips flushing it to disk, for copies that can be fetched again."""
        ...

    def write_bytes(self, rel: str, data: bytes) -> None: ...

    def read_bytes(self, rel: str) -> bytes: ...

    def list(self, prefix: str = "") -> list[str]:
        """The relative paths of the files under the folder `prefix`, sorted."""
        ...

    def delete(self, rel: str) -> None:
        """Remove one file; a missing file is not an error."""
        ...

    def delete_tree(self, prefix: str) -> None:
        """Remove every file under the folder `prefix`; a missing folder is not an error."""
        ...

    def local_path(self, rel: str) -> Path:
        """A local filesystem path for `rel`, for writers that need one (pyarrow, parquet)."""
        ...


class LocalStorage:
    """A storage root on the local filesystem (or a mounted network filesystem)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).expanduser().resolve()

    def __repr__(self) -> str:
        return f"LocalStorage({str(self.root)!r})"

    def local_path(self, rel: str) -> Path:
        """The absolute path of `rel`; a path that would leave the root is refused."""
        parts = PurePosixPath(rel.replace("\\", "/")).parts
        if PurePosixPath(rel).is_absolute() or ".." in parts:
            raise ValueError(f"storage paths are relative and stay inside the root, not {rel!r}")
        return self.root.joinpath(*parts)

    def uri(self, rel: str) -> str:
        return str(self.local_path(rel))

    def exists(self, rel: str) -> bool:
        return self.local_path(rel).is_file()

    def open_read(self, rel: str) -> BinaryIO:
        return self.local_path(rel).open("rb")

    @contextlib.contextmanager
    def atomic_write(self, rel: str, *, durable: bool = True) -> Iterator[BinaryIO]:
        """Write to a temporary file beside the target, fsync it (if `durable`), then rename it
        into place.

        On an exception the temporary file is removed and the target is left untouched.
        """
        target = self.local_path(rel)
        target.parent.mkdir(parents=True, exist_ok=True)
        handle = tempfile.NamedTemporaryFile(  # noqa: SIM115 - closed below, on every path
            dir=target.parent, prefix=f"{TEMP_PREFIX}{target.name}.", delete=False
        )
        try:
            with handle:
                yield handle  # type: ignore[misc]
                handle.flush()
                if durable:
                    os.fsync(handle.fileno())
            os.replace(handle.name, target)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(handle.name)
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


def storage_for(root: str | Path) -> StorageRoot:
    """The storage implementation for `root`: a local path (or file:// URL) today."""
    text = str(root)
    scheme, sep, rest = text.partition("://")
    if not sep:
        return LocalStorage(Path(text))
    if scheme == "file":
        return LocalStorage(Path(rest))
    raise ValueError(
        f"storage root {text!r}: {scheme}:// storage is not supported yet; use a local path"
    )
