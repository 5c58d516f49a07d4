"""An object-store upload that runs while its content is still being written, and that a
failure abandons whole.

Arrow's output stream to an object store uploads as it is written (on S3 a multipart upload,
once the content outgrows a part), but pyarrow cannot abort it: closing the stream (also from
its destructor, after an exception) completes the upload and publishes whatever was written.
So the stream lives in a child process that reads the content from a pipe in length-prefixed
frames (of at most `FRAME_BYTES`) and completes the upload only on an explicit commit frame
that carries the total length. The child reads up to `FRAMES_AHEAD` frames ahead of the store
(while a part goes up, the writer runs on), so memory stays bounded on both sides of the pipe.
A failure of the writer kills the child; a child that reads the end of the pipe without that
frame (its parent died) or hits an error leaves with `os._exit`, before any destructor can
run. Either way no object appears: an upload already opened stays unfinished, which no
listing shows (on S3 a bucket's lifecycle rule for incomplete multipart uploads removes it;
GCS drops an unfinished resumable upload by itself), and on S3 a file smaller than a part has
opened none, as it goes up in one request at its end.

Used for large files written over a long time (a partition's results), whose upload would
otherwise start only once the whole file is written.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import struct
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, BinaryIO

from batch_pipeline.core.storage_uri import StorageLocationError

FRAME_BYTES = 1024 * 1024  # the sink sends its writes on in frames of at most this size
# Frames the child holds while the store takes a part: the memory that lets the writer run on.
FRAMES_AHEAD = 16
_HEADER = struct.Struct("!Q")  # a frame's length; 0 opens the commit, then the total length


@contextlib.contextmanager
def streamed_upload(
    root_uri: str, options: Mapping[str, Any], path: str, uri: str
) -> Iterator[BinaryIO]:
    """A write-only binary file whose bytes go to the object `path` (the pyarrow path of the
    filesystem that reaches `root_uri` with `options`) as they are written. The object appears
    only if the block ends normally; an exception, or this process dying, leaves none. A store
    error is a StorageLocationError naming `uri`."""
    upload = _ChildUpload(root_uri, options, path, uri)
    try:
        yield upload.sink  # type: ignore[misc]
        upload.sink.commit()
        upload.finish()
    except BaseException:
        upload.stop()  # also when interrupted while the child completes: no child is left
        raise


class _ChildUpload:
    """The child process that holds the upload, and the pipe that feeds it."""

    def __init__(self, root_uri: str, options: Mapping[str, Any], path: str, uri: str) -> None:
        self.uri = uri
        self._child = subprocess.Popen(
            # -P: the module path is the parent's (below), not the working folder first
            [sys.executable, "-P", "-m", __name__, root_uri, json.dumps(dict(options)), path],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": _python_path()},
        )
        self._error: str | None = None
        self._last_line = ""
        # The child's error stream is read as it comes: a store's client may log there (Google's
        # tracing variables do), and a full pipe would stall the child, and so the writer.
        self._errors = threading.Thread(target=self._read_errors, name="upload-errors", daemon=True)
        self._errors.start()
        self.sink = _FramedSink(self._child.stdin, self._failed)  # type: ignore[arg-type]

    def _read_errors(self) -> None:
        """Keep the last line of the child's error stream, up to its end."""
        assert self._child.stderr is not None
        with self._child.stderr:
            for raw in self._child.stderr:
                self._last_line = raw.decode(errors="replace").strip() or self._last_line

    def _ended(self) -> str:
        """Wait for the child (once); the last line it wrote to its error stream."""
        if self._error is None:
            self._errors.join()
            self._child.wait()
            self._error = self._last_line or f"the upload ended with {self._child.returncode}"
        return self._error

    def _failed(self) -> StorageLocationError:
        """The child stopped reading: what it said, naming the location."""
        return StorageLocationError(f"{self.uri}: {self._ended()}")

    def stop(self) -> None:
        """Abandon the upload: the child dies before it can complete it."""
        self._child.kill()
        with contextlib.suppress(OSError):  # a pipe the dead child no longer reads
            self._child.stdin.close()  # type: ignore[union-attr]
        self._ended()

    def finish(self) -> None:
        """Wait for the child to complete the upload; its error if it could not."""
        error = self._ended()
        if self._child.returncode != 0:
            raise StorageLocationError(f"{self.uri}: {error}")


def _python_path() -> str:
    """The child's module path: this process's own, in its order (a notebook or a code
    server may have found this package through a path it added; "" is the working folder)."""
    return os.pathsep.join(str(Path(entry or ".").resolve()) for entry in sys.path)


