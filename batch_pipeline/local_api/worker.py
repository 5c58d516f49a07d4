"""Runs batches: validation, processing in chunks, lifecycle, expiry, cancel and recovery.

One background thread runs an asyncio loop with one task per unfinished batch. CPU work
(validation, parsing and answering a chunk of a few thousand lines with the echo
responder, writing its result lines) runs in a small thread pool, so neither the HTTP
server nor other batches wait for it. Requests that must wait (`<<slow:S>>`, every
request of the proxy responder) are asyncio tasks; `<<hang>>` requests are only counted.

Results are appended, chunk by chunk, to two partial files in the batch's work dir
(`output.partial.jsonl`: 2xx answers; `errors.partial.jsonl`: other answers, with their
bodies, and requests that got none, as OpenAI splits them). They are the truth about what
is done: after a restart they are read back (a torn last line is cut off), the
`custom_id`s in them are skipped, and the batch goes on. The request counts in the batch record are
refreshed in memory after each chunk and written to disk every `progress_interval_seconds`
(without fsync: the partial files, not these counts, are what a resumed batch goes by).

Lifecycle: validating -> in_progress -> finalizing -> completed; validating -> failed;
validating|in_progress -> cancelling -> cancelled; validating|in_progress -> expired when
the completion window passes. A batch that stops (cancel, expiry, the service stopping)
sends no more requests and waits up to `drain_seconds` for the answers of those already
sent upstream. On cancel or expiry, the requests not done go to the error file with code
`batch_cancelled` / `batch_expired`, and are counted as `failed`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import secrets
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import orjson

from batch_pipeline.local_api.errors import error_body, fault_error_body
from batch_pipeline.local_api.faults import Fault, detect_fault
from batch_pipeline.local_api.responders import Reply, UpstreamUnavailable
from batch_pipeline.local_api.settings import LocalApiSettings, default_expiry
from batch_pipeline.local_api.store import TERMINAL_STATUSES, Store
from batch_pipeline.local_api.upstream import Flight, Withdrawn
from batch_pipeline.local_api.validation import (
    ValidationResult,
    batch_error,
    read_lines,
    validate_input_file,
)

log = logging.getLogger(__name__)

OUTPUT_PARTIAL = "output.partial.jsonl"
ERRORS_PARTIAL = "errors.partial.jsonl"
EXPIRED_CODE = "batch_expired"
EXPIRED_MESSAGE = "This request could not be executed before the completion window expired."
CANCELLED_CODE = "batch_cancelled"
CANCELLED_MESSAGE = "This request was not executed because the batch was cancelled."
UPSTREAM_UNAVAILABLE_CODE = "upstream_unavailable"
_DUMPS_OPTIONS = orjson.OPT_APPEND_NEWLINE
CHUNK_MAX_BYTES = 4 * 1024 * 1024  # of input lines per chunk, bounding memory for big lines
# Longest wait for answers already asked for when the service stops: the engine's stop
# waits SHUTDOWN_WAIT_SECONDS for its batches, and the service's close a little longer.
SHUTDOWN_DRAIN_SECONDS = 15.0
SHUTDOWN_WAIT_SECONDS = SHUTDOWN_DRAIN_SECONDS + 5.0


class Responder(Protocol):
    """What the worker needs of a responder (see responders.py)."""

    is_async: bool

    def respond(self, endpoint: str, body: dict[str, Any], key: str | None = None) -> Any: ...

    async def respond_async(
        self, endpoint: str, body: dict[str, Any], flight: Flight | None = None
    ) -> Reply: ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...


# ---------------------------------------------------------------------------- result lines


@dataclass(slots=True)
class Result:
    """One finished request: its line and where it goes."""

    custom_id: str
    line: bytes
    error_file: bool
    succeeded: bool
    input_tokens: int = 0
    output_tokens: int = 0


def _usage(body: Any) -> tuple[int, int]:
    usage = body.get("usage") if isinstance(body, dict) else None
    if not isinstance(usage, dict):
        return 0, 0
    inp = usage.get("input_tokens", usage.get("prompt_tokens", 0))
    out = usage.get("output_tokens", usage.get("completion_tokens", 0))
    return (inp if isinstance(inp, int) else 0), (out if isinstance(out, int) else 0)


def answer_result(
    custom_id: str, status: int, body: dict[str, Any], key: str, request_id: str | None = None
) -> Result:
    """The line of a request that got an HTTP answer: in the output file if 2xx, else (with
    the error body) in the error file, as OpenAI does. `request_id`: the upstream's."""
    line = orjson.dumps(
        {
            "id": f"batch_req_{key}",
            "custom_id": custom_id,
            "response": {
                "status_code": status,
                "request_id": request_id or f"req_{key}",
                "body": body,
            },
            "error": None,
        },
        option=_DUMPS_OPTIONS,
    )
    succeeded = 200 <= status < 300
    inp, out = _usage(body) if succeeded else (0, 0)
    return Result(custom_id, line, not succeeded, succeeded, inp, out)


