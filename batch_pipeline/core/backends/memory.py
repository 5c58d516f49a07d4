"""A Batch API that lives in memory: test a pipeline without a server, threads or waiting.

`InMemoryBatchBackend` plays every outcome the local service (`batch-pipeline serve`) can:
answers shaped by the same echo responder, per-line 4xx/5xx answers in the error file,
expiry, cancel, validation failure, 429 on create, lost files and an unreachable service.
Time is whatever its `clock` says: pass the same `ManualClock` to the backend and to
`Pipeline(..., clock=clock, sleep=clock.sleep)`, and a batch moves on only as that clock
does, each time the backend is asked about it (nothing runs in the background).

A scenario is chosen as with the local service, by fault triggers in a request's user text
(`<<fail:CODE>>`, `<<hang>>`, `<<slow:SECONDS>>`, see `local_api.faults`), so a test moves
between the two backends unchanged; or by the knobs below (`refuse_creates`,
`fail_batches`, `lose_file`, `reachable`).
"""

from __future__ import annotations

import itertools
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import BinaryIO

from batch_pipeline.core.backends._memory_batch import Answerer, MemoryBatch, Responder
from batch_pipeline.core.backends.base import (
    UNREACHABLE_AFTER_SECONDS,
    BackendError,
    BatchBackend,
    ConnectionWatch,
    NotFound,
    ServiceUnreachable,
    TransientBackendError,
    created_since,
)
from batch_pipeline.core.batch_caps import OPENAI_CAPS
from batch_pipeline.core.types import BatchError, BatchInfo, BatchStatus, FileInfo

MEMORY_BASE_URL = "memory://batch-api"
DAY_SECONDS = 86_400.0
# 2026-01-01T00:00:00Z: a fixed start, so a manual clock's runs are the same every time.
MANUAL_CLOCK_START = 1_767_225_600.0
SUPPORTED_ENDPOINTS = frozenset(
    {
        "/v1/chat/completions",
        "/v1/responses",
        "/v1/embeddings",
        "/v1/completions",
        "/v1/moderations",
    }
)


class ManualClock:
    """A clock whose time passes only when told to: `advance(seconds)`, or `sleep(seconds)`
    (what `Pipeline(..., sleep=clock.sleep)` calls between polls). Call it for the time."""

    def __init__(self, start: float = MANUAL_CLOCK_START) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        """Let `seconds` pass."""
        if seconds < 0:
            raise ValueError(f"a clock cannot go back ({seconds} s)")
        self.now += seconds

    def sleep(self, seconds: float) -> None:
        """Sleep without waiting: the time passes at once."""
        self.advance(seconds)


@dataclass
class _File:
    info: FileInfo
    content: bytes


@dataclass(frozen=True)
class _Refusal:
    status: int
    code: str


