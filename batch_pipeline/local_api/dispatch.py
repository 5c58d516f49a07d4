"""Answering a running batch's requests.

CPU work (reading, parsing and answering a chunk of a few thousand lines with the echo
responder, writing its result lines) runs in the engine's thread pool, so neither the HTTP
server nor other batches wait for it. Requests that must wait (`<<slow:S>>`, every request
of the proxy responder) become asyncio tasks on the engine's loop; `<<hang>>` requests are
only counted.
"""

from __future__ import annotations

import asyncio
import logging
import random
import secrets
from collections.abc import Container
from dataclasses import dataclass
from typing import Any, Protocol

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
from batch_pipeline.local_api.result_lines import (
    UPSTREAM_UNAVAILABLE_CODE,
    Result,
    answer_result,
    error_result,
)
from batch_pipeline.local_api.upstream import Withdrawn

log = logging.getLogger(__name__)

Deferred = tuple[str, dict[str, Any], Fault | None]  # custom_id, body, fault
Answered = tuple[list[Result], list[Deferred]]


class ChunkAnswerer(Protocol):
    """Answers request lines elsewhere (answer_pool.AnswerPool: in worker processes)."""

    def answer(
        self, endpoint: str, raws: list[bytes], prefix: str, triggers_faults: bool
    ) -> Answered: ...


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
        """Read, answer and record one chunk of requests (runs in the thread pool; the
        answering itself in a worker process when the engine has an answer pool)."""
        assert run.reader is not None and run.partial is not None
        raws = run.reader.next_chunk(self.chunk_size)
        prefix = secrets.token_hex(10)
        if self.pool is None:
            results, deferred = self.answer(endpoint, raws, prefix, run.partial.done)
        else:
            results, deferred = self.pool.answer(endpoint, raws, prefix, self.triggers_faults)
            done = run.partial.done  # results of done requests are dropped by `add`
            deferred = [request for request in deferred if request[0] not in done]
        # Lines come out deliberately not in input order (as with OpenAI): join on custom_id.
        random.Random(f"{run.batch_id}:{run.chunks}").shuffle(results)
        run.chunks += 1
        run.partial.add(results)
        return ChunkOutcome(run.reader.eof, deferred)

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
