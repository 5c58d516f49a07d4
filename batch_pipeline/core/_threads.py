"""The core's background threads: an ordered worker with a bounded backlog, and one shared pool
for data-parallel slices.

The core's heavy work (Parquet and JSON decoding, Arrow kernels, compression, disk writes,
hashing) is native code that releases the GIL, so a thread beside the main one keeps a second
core busy. Every background thread of the core is made here.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from functools import lru_cache
from types import TracebackType
from typing import Any, TypeVar

T = TypeVar("T")
R = TypeVar("R")

POOL_THREADS = min(4, os.cpu_count() or 1)


class SerialWorker:
    """Runs tasks one at a time, in the order given, on one thread of its own.

    At most `capacity` weight of tasks is queued (each weighs 1 unless told): `submit` first
    waits for the oldest ones until the new task fits, which bounds the memory they hold. A
    task's failure is raised by whichever wait meets it first (`submit`, `wait`, `drain`,
    `take`); with `stop_on_failure`, tasks after a failure are not run but fail in turn.
    Waiting is done by the thread that submits.
    """

    def __init__(self, name: str, *, capacity: int = 1, stop_on_failure: bool = True) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        self._queued: deque[tuple[Future[Any], int]] = deque()
        self._weight = 0
        self._capacity = capacity
        self._stop_on_failure = stop_on_failure
        self.failed: BaseException | None = None

    def submit(self, task: Callable[..., R], *args: Any, weight: int = 1) -> Future[R]:
        """Queue `task(*args)` once the backlog leaves room for `weight`."""
        self.wait(self._capacity - weight)
        future = self._executor.submit(self._guarded, task, *args)
        self._queued.append((future, weight))
        self._weight += weight
        return future

    def wait(self, limit: int) -> None:
        """Wait for the oldest tasks until at most `limit` weight is queued."""
        while self._queued and self._weight > limit:
            self.take()

    def drain(self) -> None:
        """Wait for every queued task."""
        while self._queued:
            self.take()

    def take(self) -> Any:
        """Wait for the oldest queued task and give its result."""
        future, weight = self._queued.popleft()
        self._weight -= weight
        return future.result()

    def settle(self) -> None:
        """Wait for every queued task, ignoring their failures (after one has been raised)."""
        while self._queued:
            self._queued.popleft()[0].exception()
        self._weight = 0

    def cancel(self) -> None:
        """Cancel the queued tasks not yet started, and forget all queued tasks."""
        for future, _ in self._queued:
            future.cancel()
        self._queued.clear()
        self._weight = 0

    def call(self, task: Callable[..., R], *args: Any) -> R:
        """Run `task(*args)` on the thread after what it has started, whatever failed before,
        and give its result."""
        return self._executor.submit(task, *args).result()

    def fail(self, exc: BaseException) -> None:
        """Refuse the tasks from now on (with `stop_on_failure`), as after a failed one."""
        self.failed = self.failed or exc

    def shutdown(self, *, cancel: bool = False) -> None:
        """Stop the thread once it is idle (`cancel`: dropping the tasks not started)."""
        if cancel:
            self.cancel()
        self._executor.shutdown(cancel_futures=cancel)

    def _guarded(self, task: Callable[..., R], *args: Any) -> R:
        if self._stop_on_failure and self.failed is not None:
            raise RuntimeError("an earlier task of this worker failed") from self.failed
        try:
            return task(*args)
        except BaseException as exc:
            if self._stop_on_failure:  # else kept only by its future, until it is taken
                self.fail(exc)
            raise


_END = object()


class Prefetch(Iterator[T]):
    """The items of an iterator, produced on a `SerialWorker` up to `depth + 1` ahead of their
    use (the producing one included), in order; an error of the iterator is raised where its
    item would have come. `close` stops the thread after the item it is producing and closes
    the iterator on that thread."""

    def __init__(self, items: Iterable[T], *, depth: int, name: str) -> None:
        self._items = iter(items)
        self._ahead = depth + 1
        self._worker = SerialWorker(name, capacity=self._ahead)
        self._closed = False
        for _ in range(self._ahead):
            self._worker.submit(next, self._items, _END)

    def __next__(self) -> T:
        if self._closed:
            raise StopIteration
        item = self._worker.take()
        if item is _END:
            raise StopIteration
        self._worker.submit(next, self._items, _END)
        return item  # type: ignore[no-any-return]

    def close(self) -> None:
        """Stop producing and close the iterator; items not taken are dropped."""
        if self._closed:
            return
        self._closed = True
        self._worker.cancel()
        close = getattr(self._items, "close", None)
        if close is not None:
            self._worker.call(close)
        self._worker.shutdown()

    def __enter__(self) -> Prefetch[T]:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


@lru_cache(maxsize=1)
def _pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=POOL_THREADS, thread_name_prefix="kernels")


def pool_submit(function: Callable[..., R], *args: Any) -> Future[R]:
    """Run `function(*args)` on one of the shared pool's threads."""
    return _pool().submit(function, *args)


def parallel_map(function: Callable[[T], R], items: Iterable[T]) -> list[R]:
    """`function` of each item, run on the shared pool's threads, in the items' order."""
    return list(_pool().map(function, items))