def error_result(custom_id: str, code: str, message: str, key: str) -> Result:
    """An error-file line: the request never got an answer."""
    line = orjson.dumps(
        {
            "id": f"batch_req_{key}",
            "custom_id": custom_id,
            "response": None,
            "error": {"code": code, "message": message},
        },
        option=_DUMPS_OPTIONS,
    )
    return Result(custom_id, line, True, False)


def _log_write_failure(future: Any) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.error("writing a batch record failed: %s", future.exception())


# ---------------------------------------------------------------------------- partial results


class PartialResults:
    """The results of a running batch so far, in two append-only files, recoverable."""

    def __init__(self, work_dir: Path, sync_interval: float) -> None:
        self.lock = threading.Lock()
        self.done: set[str] = set()
        self.completed = 0
        self.failed = 0
        self.input_tokens = 0
        self.output_tokens = 0
        self.output_path = work_dir / OUTPUT_PARTIAL
        self.errors_path = work_dir / ERRORS_PARTIAL
        self._recover(self.output_path)
        self._recover(self.errors_path)
        self._out = open(self.output_path, "ab")  # noqa: SIM115 - closed in close()
        self._err = open(self.errors_path, "ab")  # noqa: SIM115
        self._sync_interval = sync_interval
        self._last_sync = time.monotonic()
        self.closed = False

    def _recover(self, path: Path) -> None:
        if not path.exists():
            return
        good = 0
        with open(path, "rb") as f:
            for raw in f:
                if not raw.endswith(b"\n"):
                    break
                try:
                    line = orjson.loads(raw)
                    custom_id = line["custom_id"]
                except (orjson.JSONDecodeError, KeyError, TypeError):
                    break
                good += len(raw)
                if custom_id in self.done:
                    continue
                self.done.add(custom_id)
                response = line.get("response")
                status = response.get("status_code", 0) if isinstance(response, dict) else 0
                if 200 <= status < 300:
                    self.completed += 1
                    inp, out = _usage(response.get("body"))
                    self.input_tokens += inp
                    self.output_tokens += out
                else:
                    self.failed += 1
        if good < path.stat().st_size:
            log.warning("cutting a torn last line off %s", path)
            os.truncate(path, good)

    def add(self, results: list[Result]) -> None:
        """Append result lines (a custom_id already done is ignored)."""
        out: list[bytes] = []
        err: list[bytes] = []
        with self.lock:
            if self.closed:
                raise RuntimeError("partial results already closed")
            done = self.done
            for r in results:
                if r.custom_id in done:
                    continue
                done.add(r.custom_id)
                (err if r.error_file else out).append(r.line)
                if r.succeeded:
                    self.completed += 1
                    self.input_tokens += r.input_tokens
                    self.output_tokens += r.output_tokens
                else:
                    self.failed += 1
            if out:
                self._out.write(b"".join(out))
                self._out.flush()
            if err:
                self._err.write(b"".join(err))
                self._err.flush()
            if time.monotonic() - self._last_sync >= self._sync_interval:
                self._sync()

    def _sync(self) -> None:
        for f in (self._out, self._err):
            f.flush()
            os.fsync(f.fileno())
        self._last_sync = time.monotonic()

    def close(self) -> None:
        """Flush to disk and close (idempotent)."""
        with self.lock:
            if self.closed:
                return
            self._sync()
            self._out.close()
            self._err.close()
            self.closed = True


