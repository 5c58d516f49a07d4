"""Runs batches: validation, processing in chunks, lifecycle, expiry, cancel and recovery.

One background thread runs an asyncio loop with one task per unfinished batch; its parts:
dispatch.py answers the requests, partial_results.py keeps what is done (recoverable after
a restart), draining.py ends a stopped batch's requests, result_files.py writes the output
and error files. The request counts in the batch record are refreshed in memory after each
chunk and written to disk every `progress_interval_seconds` (without fsync: the partial
files, not these counts, are what a resumed batch goes by).

Lifecycle: validating -> in_progress -> finalizing -> completed; validating -> failed;
validating|in_progress -> cancelling -> cancelled; validating|in_progress -> expired when
the completion window passes. A batch that stops (cancel, expiry, the service stopping)
sends no more requests and waits up to `drain_seconds` for the answers of those already
sent upstream.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from batch_pipeline.local_api.answer_pool import AnswerPool
from batch_pipeline.local_api.answers import Responder
from batch_pipeline.local_api.batch_run import BatchRun
from batch_pipeline.local_api.dispatch import ChunkOutcome, Dispatcher
from batch_pipeline.local_api.draining import SHUTDOWN_WAIT_SECONDS, drain
from batch_pipeline.local_api.echo import EchoResponder
from batch_pipeline.local_api.result_files import ResultFiles
from batch_pipeline.local_api.settings import LocalApiSettings
from batch_pipeline.local_api.store import TERMINAL_STATUSES, Store
from batch_pipeline.local_api.validation import (
    ValidationResult,
    batch_error,
    validate_input_file,
)

log = logging.getLogger(__name__)

# Where a batch may be when it fails on an internal error.
_UNFINISHED = {"validating", "in_progress", "finalizing", "cancelling"}


def _log_write_failure(future: Any) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.error("writing a batch record failed: %s", future.exception())


def _call(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """`fn(...)`, here (what `AnswerPool.call` does in a worker process)."""
    return fn(*args, **kwargs)


def _needs_validation(record: dict[str, Any]) -> bool:
    """Whether a batch is still to be validated. A batch cancelled before validation is
    still validated, so that its requests can be listed in the error file (or its errors
    reported)."""
    return record["status"] == "validating" or (
        record["status"] == "cancelling" and not record.get("_validated")
    )


def _internal_errors(exc: Exception) -> dict[str, Any]:
    """The `errors` of a batch that failed on an internal error."""
    return {
        "object": "list",
        "data": [
            {
                "code": "server_error",
                "message": f"Internal error: {exc}",
                "param": None,
                "line": None,
            }
        ],
    }


class BatchEngine:
    """Runs every unfinished batch of a Store in a background thread."""

    def __init__(self, store: Store, settings: LocalApiSettings, responder: Responder) -> None:
        self.store = store
        self.settings = settings
        self.responder = responder
        workers = settings.workers or 1
        # Echo answers on `workers` processes; proxy requests wait on the loop instead.
        self._answer_pool = (
            AnswerPool(workers, settings.triggers_faults)
            if workers > 1 and isinstance(responder, EchoResponder)
            else None
        )
        self._dispatcher = Dispatcher(
            responder,
            chunk_size=settings.chunk_size,
            triggers_faults=settings.triggers_faults,
            pool=self._answer_pool,
        )
        self._result_files = ResultFiles(store, settings)
        # A thread per worker process waits on its chunk, beside those validating and writing.
        threads = settings.worker_threads + (workers if self._answer_pool else 0)
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="batch-work")
        # Record writes (their fsyncs) and work dir removals, in order, off the event loop.
        self._io = ThreadPoolExecutor(1, thread_name_prefix="batch-io")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._startup_error: BaseException | None = None
        self._stopping: asyncio.Event | None = None
        self._runs: dict[str, BatchRun] = {}

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
        if self._answer_pool is not None:
            self._answer_pool.close()
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
        await self._stop_runs()
        await self.responder.close()

    async def _stop_runs(self) -> None:
        """Stop every batch and wait (a while) for them to save their progress."""
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

    def _ensure_run(self, batch_id: str) -> BatchRun:
        run = self._runs.get(batch_id)
        if run is not None:
            return run
        run = BatchRun(batch_id)
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

    async def _run_batch(self, run: BatchRun) -> None:
        record = self.store.get_batch(run.batch_id)
        if record is None or record["status"] in TERMINAL_STATUSES:
            return
        timer = self._arm(run, record)
        try:
            await self._advance(run, record)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("batch %s: internal error", run.batch_id)
            await self._transition(
                run.batch_id,
                _UNFINISHED,
                "failed",
                failed_at=int(time.time()),
                errors=_internal_errors(exc),
            )
        finally:
            timer.cancel()
            await self._release(run)

    def _arm(self, run: BatchRun, record: dict[str, Any]) -> asyncio.TimerHandle:
        """Have the batch stop when its completion window passes (now if it has)."""
        assert self._loop is not None
        delay = record["_deadline"] - time.time()
        if delay <= 0:
            run.request_stop("expired")
        timer = self._loop.call_later(max(delay, 0.0), run.request_stop, "expired")
        run.stop_waiter = self._loop.create_task(run.stopped.wait())
        return timer

    async def _advance(self, run: BatchRun, record: dict[str, Any]) -> None:
        """Take a batch from where its record says it is to its end (or the shutdown)."""
        if record["status"] == "cancelling":
            run.request_stop("cancelled")
        if _needs_validation(record) and not await self._validate(run, record):
            return
        record = self.store.get_batch(run.batch_id) or record
        run.total = (record.get("request_counts") or {}).get("total", 0)
        if record["status"] == "in_progress" and run.stop_reason is None:
            await self._process(run, record)
        if run.stop_reason != "shutdown":
            await self._finish(run)

    async def _release(self, run: BatchRun) -> None:
        """Let go of what a batch's run holds: its tasks and its open files."""
        assert run.stop_waiter is not None
        run.stop_waiter.cancel()
        for task in list(run.tasks):
            task.cancel()
        if run.partial is not None:
            await self._in_pool(run.partial.close)

    # ------------------------------------------------------------------ validation

    async def _validate(self, run: BatchRun, record: dict[str, Any]) -> bool:
        """Validate the input; False when the batch is done with (failed) or shutting down."""
        limit = self.settings.enqueued_token_limit
        options = {
            "endpoint": record["endpoint"],
            "max_requests": record.get("_max_requests", self.settings.max_requests_per_batch),
            "max_bytes": record.get("_max_bytes", self.settings.max_batch_file_bytes),
            "count_prompt_tokens": limit is not None,
            "azure": record.get("_dialect") == "azure",
            "one_model": record.get("_dialect") != "anthropic",
        }
        # In a worker process when there are several: it reads the file itself.
        run_validation = self._answer_pool.call if self._answer_pool else _call
        path = self.store.batch_input_path(record)
        result = await self._in_pool(lambda: run_validation(validate_input_file, path, **options))
        if run.stop_reason == "shutdown":
            return False
        now = int(time.time())
        # Anthropic limits its batches by rate at create time, not by enqueued tokens.
        anthropic = record.get("_dialect") == "anthropic"
        errors = result.errors or ([] if anthropic else self._over_token_limit(result))
        if errors:
            await self._reject(run, {"object": "list", "data": errors}, now)
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

    async def _reject(self, run: BatchRun, errors: dict[str, Any], now: int) -> None:
        """End a batch whose input failed validation: failed, or cancelled (with the errors
        kept) when a cancel came first."""
        failed = await self._transition(
            run.batch_id, {"validating"}, "failed", failed_at=now, errors=errors
        )
        if failed is None:
            await self._transition(
                run.batch_id, {"cancelling"}, "cancelled", cancelled_at=now, errors=errors
            )

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

    def _open(self, run: BatchRun, record: dict[str, Any]) -> None:
        run.partial = self._result_files.open_partial(run.batch_id)
        run.input_path = self.store.batch_input_path(record)

    async def _process(self, run: BatchRun, record: dict[str, Any]) -> None:
        await self._in_pool(self._open, run, record)
        run.published = run.persisted = record.get("request_counts")
        run.last_persist = time.monotonic()
        self._publish(run, force=True)
        endpoint = record["endpoint"]
        backlog = max(self.settings.chunk_size, 4 * self.settings.concurrency)
        while run.stop_reason is None:
            outcome: ChunkOutcome = await self._in_pool(self._dispatcher.work_chunk, run, endpoint)
            self._dispatcher.defer(run, endpoint, outcome.deferred)
            self._publish(run)
            if outcome.eof:
                break
            while len(run.tasks) >= backlog and run.stop_reason is None:
                await run.wait_any()
        while run.stop_reason is None and (run.tasks or run.hanging):
            await run.wait_any()
            self._publish(run)
        if run.tasks:
            await drain(run, self.settings.drain_seconds)
        # Finishing writes the whole record (durably) next: only a shutdown writes it here.
        shutdown = run.stop_reason == "shutdown"
        self._publish(run, force=shutdown, write=shutdown)

    def _publish(self, run: BatchRun, force: bool = False, write: bool = True) -> None:
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

    async def _finish(self, run: BatchRun) -> None:
        record = self.store.get_batch(run.batch_id)
        assert record is not None
        final = await self._final_status(run, record)
        output_id, error_id, counts, usage = await self._in_pool(
            self._result_files.write, run, final
        )
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

    async def _final_status(self, run: BatchRun, record: dict[str, Any]) -> str:
        """How a batch ends: cancelled, expired or completed (after finalizing)."""
        status, reason = record["status"], run.stop_reason
        if status == "cancelling" or reason == "cancelled":
            return "cancelled"
        if status == "finalizing":
            return "completed"
        if reason == "expired":
            return "expired"
        finalizing = await self._transition(
            run.batch_id,
            {"in_progress"},
            "finalizing",
            finalizing_at=int(time.time()),
            **self._result_files.file_ids(record),
        )
        if finalizing is None:
            return "cancelled"  # a cancel slipped in
        await asyncio.sleep(self.settings.finalizing_seconds)
        return "completed"
