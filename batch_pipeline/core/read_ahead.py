"""An iterator's items produced on a thread of their own, a bounded number ahead of their use.

Reading a source batch (Parquet decoding, a SQL fetch) and building its requests are both
mostly native work that releases the GIL, so reading the next batch while this one is built
keeps two cores busy. At most `depth` items wait, which bounds the memory they hold.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator
from types import TracebackType
from typing import Generic, TypeVar

T = TypeVar("T")

_ITEM, _END, _ERROR = "item", "end", "error"


class ReadAhead(Generic[T]):
    """Iterate `items` on a background thread; iterate this object for them, in order.

    An exception raised by `items` is raised here, where its item would have come. Use it
    as a context manager (or call `close`): leaving early stops the thread after the item
    it is producing, and closes `items` on that thread.
    """

    def __init__(self, items: Iterable[T], *, depth: int = 1, name: str = "read-ahead") -> None:
        self._queue: queue.Queue[tuple[str, object]] = queue.Queue(maxsize=max(depth, 1))
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._produce, args=(iter(items),), name=name, daemon=True
        )
        self._thread.start()

    def _produce(self, items: Iterator[T]) -> None:
        try:
            for item in items:
                self._queue.put((_ITEM, item))
                if self._stop.is_set():
                    return
            self._queue.put((_END, None))
        except BaseException as exc:  # handed to the consumer, which raises it
            self._queue.put((_ERROR, exc))
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()

    def __iter__(self) -> Iterator[T]:
        while True:
            kind, value = self._queue.get()
            if kind == _END:
                return
            if kind == _ERROR:
                assert isinstance(value, BaseException)
                raise value
            yield value  # type: ignore[misc]

    def close(self) -> None:
        """Stop the thread and wait for it; items not taken are dropped."""
        self._stop.set()
        while self._thread.is_alive():
            try:
                while True:  # make room, so a producer blocked on a full queue moves on
                    self._queue.get_nowait()
            except queue.Empty:
                pass
            self._thread.join(0.01)

    def __enter__(self) -> ReadAhead[T]:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