class _InputReader:
    """Reads a batch input file in chunks of non-blank lines."""

    def __init__(self, path: Path) -> None:
        self._file = open(path, "rb")  # noqa: SIM115 - closed in close()
        self._lines = read_lines(self._file)
        self.eof = False

    def next_chunk(self, size: int, max_bytes: int = CHUNK_MAX_BYTES) -> list[bytes]:
        """Up to `size` lines (fewer once they reach `max_bytes`); sets `eof` at the end."""
        chunk: list[bytes] = []
        total = 0
        for _number, raw in self._lines:
            if raw is None or not raw.strip():
                continue
            chunk.append(raw)
            total += len(raw)
            if len(chunk) >= size or total >= max_bytes:
                return chunk
        self.eof = True
        return chunk

    def close(self) -> None:
        self._file.close()


# ---------------------------------------------------------------------------- the engine


@dataclass
class _BatchRun:
    batch_id: str
    stopped: asyncio.Event = field(default_factory=asyncio.Event)
    stop_reason: str | None = None  # "cancelled" | "expired" | "shutdown"
    task: asyncio.Task[None] | None = None
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    stop_waiter: asyncio.Task[Any] | None = None
    hanging: int = 0
    total: int = 0
    chunks: int = 0
    last_persist: float = 0.0
    published: Any = None  # the request counts last put in the record (in memory)
    persisted: Any = None  # ... and last written to disk
    partial: PartialResults | None = None
    reader: _InputReader | None = None
    flight: Flight = field(default_factory=Flight)

    def request_stop(self, reason: str) -> None:
        if self.stop_reason is None:
            self.stop_reason = reason
            self.stopped.set()


@dataclass
class _ChunkOutcome:
    eof: bool
    deferred: list[tuple[str, dict[str, Any], Fault | None]]