class InMemoryBatchBackend(BatchBackend):
    """A `BatchBackend` whose files and batches live in this object.

    - `clock`: the time batches go by (`ManualClock` for tests that must not wait).
    - `completion_window_seconds`: the '24h' window; requests still unanswered at its end
      go to the error file as `batch_expired`, and the batch ends `expired`.
    - `validation_seconds`, `processing_seconds`, `finalizing_seconds`: how long a batch
      validates, each request takes once it runs (plus its `<<slow:S>>`), and it finalizes.
    - `fault_triggers`: honour `<<fail:CODE>>`, `<<hang>>` and `<<slow:S>>` in user text.
    - `enqueued_token_limit`: a batch whose prompt tokens would take its model's enqueued
      tokens past this fails `token_limit_exceeded`, as the providers' limit does.
    - `responder`: what answers a request (default: the local service's echo responder).
    """

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.time,
        completion_window_seconds: float = DAY_SECONDS,
        validation_seconds: float = 0.0,
        processing_seconds: float = 0.0,
        finalizing_seconds: float = 0.0,
        fault_triggers: bool = True,
        enqueued_token_limit: int | None = None,
        max_requests_per_batch: int = OPENAI_CAPS.max_requests,
        responder: Responder | None = None,
        unreachable_after: float = UNREACHABLE_AFTER_SECONDS,
    ) -> None:
        self._clock = clock
        self.completion_window_seconds = completion_window_seconds
        self.enqueued_token_limit = enqueued_token_limit
        self.max_requests_per_batch = max_requests_per_batch
        self._answerer = Answerer(
            responder=responder,
            fault_triggers=fault_triggers,
            validation_seconds=validation_seconds,
            processing_seconds=processing_seconds,
            finalizing_seconds=finalizing_seconds,
        )
        self.connection = ConnectionWatch(
            MEMORY_BASE_URL, unreachable_after=unreachable_after, clock=clock
        )
        self.reachable = True
        self.calls: list[str] = []  # the name of each call made, in order
        self._files: dict[str, _File] = {}
        self._batches: dict[str, MemoryBatch] = {}
        self._ids = itertools.count(1)
        self._refusals: list[_Refusal] = []
        self._failures: list[BatchError] = []

    def __repr__(self) -> str:
        return f"{type(self).__name__}({len(self._batches)} batches, {len(self._files)} files)"

    # -- knobs ------------------------------------------------------------------------------

    def refuse_creates(
        self, count: int = 1, *, status: int = 429, code: str = "rate_limit_exceeded"
    ) -> None:
        """Refuse the next `count` batch creates with HTTP `status` (no batch is made)."""
        self._refusals += [_Refusal(status, code)] * count

    def fail_batches(
        self,
        count: int = 1,
        *,
        code: str = "token_limit_exceeded",
        message: str = "Enqueued token limit reached.",
    ) -> None:
        """Fail the next `count` batches created at validation with one error `code`."""
        self._failures += [BatchError(code=code, message=message)] * count

    def lose_file(self, file_id: str) -> None:
        """Forget a file (expired or deleted by the provider): its download is a 404."""
        self._files.pop(file_id, None)

    def file_content(self, file_id: str) -> bytes:
        """The bytes of a file the backend holds (NotFound once it is gone)."""
        return self._file(file_id).content

    # -- files ------------------------------------------------------------------------------

    def upload_file(self, content: BinaryIO, filename: str) -> FileInfo:
        self._answered("upload_file")
        return self._add_file(content.read(), filename, "batch")

    def find_file(self, filename: str, *, created_after: int) -> FileInfo | None:
        self._answered("find_file")
        for file in reversed(self._files.values()):
            if file.info.created_at < created_after:
                return None
            if file.info.filename == filename:
                return file.info
        return None

    def download_file(self, file_id: str, dest: BinaryIO) -> int:
        self._answered("download_file")
        self._advance_all()
        content = self._file(file_id).content
        dest.write(content)
        return len(content)

    def delete_file(self, file_id: str) -> None:
        self._answered("delete_file")
        self._file(file_id)
        del self._files[file_id]

    # -- batches ----------------------------------------------------------------------------

    def create_batch(
        self, *, input_file_id: str, endpoint: str, metadata: dict[str, str]
    ) -> BatchInfo:
        self._answered("create_batch")
        if self._refusals:
            refusal = self._refusals.pop(0)
            error = TransientBackendError if refusal.status in (408, 429) else BackendError
            raise error(
                f"create a batch from {input_file_id} failed: HTTP {refusal.status} "
                f"({refusal.code})",
                status_code=refusal.status,
                code=refusal.code,
            )
        if endpoint not in SUPPORTED_ENDPOINTS:
            raise BackendError(
                f"create a batch failed: HTTP 400: unsupported endpoint {endpoint}",
                status_code=400,
                code="invalid_value",
            )
        content = self._file(input_file_id).content
        now = self._clock()
        batch = MemoryBatch(
            id=f"batch_mem{next(self._ids):08x}",
            endpoint=endpoint,
            input_file_id=input_file_id,
            metadata=dict(metadata),
            created_at=now,
            deadline=now + self.completion_window_seconds,
            content=content,
            forced_error=self._failures.pop(0) if self._failures else None,
        )
        self._batches[batch.id] = batch
        return batch.info()

    def retrieve_batch(self, batch_id: str) -> BatchInfo:
        self._answered("retrieve_batch")
        self._advance_all()
        return self._batch(batch_id).info()

    def iter_batches(
        self, *, created_after: int | None = None, page_size: int = 100
    ) -> Iterator[BatchInfo]:
        self._answered("iter_batches")
        self._advance_all()
        newest_first = [batch.info() for batch in reversed(self._batches.values())]
        return created_since(newest_first, created_after)

    def cancel_batch(self, batch_id: str) -> BatchInfo:
        self._answered("cancel_batch")
        self._advance_all()
        batch = self._batch(batch_id)
        if batch.status in (BatchStatus.VALIDATING, BatchStatus.IN_PROGRESS):
            batch.cancel(self._clock(), self._answerer, self._validate_limits)
        elif batch.status not in (BatchStatus.CANCELLING, BatchStatus.CANCELLED):
            raise BackendError(
                f"cancel batch {batch_id} failed: HTTP 409: Cannot cancel a batch with "
                f"status '{batch.status.value}'.",
                status_code=409,
            )
        return batch.info()

    def unreachable(self) -> ServiceUnreachable | None:
        return self.connection.unreachable

    def close(self) -> None:
        """Nothing to release: the files and batches stay for the next pipeline."""

    # -- inside -----------------------------------------------------------------------------

    def _answered(self, action: str) -> None:
        """Count the call; a service set unreachable gives no answer (see ConnectionWatch)."""
        self.calls.append(action)
        if not self.reachable:
            raise self.connection.no_answer(action, "ConnectError: the service is down")
        self.connection.answered()

    def _advance_all(self) -> None:
        """Move every unfinished batch on to what the clock says now."""
        now = self._clock()
        for batch in self._batches.values():
            if batch.status.is_terminal:
                continue
            for kind, lines in batch.advance(now, self._answerer, self._validate_limits):
                # Lines come out not in input order (as with OpenAI): join on custom_id.
                random.Random(f"{batch.id}:{kind}").shuffle(lines)
                file = self._add_file(b"".join(lines), f"{batch.id}_{kind}.jsonl", "batch_output")
                batch.file_ids[kind] = file.id

    def _validate_limits(self, batch: MemoryBatch) -> BatchError | None:
        """The error of a batch past the request or enqueued-token limit, else None."""
        if batch.forced_error is not None:
            return batch.forced_error
        if len(batch.requests) > self.max_requests_per_batch:
            return BatchError(
                code="too_many_requests",
                message=f"The input file has more than {self.max_requests_per_batch} requests.",
            )
        limit = self.enqueued_token_limit
        if limit is None:
            return None
        enqueued = sum(
            other.prompt_tokens
            for other in self._batches.values()
            if other.status is BatchStatus.IN_PROGRESS and other.model == batch.model
        )
        if enqueued + batch.prompt_tokens <= limit:
            return None
        return BatchError(
            code="token_limit_exceeded",
            message=f"Enqueued token limit reached for {batch.model}. Limit: {limit:,} "
            f"enqueued tokens; {enqueued:,} are enqueued and this batch holds "
            f"{batch.prompt_tokens:,}.",
        )

    def _add_file(self, content: bytes, filename: str, purpose: str) -> FileInfo:
        info = FileInfo(
            id=f"file-mem{next(self._ids):08x}",
            filename=filename,
            bytes=len(content),
            purpose=purpose,
            created_at=int(self._clock()),
        )
        self._files[info.id] = _File(info, content)
        return replace(info)

    def _file(self, file_id: str) -> _File:
        file = self._files.get(file_id)
        if file is None:
            raise NotFound(f"file {file_id} failed: HTTP 404: No such File object", status_code=404)
        return file

    def _batch(self, batch_id: str) -> MemoryBatch:
        batch = self._batches.get(batch_id)
        if batch is None:
            raise NotFound(
                f"batch {batch_id} failed: HTTP 404: No such Batch object", status_code=404
            )
        return batch
