"""JSON-lines files read in chunks of whole lines, and a chunk's lines as one Arrow array.

The column-wise readers (outcome files, request shards) work on chunks of about a given size
that never split a line, and look at every line at once through an Arrow binary array over
the chunk's own bytes (no copy).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, Protocol

import numpy as np
import pyarrow as pa


class Openable(Protocol):
    """A file that is not a local path (one of a storage root), named by `str()`."""

    def open(self) -> BinaryIO: ...


LineSource = Path | str | Openable


def open_binary(source: LineSource) -> BinaryIO:
    """A local path or a stored file, opened for reading bytes."""
    if isinstance(source, str | os.PathLike):
        return Path(source).open("rb")
    return source.open()


def read_line_chunks(source: LineSource, chunk_bytes: int) -> Iterator[bytearray]:
    """The file in chunks of about `chunk_bytes`, each ending at the end of a line.

    Each chunk is read into a buffer of its own, then grown in place by the rest of the line
    the read stopped in: joining the two as bytes would copy every chunk once more. The caller
    may keep a chunk; none is written to again.
    """
    with open_binary(source) as handle:
        while True:
            chunk = bytearray(chunk_bytes)
            read = handle.readinto(chunk)
            if not read:
                return
            if read < chunk_bytes:
                del chunk[read:]
            chunk += handle.readline()  # up to the end of the line the read stopped in
            yield chunk


def line_ends(chunk: bytes | bytearray) -> np.ndarray:
    """The positions of the chunk's newlines."""
    return np.flatnonzero(np.frombuffer(chunk, np.uint8) == ord("\n"))


def line_array(chunk: bytes | bytearray, ends: np.ndarray) -> pa.BinaryArray:
    """The chunk's lines, each with its newline, as a binary array over the chunk's bytes;
    `ends` are the newline positions (`line_ends`), the last one the chunk's last byte."""
    offsets = np.r_[0, ends + 1].astype(np.int32)
    return pa.Array.from_buffers(
        pa.binary(), len(ends), [None, pa.py_buffer(offsets), pa.py_buffer(chunk)]
    )