class BatchEngine:
    """Runs every unfinished batch of a Store in a background thread."""

    def __init__(self, store: Store, settings: LocalApiSettings, responder: Responder) -> None:
        self.store = store
        self.settings = settings
        self.responder = responder
        self._pool = ThreadPoolExecutor(settings.worker_threads, thread_name_prefix="batch-work")
        # Record writes (their fsyncs) and work dir removals, in order, off the event loop.
        self._io = ThreadPoolExecutor(1, thread_name_prefix="batch-io")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._startup_error: BaseException | None = None
        self._stopping: asyncio.Event | None = None
        self._runs: dict[str, _BatchRun] = {}

    # ------------------------------------------------------------------ thread-safe API

    def start(self, timeout: float = 30.0) -> None:
        """Start the engine thread and resume every unfinished batch."""
        self._thread = threading.Thread(target=self._thread_main, name="batch-engine", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise RuntimeError("the batch engine did not start")
        if self._startup_error is not None:
            raise RuntimeError("the batch engine failed to start") from self._startup_error

    def stop(self, timeout: float = 30.0) -> None:
        """Stop processing (progress is kept; work resumes at the next start)."""
        loop, stopping = self._loop, self._stopping
        if loop is not None and stopping is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(stopping.set)
        if self._thread is not None:
            self._thread.join(timeout)
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._io.shutdown(wait=True)  # the last progress writes

    def submit(self, batch_id: str) -> None:
        """Have a newly created batch processed."""
        self._call(self._ensure_run, batch_id)

    def cancel(self, batch_id: str) -> None:
        """Stop a batch whose status was set to `cancelling`."""
        self._call(self._cancel, batch_id)

    def _call(self, fn: Any, *args: Any) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return  # stopped: the batch is resumed from its record at the next start
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(fn, *args)

    # ------------------------------------------------------------------ loop side

    def _thread_main(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # surfaced by start()
            self._startup_error = exc
            self._ready.set()
            log.exception("batch engine crashed")

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        try:
            await self.responder.start()
        except BaseException as exc:
            self._startup_error = exc
            self._ready.set()
            return
        for batch_id in self.store.unfinished_batch_ids():
            self._ensure_run(batch_id)
        self._ready.set()
        while not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), 60.0)
            if not self._stopping.is_set():
                await self._in_pool(self.store.delete_expired_files)
        runs = list(self._runs.values())
        for run in runs:
            run.request_stop("shutdown")
        tasks = [run.task for run in runs if run.task is not None]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=SHUTDOWN_WAIT_SECONDS)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)
        await self.responder.close()

    async def _in_pool(self, fn: Any, *args: Any) -> Any:
        assert self._loop is not None
        return await self._loop.run_in_executor(self._pool, fn, *args)

    async def _in_io(self, fn: Any, *args: Any) -> Any:
        assert self._loop is not None
        return await self._loop.run_in_executor(self._io, fn, *args)

    def _write_progress(self, batch_id: str) -> None:
        """Write a batch's record without fsync on the I/O thread, not waiting for it."""
        try:
            future = self._io.submit(self.store.persist_batch, batch_id, durable=False)
        except RuntimeError:  # stopping: the partial files hold the progress anyway
            return
        future.add_done_callback(_log_write_failure)

    def _ensure_run(self, batch_id: str) -> _BatchRun:
        run = self._runs.get(batch_id)
        if run is not None:
            return run
        run = _BatchRun(batch_id)
        self._runs[batch_id] = run
        run.task = asyncio.get_running_loop().create_task(self._run_batch(run))
        run.task.add_done_callback(lambda _t: self._runs.pop(batch_id, None))
        return run

    def _cancel(self, batch_id: str) -> None:
        self._ensure_run(batch_id).request_stop("cancelled")

    async def _transition(
        self, batch_id: str, expect: set[str], status: str, **fields: Any
    ) -> dict[str, Any] | None:
        """Set the status (if it is one of `expect`); on disk, fsynced, when this returns.

        The fsync runs on the I/O thread so that the loop goes on serving other batches.
        """
        record = self.store.update_batch(
            batch_id, expect=expect, persist=False, status=status, **fields
        )
        if record is not None:
            await self._in_io(self.store.persist_batch, batch_id)
            counts = record.get("request_counts") or {}
            log.info(
                "batch %s -> %s (total=%s completed=%s failed=%s)",
                batch_id,
                status,
                counts.get("total"),
                counts.get("completed"),
                counts.get("failed"),
            )
        return record

    async def _run_batch(self, run: _BatchRun) -> None:
        record = self.store.get_batch(run.batch_id)
        if record is None or record["status"] in TERMINAL_STATUSES:
            return
        assert self._loop is not None
        delay = record["_deadline"] - time.time()
        if delay <= 0:
            run.request_stop("expired")
        timer = self._loop.call_later(max(delay, 0.0), run.request_stop, "expired")
        run.stop_waiter = self._loop.create_task(run.stopped.wait())
        try:
            if record["status"] == "cancelling":
                run.request_stop("cancelled")
            # A batch cancelled before validation is still validated, so that its requests
            # can be listed in the error file (or its errors reported).
            validate = record["status"] == "validating" or (
                record["status"] == "cancelling" and not record.get("_validated")
            )
            if validate and not await self._validate(run, record):
                return
            record = self.store.get_batch(run.batch_id) or record
            run.total = (record.get("request_counts") or {}).get("total", 0)
            if record["status"] == "in_progress" and run.stop_reason is None:
                await self._process(run, record)
            if run.stop_reason == "shutdown":
                return
            await self._finish(run)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("batch %s: internal error", run.batch_id)
            await self._transition(
                run.batch_id,
                {"validating", "in_progress", "finalizing", "cancelling"},
                "failed",
                failed_at=int(time.time()),
                errors={
                    "object": "list",
                    "data": [
                        {
                            "code": "server_error",
                            "message": f"Internal error: {exc}",
                            "param": None,
                            "line": None,
                        }
                    ],
                },
            )
        finally:
            timer.cancel()
            run.stop_waiter.cancel()
            for task in list(run.tasks):
                task.cancel()
            if run.reader is not None:
                run.reader.close()
            if run.partial is not None:
                await self._in_pool(run.partial.close)

    # ------------------------------------------------------------------ validation

    async def _validate(self, run: _BatchRun, record: dict[str, Any]) -> bool:
        """Validate the input; False when the batch is done with (failed) or shutting down."""
        limit = self.settings.enqueued_token_limit
        result = await self._in_pool(
            lambda: validate_input_file(
                self.store.batch_input_path(record),
                endpoint=record["endpoint"],
                max_requests=record.get("_max_requests", self.settings.max_requests_per_batch),
                max_bytes=self.settings.max_batch_file_bytes,
                count_prompt_tokens=limit is not None,
                azure=record.get("_dialect") == "azure",
            )
        )
        if run.stop_reason == "shutdown":
            return False
        now = int(time.time())
        errors = result.errors or self._over_token_limit(result)
        if errors:
            listed = {"object": "list", "data": errors}
            failed = await self._transition(
                run.batch_id, {"validating"}, "failed", failed_at=now, errors=listed
            )
            if failed is None:  # a cancel came first: it ends cancelled, the errors kept
                await self._transition(
                    run.batch_id, {"cancelling"}, "cancelled", cancelled_at=now, errors=listed
                )
            return False
        counts = {"total": result.total, "completed": 0, "failed": 0}
        # No await between the limit check above and this update: no other batch of the
        # model can be let in between them.
        validated = {
            "model": result.model,
            "request_counts": counts,
            "_validated": True,
            "_prompt_tokens": result.prompt_tokens,
        }
        updated = await self._transition(
            run.batch_id, {"validating"}, "in_progress", in_progress_at=now, **validated
        )
        if updated is None:  # cancelled meanwhile
            self.store.update_batch(run.batch_id, **validated)
            run.request_stop("cancelled")
        return True

    def _over_token_limit(self, result: ValidationResult) -> list[dict[str, Any]]:
        """The `token_limit_exceeded` error when the batch's prompt tokens would take its
        model's enqueued tokens past the service's limit (none without a limit)."""
        limit = self.settings.enqueued_token_limit
        if limit is None:
            return []
        enqueued = self.store.enqueued_prompt_tokens(result.model)
        if enqueued + result.prompt_tokens <= limit:
            return []
        message = (
            f"Enqueued token limit reached for {result.model}. Limit: {limit:,} enqueued "
            f"tokens; {enqueued:,} are enqueued and this batch holds {result.prompt_tokens:,}. "
            "Please try submitting your requests again after some batches have completed."
        )
        return [batch_error("token_limit_exceeded", message)]

    # ------------------------------------------------------------------ processing

    def _open(self, run: _BatchRun, record: dict[str, Any]) -> None:
        run.partial = PartialResults(
            self.store.work_dir(run.batch_id), self.settings.progress_interval_seconds
        )
        run.reader = _InputReader(self.store.batch_input_path(record))

    async def _process(self, run: _BatchRun, record: dict[str, Any]) -> None:
        await self._in_pool(self._open, run, record)
        run.published = run.persisted = record.get("request_counts")
        run.last_persist = time.monotonic()
        self._publish(run, force=True)
        endpoint = record["endpoint"]
        backlog = max(self.settings.chunk_size, 4 * self.settings.concurrency)
        while run.stop_reason is None:
            outcome: _ChunkOutcome = await self._in_pool(self._work_chunk, run, endpoint)
            for custom_id, body, fault in outcome.deferred:
                self._defer(run, endpoint, custom_id, body, fault)
            self._publish(run)
            if outcome.eof:
                break
            while len(run.tasks) >= backlog and run.stop_reason is None:
                await self._wait_any(run)
        while run.stop_reason is None and (run.tasks or run.hanging):
            await self._wait_any(run)
            self._publish(run)
        if run.tasks:
            await self._drain(run)
        # Finishing writes the whole record (durably) next: only a shutdown writes it here.
        shutdown = run.stop_reason == "shutdown"
        self._publish(run, force=shutdown, write=shutdown)

    async def _drain(self, run: _BatchRun) -> None:
        """End a stopped batch's requests: those not sent are dropped at once; those out
        upstream get `drain_seconds` for their answers (paid for, and not to be sent again
        after a restart), and any still missing then are dropped and counted in a warning."""
        run.flight.open = False
        out = run.tasks & run.flight.out
        for task in run.tasks - out:
            task.cancel()
        grace = self.settings.drain_seconds
        if run.stop_reason == "shutdown":
            grace = min(grace, SHUTDOWN_DRAIN_SECONDS)
        pending: set[Any] = set()
        if out:
            _, pending = await asyncio.wait(out, timeout=grace)
        if pending:
            log.warning(
                "batch %s (%s): %d request(s) sent upstream got no answer within %.0f s; "
                "their answers are dropped",
                run.batch_id,
                run.stop_reason,
                len(pending),
                grace,
            )
        for task in pending:
            task.cancel()
        await asyncio.gather(*list(run.tasks), return_exceptions=True)

    async def _wait_any(self, run: _BatchRun) -> None:
        assert run.stop_waiter is not None
        await asyncio.wait([*run.tasks, run.stop_waiter], return_when=asyncio.FIRST_COMPLETED)

    def _work_chunk(self, run: _BatchRun, endpoint: str) -> _ChunkOutcome:
        """Read, answer and record one chunk of requests (runs in the thread pool)."""
        assert run.reader is not None and run.partial is not None
        raws = run.reader.next_chunk(self.settings.chunk_size)
        done = run.partial.done
        responder = self.responder
        answer_now = not responder.is_async
        triggers = self.settings.triggers_faults
        prefix = secrets.token_hex(10)
        results: list[Result] = []
        deferred: list[tuple[str, dict[str, Any], Fault | None]] = []
        for index, raw in enumerate(raws):
            request = orjson.loads(raw)
            custom_id = request["custom_id"]
            if custom_id in done:
                continue
            body = request["body"]
            key = f"{prefix}{index:06x}"
            fault = detect_fault(endpoint, body, raw) if triggers else None
            if fault is None:
                if answer_now:
                    status, answer = self._respond(endpoint, body, key)
                    results.append(answer_result(custom_id, status, answer, key))
                else:
                    deferred.append((custom_id, body, None))
            elif fault.kind == "fail":
                results.append(
                    answer_result(custom_id, fault.status, fault_error_body(fault.status), key)
                )
            else:
                deferred.append((custom_id, body, fault))
        # Lines come out deliberately not in input order (as with OpenAI): join on custom_id.
        random.Random(f"{run.batch_id}:{run.chunks}").shuffle(results)
        run.chunks += 1
        run.partial.add(results)
        return _ChunkOutcome(run.reader.eof, deferred)

    def _respond(self, endpoint: str, body: dict[str, Any], key: str) -> tuple[int, Any]:
        try:
            return self.responder.respond(endpoint, body, key)
        except Exception as exc:
            log.exception("the responder failed on a request")
            return 500, error_body(
                f"The responder failed: {type(exc).__name__}",
                type="server_error",
                code="server_error",
            )

    def _defer(
        self,
        run: _BatchRun,
        endpoint: str,
        custom_id: str,
        body: dict[str, Any],
        fault: Fault | None,
    ) -> None:
        if fault is not None and fault.kind == "hang":
            run.hanging += 1
            return
        assert self._loop is not None
        task = self._loop.create_task(self._respond_later(run, endpoint, custom_id, body, fault))
        run.tasks.add(task)
        task.add_done_callback(run.tasks.discard)

    async def _respond_later(
        self,
        run: _BatchRun,
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
            result = answer_result(
                custom_id,
                500,
                error_body(
                    f"The responder failed: {type(exc).__name__}",
                    type="server_error",
                    code="server_error",
                ),
                key,
            )
        assert run.partial is not None
        run.partial.add([result])

    def _publish(self, run: _BatchRun, force: bool = False, write: bool = True) -> None:
        """Refresh the request counts in the record; write it to disk now and then.

        Progress is written without fsync (`durable=False`), only when it changed, at most
        every `progress_interval_seconds` unless `force`d, and never if not `write`.
        """
        partial = run.partial
        if partial is None:
            return
        counts = {"total": run.total, "completed": partial.completed, "failed": partial.failed}
        now = time.monotonic()
        persist = (
            write
            and counts != run.persisted
            and (force or now - run.last_persist >= self.settings.progress_interval_seconds)
        )
        if not persist and counts == run.published:
            return
        if persist:
            run.last_persist = now
            run.persisted = counts
        run.published = counts
        self.store.update_batch(run.batch_id, persist=False, request_counts=counts)
        if persist:
            self._write_progress(run.batch_id)

    # ------------------------------------------------------------------ finishing

    async def _finish(self, run: _BatchRun) -> None:
        record = self.store.get_batch(run.batch_id)
        assert record is not None
        status, reason = record["status"], run.stop_reason
        if status == "cancelling" or reason == "cancelled":
            final = "cancelled"
        elif status == "finalizing":
            final = "completed"
        elif reason == "expired":
            final = "expired"
        elif (
            await self._transition(
                run.batch_id,
                {"in_progress"},
                "finalizing",
                finalizing_at=int(time.time()),
                **self._result_file_ids(record),
            )
            is None
        ):
            final = "cancelled"  # a cancel slipped in
        else:
            final = "completed"
            await asyncio.sleep(self.settings.finalizing_seconds)
        output_id, error_id, counts, usage = await self._in_pool(self._write_results, run, final)
        expect = {"completed": {"finalizing"}, "cancelled": {"cancelling"}}.get(
            final, {"validating", "in_progress", "cancelling"}
        )
        done = await self._transition(
            run.batch_id,
            expect,
            final,
            output_file_id=output_id,
            error_file_id=error_id,
            request_counts=counts,
            usage=usage,
            # A window that ran out while the service was stopped ended at its deadline.
            **{f"{final}_at": int(time.time() if final != "expired" else record["_deadline"])},
        )
        if done is not None:
            await self._in_io(self.store.remove_work_dir, run.batch_id)

    def _result_file_ids(self, record: dict[str, Any]) -> dict[str, str]:
        """The ids the output and error files will get (recorded ones, else fresh ones)."""
        return {
            "_output_file_id": record.get("_output_file_id") or self.store.new_file_id(),
            "_error_file_id": record.get("_error_file_id") or self.store.new_file_id(),
        }

    def _write_results(self, run: _BatchRun, final: str) -> tuple[Any, ...]:
        """Turn the partial results into the output and error files (thread pool)."""
        record = self.store.get_batch(run.batch_id)
        assert record is not None
        ids = self._result_file_ids(record)
        output_id, error_id = ids["_output_file_id"], ids["_error_file_id"]
        # Recorded (durably) before the files exist, so a crash here re-uses these ids; the
        # move to finalizing has usually recorded them already.
        if any(record.get(name) != value for name, value in ids.items()):
            self.store.update_batch(run.batch_id, **ids)
        if run.partial is None:
            run.partial = PartialResults(
                self.store.work_dir(run.batch_id), self.settings.progress_interval_seconds
            )
        partial = run.partial
        if final in ("expired", "cancelled") and record.get("_validated"):
            code, message = (
                (EXPIRED_CODE, EXPIRED_MESSAGE)
                if final == "expired"
                else (CANCELLED_CODE, CANCELLED_MESSAGE)
            )
            self._add_unfinished(record, partial, code, message)
        partial.close()
        expires_after = record.get("_output_expires_after_seconds")
        expires_at = (
            int(time.time()) + expires_after if expires_after else default_expiry(self.settings)
        )
        file_ids: list[str | None] = []
        for path, file_id, kind in (
            (partial.output_path, output_id, "output"),
            (partial.errors_path, error_id, "error"),
        ):
            if path.stat().st_size == 0:
                file_ids.append(None)
                continue
            self.store.add_file(
                path,
                filename=f"{run.batch_id}_{kind}.jsonl",
                purpose="batch_output",
                file_id=file_id,
                expires_at=expires_at,
                keep_source=True,
            )
            file_ids.append(file_id)
        total = (record.get("request_counts") or {}).get("total", 0)
        counts = {"total": total, "completed": partial.completed, "failed": partial.failed}
        usage = {
            "input_tokens": partial.input_tokens,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": partial.output_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": partial.input_tokens + partial.output_tokens,
        }
        return file_ids[0], file_ids[1], counts, usage

    def _add_unfinished(
        self, record: dict[str, Any], partial: PartialResults, code: str, message: str
    ) -> None:
        """Error lines for every request not done, read from the input file."""
        path = self.store.batch_input_path(record)
        if not path.exists():  # a batch from before batches kept their input, deleted since
            log.warning("batch %s: its input is gone; unfinished requests unlisted", record["id"])
            return
        reader = _InputReader(path)
        try:
            while not reader.eof:
                prefix = secrets.token_hex(10)
                results = []
                for index, raw in enumerate(reader.next_chunk(self.settings.chunk_size)):
                    custom_id = orjson.loads(raw)["custom_id"]
                    if custom_id not in partial.done:
                        results.append(
                            error_result(custom_id, code, message, f"{prefix}{index:06x}")
                        )
                partial.add(results)
        finally:
            reader.close()
