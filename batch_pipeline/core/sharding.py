"""JSONL request shards within the Batch API's limits: a partition's build, and retry shards.

Where each file goes under the storage root is `layout`'s to say. Attempt 1 holds a
generation's build from the source; later attempts hold retry shards made from the original
lines (retries of one earlier shard keep its index and get their own manifest). Every file is
written atomically; a manifest (`manifest`) exists only once all the shards it lists do, so a
missing manifest means "not built".
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from functools import partial
from itertools import islice
from types import TracebackType
from typing import Any, BinaryIO

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from batch_pipeline.core._shard_ids import built_estimates, write_shard_ids
from batch_pipeline.core._threads import SerialWorker
from batch_pipeline.core.layout import (
    attempt_dir,
    manifest_path,
    rejected_path,
    shard_ids_path,
    shard_path,
)
from batch_pipeline.core.manifest import Manifest, write_manifest
from batch_pipeline.core.manifest import load_manifest as load_manifest  # read from here too
from batch_pipeline.core.partition import Partition, partition_key
from batch_pipeline.core.read_ahead import ReadAhead
from batch_pipeline.core.requests import REJECTED_SCHEMA, RequestBuilder, estimate_request_tokens
from batch_pipeline.core.sources import DEFAULT_BATCH_SIZE, Source, source_for
from batch_pipeline.core.spec import PipelineSpec
from batch_pipeline.core.storage import StorageRoot
from batch_pipeline.core.types import ShardInfo

FIRST_ATTEMPT = 1
RETRY_CHUNK = 4_096
MAX_IN_FLIGHT_BYTES = 64 * 1024 * 1024

RequestLine = tuple[str, bytes, int]  # (custom_id, line bytes ending in "\n", est. tokens)


def shard_id(pipeline: str, partition: str, generation: int, attempt: int, index: int) -> str:
    """A shard's identity, also carried in its provider batch's metadata."""
    return f"{pipeline}:{partition}:g{generation}:a{attempt}:s{index:05d}"


# -- shard writer -----------------------------------------------------------------------------


class _FileWorker:
    """Writes (and hashes) shard files on one background thread, in submission order, and
    closes them (fsync, rename) in order on another, so that disk writes, hashing and fsync
    overlap with building the next lines and with each other. At most `MAX_IN_FLIGHT_BYTES` of
    lines wait for it. After a failure it does nothing more (a later finish must not rename a
    file that missed a write into place); the failure surfaces on the caller's next wait.
    """

    def __init__(self, storage: StorageRoot) -> None:
        self._storage = storage
        self._writer = SerialWorker("shard-writer", capacity=MAX_IN_FLIGHT_BYTES)
        # A failed close stops the writer only: the files complete before it are still closed.
        self._closer = SerialWorker("shard-closer", capacity=2, stop_on_failure=False)
        self._shut = False
        # Used only on the writer thread (and, once it is idle, by close and abort):
        self._open: contextlib.ExitStack | None = None
        self._file: BinaryIO | None = None
        self._hash = hashlib.sha256()
        self._close_failed: BaseException | None = None

    def start(self, path: str) -> None:
        self._submit(0, self._start, path)

    def write(self, chunk: memoryview, owner: object) -> None:
        """Queue `chunk`; `owner` (the Arrow array it views) is kept alive until written."""
        self._submit(len(chunk), self._write, chunk, owner)

    def finish(self, then: Callable[[], None] | None = None) -> Future[str]:
        """Close and rename the open file, then run `then` (a companion file's write) on the
        closing thread; the future gives its sha256 once both are done."""
        sha256: Future[str] = Future()
        task = self._submit(0, self._finish, sha256, then)
        task.add_done_callback(lambda task: _pass_on_failure(task, sha256))
        return sha256

    def close(self) -> None:
        """Wait for every queued write and close; on a failure, remove the open file and
        re-raise."""
        if self._shut:
            return
        try:
            self._surfacing(self._writer.drain)
            self._closer.drain()
        except BaseException as exc:
            self.abort(type(exc), exc, exc.__traceback__)
            raise
        self._shutdown()

    def abort(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Drop what is queued and remove the open file's temporary."""
        if self._shut:
            return
        self._writer.cancel()
        self._writer.call(self._abort, exc_type, exc, traceback)
        self._closer.settle()  # files already complete: closed (or removed on failure)
        self._shutdown()

    def _shutdown(self) -> None:
        self._writer.shutdown()
        self._closer.shutdown()
        self._shut = True

    def _submit(self, size: int, task: Callable[..., Any], *args: Any) -> Future[Any]:
        return self._surfacing(lambda: self._writer.submit(task, *args, weight=size))

    def _surfacing(self, wait: Callable[[], Any]) -> Any:
        """`wait()` on the writer, raising a failed close first (the failure to see)."""
        try:
            return wait()
        except BaseException:
            if self._close_failed is not None:
                raise self._close_failed from None
            raise

    def _start(self, path: str) -> None:
        self._open = contextlib.ExitStack()
        self._file = self._open.enter_context(self._storage.atomic_write(path))
        self._hash = hashlib.sha256()

    def _write(self, chunk: memoryview, owner: object) -> None:
        assert self._file is not None
        self._file.write(chunk)
        self._hash.update(chunk)

    def _finish(self, sha256: Future[str], then: Callable[[], None] | None) -> None:
        assert self._open is not None
        self._closer.wait(1)  # at most two complete files wait to be closed
        stack, self._open, self._file = self._open, None, None
        self._closer.submit(self._close, stack, self._hash.hexdigest(), sha256, then)

    def _close(
        self,
        stack: contextlib.ExitStack,
        digest: str,
        sha256: Future[str],
        then: Callable[[], None] | None,
    ) -> None:
        """On the closing thread: flush, fsync and rename (or upload) a complete file into
        place, then write its companion file."""
        try:
            stack.close()
            if then is not None:
                then()
        except BaseException as exc:
            self._close_failed = exc
            self._writer.fail(exc)
            sha256.set_exception(exc)
            raise
        sha256.set_result(digest)

    def _abort(self, *exc_info: Any) -> None:
        if self._open is not None:
            self._open.__exit__(*exc_info)
            self._open = self._file = None


def _pass_on_failure(task: Future[Any], sha256: Future[str]) -> None:
    """Fail (or cancel) a file's sha256 future if the task that was to close the file did."""
    if task.cancelled():
        sha256.cancel()
    elif task.exception() is not None and not sha256.done():
        sha256.set_exception(task.exception())  # type: ignore[arg-type]


@dataclass(frozen=True)
class _Closed:
    """A shard handed to the worker to finish: its figures, and its sha256 to come."""

    index: int
    rows: int
    bytes: int
    tokens: int
    sha256: Future[str]


class ShardWriter:
    """Cuts a stream of request lines into shards within the spec's limits.

    A shard closes before it would pass `limits.max_requests_per_file`,
    `limits.max_bytes_per_file`, or the enqueued-token budget `limits.enqueued_tokens`
    (a shard above the budget could never be enqueued; a single request above it goes alone).
    With `one_shard` every line goes into one shard whatever the limits: the retry rows of
    one shard met the limits it was built under, and a second shard would take the index of
    the next shard's retries. Lines go straight from Arrow's buffers to the files, hashed as
    they are written, on a background thread. Use as a context manager: `shards` is complete
    once the block ends; on an error the open shard's temporary file is removed.
    """

    def __init__(
        self,
        spec: PipelineSpec,
        storage: StorageRoot,
        partition: str,
        generation: int,
        attempt: int,
        *,
        first_index: int = 0,
        one_shard: bool = False,
    ) -> None:
        self.spec = spec
        self.storage = storage
        self.partition = partition
        self.generation = generation
        self.attempt = attempt
        self.first_index = first_index
        self.one_shard = one_shard
        self.max_rows = spec.limits.max_requests_per_file
        self.max_bytes = spec.limits.max_bytes_per_file
        self.max_tokens = spec.limits.enqueued_tokens
        self.shards: list[ShardInfo] = []
        self._worker = _FileWorker(storage)
        self._closed: list[_Closed] = []
        self._is_open = False
        self._rows = self._bytes = self._tokens = 0
        self._ids: list[pa.Array | pa.ChunkedArray] = []  # of the open shard
        self._line_tokens: list[np.ndarray] = []  # of the open shard

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self._worker.abort(exc_type, exc, traceback)

    def add(
        self,
        custom_ids: pa.Array,
        lines: pa.Array | pa.ChunkedArray,
        estimated_tokens: np.ndarray,
    ) -> None:
        """Append requests (lines ending in "\\n", binary) to the shards."""
        if isinstance(lines, pa.ChunkedArray):
            start = 0
            for chunk in lines.chunks:
                end = start + len(chunk)
                self.add(custom_ids[start:end], chunk, estimated_tokens[start:end])
                start = end
            return
        count = len(lines)
        if count == 0:
            return
        lines = lines.cast(pa.large_binary())
        offsets = np.frombuffer(lines.buffers()[1], dtype=np.int64)[
            lines.offset : lines.offset + count + 1
        ]
        data = memoryview(lines.buffers()[2])
        sizes = np.diff(offsets)
        too_big = np.flatnonzero(sizes > self.max_bytes)
        if too_big.size and not self.one_shard:
            raise ValueError(
                f"request {custom_ids[int(too_big[0])].as_py()} is {int(sizes[too_big[0]])} "
                f"bytes, more than limits.max_bytes_per_file ({self.max_bytes})"
            )
        tokens = np.asarray(estimated_tokens, dtype=np.int64)
        end_bytes, end_tokens = np.cumsum(sizes), np.cumsum(tokens)
        position = 0
        while position < count:
            if not self._is_open:
                self._start()
            taken = self._fitting(position, end_bytes, end_tokens)
            if taken == 0:
                self._finish()
                continue
            chunk = data[offsets[position] : offsets[position + taken]]
            self._worker.write(chunk, lines)
            self._ids.append(custom_ids.slice(position, taken))
            self._line_tokens.append(tokens[position : position + taken])
            self._rows += taken
            self._bytes += len(chunk)
            self._tokens += int(tokens[position : position + taken].sum())
            position += taken
            if position < count:  # stopped by a limit: this shard is full
                self._finish()

    def close(self) -> list[ShardInfo]:
        """Finish the open shard and wait for the files; the shards written, in order."""
        if self._is_open:
            self._finish()
        self._worker.close()
        self.shards = [self._info(closed) for closed in self._closed]
        return self.shards

    def _fitting(self, position: int, end_bytes: np.ndarray, end_tokens: np.ndarray) -> int:
        """How many lines from `position` the open shard can still take."""
        count = len(end_bytes)
        if self.one_shard:
            return count - position
        room = min(count - position, self.max_rows - self._rows)
        before_bytes = int(end_bytes[position - 1]) if position else 0
        fits_bytes = np.searchsorted(
            end_bytes, before_bytes + self.max_bytes - self._bytes, side="right"
        )
        room = min(room, int(fits_bytes) - position)
        if self.max_tokens is not None:
            before_tokens = int(end_tokens[position - 1]) if position else 0
            fits_tokens = np.searchsorted(
                end_tokens, before_tokens + self.max_tokens - self._tokens, side="right"
            )
            room = min(room, int(fits_tokens) - position)
            if room <= 0 and self._rows == 0:
                return 1  # one request above the token budget: alone in its shard
        return max(room, 0)

    @property
    def _next_index(self) -> int:
        return self.first_index + len(self._closed)

    def _start(self) -> None:
        self._worker.start(
            shard_path(self.partition, self.generation, self.attempt, self._next_index)
        )
        self._is_open = True
        self._rows = self._bytes = self._tokens = 0
        self._ids = []
        self._line_tokens = []

    def _finish(self) -> None:
        path = shard_path(self.partition, self.generation, self.attempt, self._next_index)
        # Written on the closing thread, so that on an object store the build goes on while
        # it is uploaded (the manifest, written once every shard is closed, follows it).
        write_ids = partial(_write_ids_file, self.storage, path, self._ids, self._line_tokens)
        closed = _Closed(
            self._next_index, self._rows, self._bytes, self._tokens, self._worker.finish(write_ids)
        )
        self._closed.append(closed)
        self._is_open = False

    def _info(self, closed: _Closed) -> ShardInfo:
        request = self.spec.request
        return ShardInfo(
            shard_id=shard_id(
                self.spec.name, self.partition, self.generation, self.attempt, closed.index
            ),
            pipeline=self.spec.name,
            partition=self.partition,
            generation=self.generation,
            attempt=self.attempt,
            index=closed.index,
            path=shard_path(self.partition, self.generation, self.attempt, closed.index),
            rows=closed.rows,
            bytes=closed.bytes,
            sha256=closed.sha256.result(),
            estimated_input_tokens=closed.tokens,
            model=request.model,
            endpoint=request.endpoint.value,
        )


def _write_ids_file(
    storage: StorageRoot,
    path: str,
    custom_ids: list[pa.Array | pa.ChunkedArray],
    tokens: list[np.ndarray],
) -> None:
    """The ids file beside the shard at `path`. Not flushed to disk: a file lost (or cut
    short) in a crash only means a rescan."""
    with storage.atomic_write(shard_ids_path(path), durable=False) as handle:
        write_shard_ids(handle, custom_ids, tokens)


class _RejectedWriter:
    """Streams rejected rows into one Parquet file, written atomically (empty if none)."""

    def __init__(self, storage: StorageRoot, path: str) -> None:
        self._stack = contextlib.ExitStack()
        target = self._stack.enter_context(storage.atomic_write(path))
        self._writer = self._stack.enter_context(pq.ParquetWriter(target, REJECTED_SCHEMA))
        self.rows = 0

    def __enter__(self) -> _RejectedWriter:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self._stack.__exit__(*exc_info)

    def write(self, table: pa.Table) -> None:
        if table.num_rows:
            self._writer.write_table(table)
            self.rows += table.num_rows


# -- the requests stage -----------------------------------------------------------------------


def build_partition_requests(
    spec: PipelineSpec,
    day: str | Partition,
    storage: StorageRoot,
    *,
    generation: int,
    source: Source | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    heartbeat: Callable[[], None] = lambda: None,
) -> Manifest:
    """Read a partition's source rows, build and check their requests, and write the shards,
    the rejected rows and (last) the manifest of attempt 1 of `generation`.

    `source` is where the rows come from (default: `source_for(spec)`). A rebuild of the same
    generation replaces that attempt's files. `heartbeat` is called after each source batch
    (to keep a claim on the build alive; it raises to stop it).
    """
    day = spec.partitioning.of(day)
    partition = day.key
    source = source or source_for(spec)
    builder = RequestBuilder(spec)
    builder.check_schema(source.schema())
    storage.delete_tree(attempt_dir(partition, generation, FIRST_ATTEMPT))
    source_rows = 0
    with (
        ShardWriter(spec, storage, partition, generation, FIRST_ATTEMPT) as shards,
        _RejectedWriter(storage, rejected_path(partition, generation)) as rejected,
        ReadAhead(
            source.batches(
                day, batch_size=batch_size, columns=builder.columns, ties=builder.columns
            ),
            name="source-read-ahead",
        ) as batches,
    ):
        for batch in batches:
            built = builder.build(batch, day)
            shards.add(built.custom_ids, built.lines, built.estimated_input_tokens)
            rejected.write(built.rejected)
            source_rows += built.source_rows
            heartbeat()
    return write_manifest(
        spec,
        storage,
        manifest_path(partition, generation, FIRST_ATTEMPT),
        shards.shards,
        partition=partition,
        generation=generation,
        attempt=FIRST_ATTEMPT,
        source_rows=source_rows,
        rejected=rejected.rows,
        rows_without_day=source.count_rows_without_day(),
    )


def write_retry_shards(
    spec: PipelineSpec,
    storage: StorageRoot,
    partition: str | Partition,
    generation: int,
    attempt: int,
    lines: Iterable[RequestLine],
    *,
    first_index: int | None = None,
) -> Manifest:
    """Write retry shards (attempt 2 onwards) from request lines, within the same limits as
    the first build, then their manifest.

    Without `first_index` the lines are the whole attempt: shards count from 0 and the manifest
    is the attempt's `manifest.json`. With it, the lines come from one earlier shard (index
    `first_index`) and make one retry shard of that index, with its own manifest, so retries
    of different shards of one attempt never collide (even after the limits were lowered).
    A custom_id given twice is a ValueError. `partition` is one already built (its key as
    the ledger holds it), so it is not parsed again.
    """
    if attempt <= FIRST_ATTEMPT:
        raise ValueError(f"retry attempts start at {FIRST_ATTEMPT + 1}, not {attempt}")
    partition = partition_key(partition)
    seen: set[str] = set()
    iterator = iter(lines)
    writer = ShardWriter(
        spec,
        storage,
        partition,
        generation,
        attempt,
        first_index=first_index or 0,
        one_shard=first_index is not None,
    )
    with writer:
        while chunk := list(islice(iterator, RETRY_CHUNK)):
            custom_ids, data, tokens = zip(*chunk, strict=True)
            for custom_id in custom_ids:
                if custom_id in seen:
                    raise ValueError(f"request {custom_id} is given twice for one retry attempt")
                seen.add(custom_id)
            writer.add(
                pa.array(custom_ids, pa.string()),
                pa.array(
                    [line if line.endswith(b"\n") else line + b"\n" for line in data],
                    pa.large_binary(),
                ),
                np.asarray(tokens, dtype=np.int64),
            )
    return write_manifest(
        spec,
        storage,
        manifest_path(partition, generation, attempt, first_index),
        writer.shards,
        partition=partition,
        generation=generation,
        attempt=attempt,
        source_rows=len(seen),
        rejected=0,
    )


def iter_request_lines(
    storage: StorageRoot,
    shard_paths: Iterable[str],
    custom_ids: set[str] | frozenset[str] | None = None,
    *,
    exact_tokens: bool = False,
) -> Iterator[RequestLine]:
    """The lines of `custom_ids` (None: every line), re-read from the given shard files, with
    their input tokens: the input of `write_retry_shards`.

    The tokens are those the build figured, read from the ids file beside the shard; a line
    that file does not vouch for (a shard of an earlier version) is parsed and its tokens
    figured again (`exact_tokens`: counted, else estimated).
    """
    for path in shard_paths:
        built = built_estimates(storage, path)
        with storage.open_read(path) as shard:
            kept: list[_Kept] = []
            for index, line in enumerate(shard):
                item = _vouched(built, index, line) or _parsed(line)
                if custom_ids is None or item[0] in custom_ids:
                    kept.append(item)
                if len(kept) == RETRY_CHUNK:
                    yield from _with_tokens(kept, exact_tokens)
                    kept = []
            yield from _with_tokens(kept, exact_tokens)


# (custom_id, line, the parsed request if it had to be parsed, else the build's tokens)
_Kept = tuple[str, bytes, dict[str, Any] | int]


def _vouched(built: tuple[list[str], list[int]] | None, index: int, line: bytes) -> _Kept | None:
    """The line's custom_id and build tokens from the ids file, if it is that file's line
    `index` as the builder wrote it (it starts with its custom_id, which needs no escaping)."""
    if built is None or index >= len(built[0]):
        return None
    custom_id = built[0][index]
    if not line.startswith(b'{"custom_id":"' + custom_id.encode() + b'",'):
        return None
    return custom_id, line, built[1][index]


def _parsed(line: bytes) -> _Kept:
    request = orjson.loads(line)
    return request["custom_id"], line, request


def _with_tokens(kept: list[_Kept], exact: bool) -> Iterator[RequestLine]:
    """The kept lines with their tokens: the build's, else figured from the parsed request."""
    parsed = [request for _, _, request in kept if isinstance(request, dict)]
    figured = iter(estimate_request_tokens(parsed, exact=exact).tolist())
    for custom_id, line, known in kept:
        yield custom_id, line, next(figured) if isinstance(known, dict) else known
