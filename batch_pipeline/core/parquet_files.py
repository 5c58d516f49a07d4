"""Parquet files of a storage root, written and read only through its interface."""

from __future__ import annotations

import contextlib

import pyarrow as pa
import pyarrow.parquet as pq

from batch_pipeline.core.outcomes import PARQUET_COMPRESSION, dictionary_columns
from batch_pipeline.core.storage import StorageRoot

# The answers' long texts: no reader selects rows by a range of them, so their min/max
# statistics (a comparison of every value on write, two long values kept per page) serve no
# query.
UNRANGED_COLUMNS = frozenset({"response_text", "response_json"})


class _Aborted(Exception):
    """Thrown into the storage's atomic write to make it drop the unfinished file."""


class AtomicParquetFile:
    """A Parquet file streamed into `storage.atomic_write(key)`: it appears under `key` on
    commit, and a crash or an exception leaves the old file (or none), never half a file.

    As a context manager it commits on success and aborts on an exception. `streamed`: a large
    file, whose bytes an object store takes while it is written (see `StorageRoot.atomic_write`).
    """

    def __init__(
        self,
        storage: StorageRoot,
        key: str,
        schema: pa.Schema,
        compression: str = PARQUET_COMPRESSION,
        *,
        streamed: bool = False,
    ) -> None:
        self.storage = storage
        self.key = key
        self._closed = False
        self._stack = contextlib.ExitStack()
        with contextlib.ExitStack() as on_failure:
            on_failure.push(self._stack)
            sink = self._stack.enter_context(storage.atomic_write(key, streamed=streamed))
            self._writer = pq.ParquetWriter(
                sink,
                schema,
                compression=compression,
                use_dictionary=dictionary_columns(schema),
                write_statistics=[name for name in schema.names if name not in UNRANGED_COLUMNS],
            )
            on_failure.pop_all()

    def write(self, data: pa.RecordBatch | pa.Table) -> None:
        if self._closed:
            raise ValueError(f"{self.key}: the writer is already closed")
        if isinstance(data, pa.RecordBatch):
            self._writer.write_batch(data)
        else:
            self._writer.write_table(data)

    def commit(self) -> None:
        """Finish the file and publish it under `key`."""
        self._close(None)

    def abort(self) -> None:
        """Drop the unfinished file (a no-op after `commit`); `key` is left as it was."""
        self._close(_Aborted())

    def _close(self, failure: BaseException | None) -> None:
        """Close the writer, then end the storage's atomic write: it publishes the file unless
        there is a `failure` (given, or the writer's own)."""
        if self._closed:
            return
        self._closed = True
        try:
            self._writer.close()
        except BaseException as exc:
            failure = failure or exc
            raise
        finally:
            if failure is None:
                self._stack.close()
            else:
                self._stack.__exit__(type(failure), failure, failure.__traceback__)

    def __enter__(self) -> AtomicParquetFile:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        self._close(None if exc_type is None else _Aborted())


def read_parquet(storage: StorageRoot, key: str, columns: list[str] | None = None) -> pa.Table:
    """A stored Parquet file, whole (or some of its columns)."""
    with storage.open_read(key) as handle:
        return pq.ParquetFile(handle).read(columns=columns)


def read_parquet_schema(storage: StorageRoot, key: str) -> pa.Schema:
    """A stored Parquet file's columns, read from its footer alone."""
    with storage.open_read(key) as handle:
        return pq.ParquetFile(handle).schema_arrow