class _FramedSink:
    """The writing end of the pipe to the child: writes are gathered into frames. A pipe the
    child no longer reads raises what `failed` gives."""

    def __init__(self, pipe: BinaryIO, failed: Callable[[], Exception]) -> None:
        self._pipe = pipe
        self._failed = failed
        self._pending = bytearray()
        self._position = 0
        self.closed = False

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def tell(self) -> int:
        return self._position

    def write(self, data: Any) -> int:
        size = memoryview(data).nbytes
        self._pending += data
        self._position += size
        if len(self._pending) >= FRAME_BYTES:
            # One large write goes as several frames: the child's read-ahead counts frames.
            with memoryview(self._pending) as pending:
                for start in range(0, len(pending), FRAME_BYTES):
                    with pending[start : start + FRAME_BYTES] as frame:
                        self._send(_HEADER.pack(len(frame)), frame)
            self._pending.clear()
        return size

    def flush(self) -> None:
        """Nothing to do: a frame goes out once full, the rest on commit."""

    def close(self) -> None:
        """Closing the file is not committing it: the upload completes when the block ends."""

    def commit(self) -> None:
        """Send the rest, then the commit frame with the total length; end the pipe."""
        rest = [_HEADER.pack(len(self._pending)), self._pending] if self._pending else []
        self._send(*rest, _HEADER.pack(0), _HEADER.pack(self._position))
        self._pending.clear()
        try:
            self._pipe.close()
        except BrokenPipeError:
            raise self._failed() from None
        self.closed = True

    def _send(self, *parts: bytes | bytearray | memoryview) -> None:
        try:
            for part in parts:
                self._pipe.write(part)
        except BrokenPipeError:
            raise self._failed() from None


# -- the child -----------------------------------------------------------------------------------


def _read_exact(stream: BinaryIO, size: int) -> bytes | None:
    """`size` bytes, or None if the pipe ends first."""
    data = stream.read(size)
    return data if len(data) == size else None


# The child's open stream. Held here for the life of the process: no return or exception
# unwinding a frame can then drop the last reference, whose destructor would complete it.
_KEPT_OPEN: list[Any] = []


def _upload(root_uri: str, options: dict[str, Any], path: str) -> int:
    """Copy frames from standard input into the object; the exit code (0 once completed)."""
    from batch_pipeline.core.storage_uri import RemoteLocation, filesystem_for

    # The store takes a part inside a write (and opens the upload first); meanwhile a thread
    # takes the next frames off the pipe, so the writer runs on instead of waiting for it.
    frames: queue.Queue[bytes | int | None] = queue.Queue(maxsize=FRAMES_AHEAD)
    reader = threading.Thread(target=_read_frames, args=(sys.stdin.buffer, frames), daemon=True)
    reader.start()
    filesystem = filesystem_for(RemoteLocation.parse(root_uri), options)
    _KEPT_OPEN.append(filesystem.open_output_stream(path))
    received = 0
    while isinstance(frame := frames.get(), bytes):
        _KEPT_OPEN[0].write(frame)
        received += len(frame)
    if frame is None:
        return 3  # the parent is gone, or sent a frame cut short: abandon
    if frame != received:
        return 4  # a commit that does not match what came: abandon
    _KEPT_OPEN[0].close()  # completes the upload
    return 0


def _read_frames(source: BinaryIO, frames: queue.Queue[bytes | int | None]) -> None:
    """Put each frame's bytes into `frames`, then the commit's total length (an int), or
    None if the pipe ends first. An error here ends the child as one in the upload does."""
    try:
        _read_into(source, frames)
    except BaseException as error:
        _report(error)
        os._exit(3)


def _read_into(source: BinaryIO, frames: queue.Queue[bytes | int | None]) -> None:
    while (header := _read_exact(source, _HEADER.size)) is not None:
        (size,) = _HEADER.unpack(header)
        if size == 0:
            total = _read_exact(source, _HEADER.size)
            frames.put(None if total is None else _HEADER.unpack(total)[0])
            return
        data = _read_exact(source, size)
        if data is None:
            break
        frames.put(data)
    frames.put(None)


def main(argv: list[str]) -> None:
    """The child. It ends with `os._exit` whatever happens, which runs no destructor: an
    upload not completed by `_upload` stays unfinished. An interrupt is the parent's to act
    on (a terminal's Ctrl-C reaches both); the parent then kills this process."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    code = 1
    try:
        code = _upload(argv[0], json.loads(argv[1]), argv[2])
    except BaseException as error:  # reported on one line, then abandoned
        _report(error)
    finally:
        os._exit(code)


def _report(error: BaseException) -> None:
    """The error on one line of the error stream, if anyone still reads it."""
    with contextlib.suppress(BaseException):
        from batch_pipeline.core.storage_uri import describe

        sys.stderr.write(describe(error) + "\n")
        sys.stderr.flush()


if __name__ == "__main__":
    main(sys.argv[1:])
