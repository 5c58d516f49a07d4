"""Answering echo requests on every core: a pool of worker processes.

The echo responder's work (parsing each request line, counting its tokens exactly, writing
its answer and result line) is pure CPU in Python, so threads share one core. With
`workers` > 1 the engine hands each chunk to one of `workers` processes: the worker reads
the chunk's lines from the input file itself and sends back its result lines joined per
file, so that the engine's process only schedules chunks and keeps what must stay in one
place (appending to the partial files, the batch records).
"""

from __future__ import annotations

import multiprocessing
import signal
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from typing import Any, TypeVar

from batch_pipeline.local_api.dispatch import ChunkAnswers, ChunkTask, Dispatcher
from batch_pipeline.local_api.echo import EchoResponder

T = TypeVar("T")

# The dispatcher of a worker process, made on its first chunk (its tokenizers load once).
_dispatchers: dict[bool, Dispatcher] = {}


def _answer_chunk(task: ChunkTask, triggers_faults: bool) -> ChunkAnswers:
    """In a worker: answer a chunk with this process's own echo responder."""
    dispatcher = _dispatchers.get(triggers_faults)
    if dispatcher is None:
        dispatcher = Dispatcher(EchoResponder(), chunk_size=0, triggers_faults=triggers_faults)
        _dispatchers[triggers_faults] = dispatcher
    return dispatcher.answer_chunk(task)


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

    def __init__(self, workers: int, triggers_faults: bool) -> None:
        self.workers = workers
        self.triggers_faults = triggers_faults
        self._executor = ProcessPoolExecutor(
            workers, mp_context=multiprocessing.get_context("spawn"), initializer=_start_worker
        )
        for _ in range(workers):
            self._executor.submit(_warm)

    def answer_chunk(self, task: ChunkTask) -> ChunkAnswers:
        """Have a worker answer a chunk (as `Dispatcher.answer_chunk`); waits for it."""
        return self._executor.submit(_answer_chunk, task, self.triggers_faults).result()

    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """`fn(...)` in a worker (a module-level function, picklable arguments); waits."""
        return self._executor.submit(fn, *args, **kwargs).result()

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)
