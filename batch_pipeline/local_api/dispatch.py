"""Answering a running batch's requests.

CPU work (reading, parsing and answering a chunk of a few thousand lines with the echo
responder, writing its result lines) runs in the engine's thread pool, so neither the HTTP
server nor other batches wait for it; with an answer pool, in a worker process, which reads
its chunk from the input file itself and hands back the chunk's lines joined per file.
Requests that must wait (`<<slow:S>>`, every request of the proxy responder) become asyncio
tasks on the engine's loop; `<<hang>>` requests are only counted.
"""

from __future__ import annotations

import asyncio
import logging
import random
import secrets
from collections.abc import Container
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import orjson

from batch_pipeline.local_api.answers import (
    Answer,
    Responder,
    UpstreamUnavailable,
    responder_failure,
)
from batch_pipeline.local_api.batch_run import BatchRun
from batch_pipeline.local_api.errors import fault_error_body
from batch_pipeline.local_api.faults import Fault, detect_fault
from batch_pipeline.local_api.partial_results import InputReader, recovered_ids
from batch_pipeline.local_api.result_lines import (
    UPSTREAM_UNAVAILABLE_CODE,
    Result,
    ResultBlock,
    answer_result,
    error_result,
    result_block,
)
from batch_pipeline.local_api.upstream import Withdrawn

log = logging.getLogger(__name__)

Deferred = tuple[str, dict[str, Any], Fault | None]  # custom_id, body, fault
Answered = tuple[list[Result], list[Deferred]]


class ChunkTask(NamedTuple):
    """A chunk of a batch's input to answer (plain values: it may go to a worker process)."""

    path: str  # the batch's input file
    offset: int  # where the chunk's first line starts
    size: int  # lines at most
    endpoint: str
    prefix: str  # makes the lines' ids
    order: str  # seeds the order of the chunk's result lines
    done_path: str | None  # names the requests done before this run, skipped (None: none)


class ChunkAnswers(NamedTuple):
    """A chunk answered: where the next one starts, whether the input is done, the result
    lines of the requests answered at once, and the requests that must wait."""

    offset: int
    eof: bool
    block: ResultBlock
    deferred: list[Deferred]


class ChunkAnswerer(Protocol):
    """Answers chunks elsewhere (answer_pool.AnswerPool: in worker processes)."""

    def answer_chunk(self, task: ChunkTask) -> ChunkAnswers: ...


@dataclass
class ChunkOutcome:
    """What answering a chunk left: whether the input is done, and the requests to await."""

    eof: bool
    deferred: list[Deferred]


class Dispatcher:
    """Hands a batch's requests to the responder, a chunk at a time."""

    def __init__(
        self,
        responder: Responder,
        *,
        chunk_size: int,
        triggers_faults: bool,
        pool: ChunkAnswerer | None = None,
    ) -> None:
        self.responder = responder
        self.chunk_size = chunk_size
        self.triggers_faults = triggers_faults
        self.pool = pool  # worker processes answering in this one's place (echo only)

    def work_chunk(self, run: BatchRun, endpoint: str) -> ChunkOutcome:
        """Answer and record the batch's next chunk of requests (runs in the thread pool;
        the answering itself in a worker process when the engine has an answer pool)."""
        assert run.input_path is not None and run.partial is not None
        task = ChunkTask(
            str(run.input_path),
            run.offset,
            self.chunk_size,
            endpoint,
            secrets.token_hex(10),
            f"{run.batch_id}:{run.chunks}",
            run.partial.recovered_path,
        )
        answers = (self.pool or self).answer_chunk(task)
        run.chunks += 1
        run.offset = answers.offset
        run.partial.add_block(answers.block)
        return ChunkOutcome(answers.eof, answers.deferred)

    def answer_chunk(self, task: ChunkTask) -> ChunkAnswers:
        """Read and answer one chunk of a batch's input (here or in a worker process)."""
        reader = InputReader(Path(task.path), task.offset)
        try:
            raws = reader.next_chunk(task.size)
            offset, eof = reader.offset, reader.eof
        finally:
            reader.close()
        results, deferred = self.answer(
            task.endpoint, raws, task.prefix, recovered_ids(task.done_path)
        )
        # Lines come out deliberately not in input order (as with OpenAI): join on custom_id.
        random.Random(task.order).shuffle(results)
        return ChunkAnswers(offset, eof, result_block(results), deferred)

    def answer(
        self, endpoint: str, raws: list[bytes], prefix: str, done: Container[str] = ()
    ) -> Answered:
        """The results of the request lines that can be answered at once, and the requests
        that must wait; requests in `done` are skipped. `prefix` makes the lines' ids."""
        results: list[Result] = []
        deferred: list[Deferred] = []
        for index, raw in enumerate(raws):
            request = orjson.loads(raw)
            custom_id = request["custom_id"]
            if custom_id in done:
                continue
            body = request["body"]
            result = self._answer_now(endpoint, custom_id, body, raw, f"{prefix}{index:06x}")
            if isinstance(result, Result):
                results.append(result)
            else:
                deferred.append((custom_id, body, result))
        return results, deferred

    def _answer_now(
        self, endpoint: str, custom_id: str, body: dict[str, Any], raw: bytes, key: str
    ) -> Result | Fault | None:
        """A request's result if it can be had at once, else the fault (or None) it is to be
        answered later with."""
        fault = detect_fault(endpoint, body, raw) if self.triggers_faults else None
        if fault is None:
            if self.responder.is_async:
                return None
            return answer_result(custom_id, *self._respond(endpoint, body, key), key)
        if fault.kind == "fail":
            return answer_result(custom_id, fault.status, fault_error_body(fault.status), key)
        return fault

    def _respond(self, endpoint: str, body: dict[str, Any], key: str) -> Answer:
        try:
            return self.responder.respond(endpoint, body, key)
        except Exception as exc:
            log.exception("the responder failed on a request")
            return responder_failure(exc)

    def defer(self, run: BatchRun, endpoint: str, deferred: list[Deferred]) -> None:
        """Start a task for each request that must wait (a hanging one is only counted)."""
        loop = asyncio.get_running_loop()
        for custom_id, body, fault in deferred:
            if fault is not None and fault.kind == "hang":
                run.hanging += 1
                continue
            task = loop.create_task(self._respond_later(run, endpoint, custom_id, body, fault))
            run.tasks.add(task)
            task.add_done_callback(run.tasks.discard)

    async def _respond_later(
        self,
        run: BatchRun,
        endpoint: str,
        custom_id: str,
        body: dict[str, Any],
        fault: Fault | None,
    ) -> None:
        if fault is not None and fault.kind == "slow":
            await asyncio.sleep(fault.seconds)
        key = secrets.token_hex(13)
        try:
            status, answer, request_id = await self.responder.respond_async(
                endpoint, body, run.flight
            )
            result = answer_result(custom_id, status, answer, key, request_id)
        except asyncio.CancelledError:
            raise
        except Withdrawn:
            return  # its batch stopped: it is listed with the requests not done
        except UpstreamUnavailable as exc:
            result = error_result(custom_id, UPSTREAM_UNAVAILABLE_CODE, str(exc), key)
        except Exception as exc:
            log.exception("the responder failed on a request")
            result = answer_result(custom_id, *responder_failure(exc), key)
        assert run.partial is not None
        run.partial.add([result])
