"""An iterator's items produced on a thread of their own, a bounded number ahead of their use.

Reading a source batch (Parquet decoding, a SQL fetch) and building its requests are both
mostly native work that releases the GIL, so reading the next batch while this one is built
keeps two cores busy. At most `depth` items wait, which bounds the memory they hold.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TypeVar

from batch_pipeline.core._threads import Prefetch

T = TypeVar("T")


class ReadAhead(Prefetch[T]):
    """Iterate `items` on a background thread; iterate this object for them, in order.

    An exception raised by `items` is raised here, where its item would have come. Use it
    as a context manager (or call `close`): leaving early stops the thread after the item
    it is producing, and closes `items` on that thread.
    """

    def __init__(self, items: Iterable[T], *, depth: int = 1, name: str = "read-ahead") -> None:
        super().__init__(items, depth=depth, name=name)
