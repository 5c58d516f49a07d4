"""Answering echo requests on every core: a pool of worker processes.

The echo responder's work (parsing each request line, counting its tokens exactly, writing
its answer and result line) is pure CPU in Python, so threads share one core. With
`workers` > 1 the engine hands each chunk of request lines to one of `workers` processes;
the engine's process keeps what must stay in one place (reading the input, skipping requests
already done, appending to the partial files, the batch records).
"""

from __future__ import annotations

import multiprocessing
import signal
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from typing import Any, TypeVar

from batch_pipeline.local_api.dispatch import Answered, Deferred, Dispatcher
from batch_pipeline.local_api.echo import EchoResponder
from batch_pipeline.local_api.result_lines import Result

T = TypeVar("T")

# The dispatcher of a worker process, made on its first chunk (its tokenizers load once).
_dispatchers: dict[bool, Dispatcher] = {}


# A Result as plain values: a list of tuples crosses between processes ten times faster
# than the objects themselves.
ResultValues = tuple[str, bytes, bool, bool, int, int]


def _answer(
    endpoint: str, raws: list[bytes], prefix: str, triggers_faults: bool
) -> tuple[list[ResultValues], list[Deferred]]:
    """In a worker: answer request lines with this process's own echo responder."""
    dispatcher = _dispatchers.get(triggers_faults)
    if dispatcher is None:
        dispatcher = Dispatcher(EchoResponder(), chunk_size=0, triggers_faults=triggers_faults)
        _dispatchers[triggers_faults] = dispatcher
    results, deferred = dispatcher.answer(endpoint, raws, prefix)
    values = [
        (r.custom_id, r.line, r.error_file, r.succeeded, r.input_tokens, r.output_tokens)
        for r in results
    ]
    return values, deferred


def _start_worker() -> None:
    """In a new worker: leave Ctrl-C to the service, which stops its workers itself (a
    terminal sends it to every process of the group)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _warm() -> None:
    """In a worker: load the tokenizer before the first batch comes (seconds, once)."""
    from batch_pipeline.core.tokens import default_encoding

    default_encoding()


class AnswerPool:
    """`workers` processes answering chunks of echo requests (started with `spawn`: the
    service's process runs threads, which a fork would copy mid-flight)."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self._executor = ProcessPoolExecutor(
            workers, mp_context=multiprocessing.get_context("spawn"), initializer=_start_worker
        )
        for _ in range(workers):
            self._executor.submit(_warm)

    def answer(
        self, endpoint: str, raws: list[bytes], prefix: str, triggers_faults: bool
    ) -> Answered:
        """Have a worker answer `raws` (as `Dispatcher.answer`); waits for it."""
        values, deferred = self._executor.submit(
            _answer, endpoint, raws, prefix, triggers_faults
        ).result()
        return [Result(*fields) for fields in values], deferred

    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """`fn(...)` in a worker (a module-level function, picklable arguments); waits."""
        return self._executor.submit(fn, *args, **kwargs).result()

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)
