"""A storage root in an object store (S3, GCS, Azure) through a pyarrow filesystem.

Object stores have no rename, so publication is whole-object: `atomic_write` stages the bytes
in a temporary file of the machine's temporary folder (removed when the block ends, also on an
error) and uploads it in one call once the block ends normally; with `streamed=True` (a large
file written over a long time) the bytes go up as they are written, through a child process
that completes the upload only then (`streamed_upload`). A reader that lists an object
sees it whole (a single PUT or a completed multipart upload); an exception never completes an
upload, and a killed process leaves at most an unfinished multipart upload, which no listing
shows. Reads stream: `open_read` is pyarrow's random-access file over ranged GETs.
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
from collections.abc import Iterator, Mapping
from typing import Any, BinaryIO

from pyarrow.fs import FileSelector, FileType, LocalFileSystem, copy_files

from batch_pipeline.core.storage_uri import (
    RemoteLocation,
    StorageLocationError,
    check_key,
    describe,
    filesystem_for,
)
from batch_pipeline.core.streamed_upload import streamed_upload

READ_BUFFER_BYTES = 4 * 1024 * 1024  # one ranged GET per 4 MB read, not per line
# A whole-object copy asks for this much per ranged GET: each request costs a round trip (and
# is billed), so a 12 MB outcome file comes in one request and a 300 MB file in ten.
DOWNLOAD_BLOCK_BYTES = 32 * 1024 * 1024


class ObjectStorage:
    """A storage root at an object-store URI (`s3://bucket/prefix`, `gs://...`, `az://...`)."""

    def __init__(self, uri: str, options: Mapping[str, Any] | None = None) -> None:
        self.location = RemoteLocation.parse(uri)
        self._options = dict(options or {})
        self.filesystem = filesystem_for(self.location, options)

    def __repr__(self) -> str:
        return f"ObjectStorage({self.location.uri!r})"

    def _path(self, rel: str) -> str:
        check_key(rel)
        rel = rel.strip("/")
        return f"{self.location.path}/{rel}" if rel else self.location.path

    def uri(self, rel: str) -> str:
        check_key(rel)
        return f"{self.location.uri}/{rel}" if rel else self.location.uri

    def check(self) -> None:
        """Reach the store once, so a missing bucket or refused credentials stop a run before
        anything is built or submitted (StorageLocationError naming the location)."""
        info = self._call(self.filesystem.get_file_info, self.location.container, "")
        if info.type == FileType.NotFound:
            raise StorageLocationError(
                f"{self.location.uri}: the bucket or container {self.location.container!r} "
                "does not exist"
            )

    def exists(self, rel: str) -> bool:
        return self._info(rel).type == FileType.File

    def size(self, rel: str) -> int:
        info = self._info(rel)
        if info.type != FileType.File:
            raise FileNotFoundError(f"{self.uri(rel)} does not exist")
        return int(info.size)

    def _info(self, rel: str) -> Any:
        return self._call(self.filesystem.get_file_info, self._path(rel), rel)

    def open_read(self, rel: str) -> BinaryIO:
        if not self.exists(rel):
            raise FileNotFoundError(f"{self.uri(rel)} does not exist")
        return buffered(self._call(self.filesystem.open_input_file, self._path(rel), rel))

    def download(self, rel: str, out: BinaryIO) -> None:
        """Write the whole object into `out`, one ranged request per `DOWNLOAD_BLOCK_BYTES`
        (each Arrow read of an object is its own request)."""
        stream = self._call(self.filesystem.open_input_stream, self._path(rel), rel)
        with stream:
            while chunk := self._call(stream.read, DOWNLOAD_BLOCK_BYTES, rel):
                out.write(chunk)

    @contextlib.contextmanager
    def atomic_write(
        self, rel: str, *, durable: bool = True, streamed: bool = False
    ) -> Iterator[BinaryIO]:
        """Stage into a temporary local file, then upload it whole once the block ends
        normally; on an exception nothing is uploaded. `streamed`: upload while the block
        writes, through `streamed_upload` (a failure still publishes nothing). `durable` is
        moot: an object store keeps what it acknowledged."""
        target = self._path(rel)
        if streamed:
            with streamed_upload(self.location.uri, self._options, target, self.uri(rel)) as sink:
                yield sink
            return
        descriptor, staged = tempfile.mkstemp(prefix="batch-pipeline-", suffix=".part")
        try:
            with os.fdopen(descriptor, "w+b") as handle:
                yield handle
            # One call into Arrow: a multipart upload completes only once every byte is sent.
            self._call(
                copy_files,
                staged,
                rel,
                target,
                source_filesystem=LocalFileSystem(),
                destination_filesystem=self.filesystem,
            )
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(staged)

    def write_bytes(self, rel: str, data: bytes) -> None:
        # Open, write and close in one call: on S3 a small object's only request is the PUT
        # at close, so a store's refusal comes from there.
        self._call(_put, self.filesystem, rel, self._path(rel), data)

    def read_bytes(self, rel: str) -> bytes:
        with self.open_read(rel) as handle:
            return handle.read()

    def list(self, prefix: str = "") -> list[str]:
        base = self._path(prefix)
        selector = FileSelector(base, recursive=True, allow_not_found=True)
        infos = self._call(self.filesystem.get_file_info, selector, prefix)
        start = len(self.location.path) + 1
        return sorted(info.path[start:] for info in infos if info.type == FileType.File)

    def delete(self, rel: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._call(self.filesystem.delete_file, self._path(rel), rel)

    def delete_tree(self, prefix: str) -> None:
        if not prefix.strip("/"):
            raise ValueError("delete_tree needs a folder inside the root, not the root itself")
        path = self._path(prefix)
        try:
            self._call(self.filesystem.delete_dir, path, prefix)
        except FileNotFoundError:
            return
        except StorageLocationError:
            # GCS calls a folder that is not there an error; gone is what was asked for.
            if self._info(prefix).type != FileType.NotFound:
                raise

    def _call(self, operation: Any, first: Any, rel: str, *rest: Any, **options: Any) -> Any:
        """`operation(first, *rest, **options)`, its store error as one line naming
        `uri(rel)`; a missing object stays a FileNotFoundError."""
        try:
            return operation(first, *rest, **options)
        except FileNotFoundError:
            raise
        except OSError as error:
            raise StorageLocationError(f"{self.uri(rel)}: {describe(error)}") from None


def _put(filesystem: Any, path: str, data: bytes) -> None:
    """`data` as the object `path`, in one write: even an interrupted close publishes it
    whole."""
    with filesystem.open_output_stream(path) as stream:
        stream.write(data)


def buffered(native: Any) -> BinaryIO:
    """A pyarrow input file as a Python binary file (lines, iteration, seek), read in large
    ranged requests."""
    return io.BufferedReader(_RawInput(native), buffer_size=READ_BUFFER_BYTES)


class _RawInput(io.RawIOBase):
    """pyarrow's random-access input file as a raw stream, so that a buffered reader over it
    offers what Python's files do (lines, iteration) while reads stay ranged requests."""

    def __init__(self, native: Any) -> None:
        self._native = native

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        return self._native.readinto(buffer)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return self._native.seek(offset, whence)

    def tell(self) -> int:
        return self._native.tell()

    def close(self) -> None:
        if not self.closed:
            self._native.close()
        super().close()
