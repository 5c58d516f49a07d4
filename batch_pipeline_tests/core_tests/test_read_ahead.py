"""The source batches of a build are read on a thread of their own, a bounded number ahead."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from batch_pipeline.core.read_ahead import ReadAhead


def test_items_come_in_order_and_all_of_them() -> None:
    with ReadAhead(range(1_000), depth=2) as items:
        assert list(items) == list(range(1_000))


def test_an_error_of_the_source_is_raised_where_its_item_would_have_come() -> None:
    def source() -> Iterator[int]:
        yield 1
        yield 2
        raise ValueError("row 3 is unreadable")

    taken = []
    with ReadAhead(source()) as items, pytest.raises(ValueError, match="row 3 is unreadable"):
        for item in items:
            taken.append(item)
    assert taken == [1, 2]


def test_the_source_runs_at_most_depth_items_ahead_of_its_reader() -> None:
    produced = []

    def source() -> Iterator[int]:
        for item in range(100):
            produced.append(item)
            yield item

    with ReadAhead(source(), depth=2) as items:
        iterator = iter(items)
        assert next(iterator) == 0
        time.sleep(0.2)  # time enough for the thread to run ahead as far as it may
        # one taken, two waiting, one made and waiting for room
        assert len(produced) <= 1 + 2 + 1


def test_leaving_early_stops_the_thread_and_closes_the_source() -> None:
    closed = threading.Event()

    def source() -> Iterator[int]:
        try:
            yield from range(1_000_000)
        finally:
            closed.set()

    before = threading.active_count()
    with ReadAhead(source(), name="read-ahead-test") as items:
        for item in items:
            if item == 3:
                break
    assert closed.is_set()
    assert threading.active_count() == before
    assert not any(t.name == "read-ahead-test" for t in threading.enumerate())
