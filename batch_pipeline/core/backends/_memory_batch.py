"""One batch of the in-memory Batch API: its validation, answers and lifecycle by the clock.

The lifecycle is the local service's: validating -> in_progress -> finalizing -> completed;
validating -> failed; validating|in_progress -> cancelling -> cancelled; validating|
in_progress -> expired when the completion window passes. Answers and result lines are
built by the local service's own code (its echo responder, fault triggers and line
format), so both backends write the same files.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Protocol

import orjson

from batch_pipeline.core.tokens import count_tokens
from batch_pipeline.core.types import BatchError, BatchInfo, BatchStatus, RequestCounts
from batch_pipeline.local_api.errors import error_body, fault_error_body
from batch_pipeline.local_api.faults import Fault, detect_fault
from batch_pipeline.local_api.request_texts import prompt_texts
from batch_pipeline.local_api.responders import EchoResponder
from batch_pipeline.local_api.result_lines import (
    CANCELLED_CODE,
    CANCELLED_MESSAGE,
    EXPIRED_CODE,
    EXPIRED_MESSAGE,
    Result,
    answer_result,
    error_result,
)
from batch_pipeline.local_api.validation import MODEL_OPTIONAL_ENDPOINTS

MAX_REPORTED_ERRORS = 100


class Responder(Protocol):
    """What answers one request: `(HTTP status, JSON body)`, as `EchoResponder.respond`."""

    def respond(
        self, endpoint: str, body: dict[str, Any], key: str | None = None
    ) -> tuple[int, dict[str, Any]]: ...


@dataclass(frozen=True)
class Answerer:
    """How requests are answered and how long each step of a batch takes."""

    responder: Responder | None = None
    fault_triggers: bool = True
    validation_seconds: float = 0.0
    processing_seconds: float = 0.0
    finalizing_seconds: float = 0.0

    @cached_property
    def _responder(self) -> Responder:
        return self.responder or EchoResponder()

    def fault(self, endpoint: str, body: dict[str, Any], raw: bytes) -> Fault | None:
        return detect_fault(endpoint, body, raw) if self.fault_triggers else None

    def due(self, started: float, fault: Fault | None) -> float:
        """When a request of a batch that started running at `started` is answered."""
        if fault is not None and fault.kind == "hang":
            return math.inf
        slow = fault.seconds if fault is not None and fault.kind == "slow" else 0.0
        return started + self.processing_seconds + slow

    def answer(self, endpoint: str, request: _Request, key: str) -> Result:
        """The result line of one request."""
        if request.fault is not None and request.fault.kind == "fail":
            status = request.fault.status
            return answer_result(request.custom_id, status, fault_error_body(status), key)
        try:
            status, body = self._responder.respond(endpoint, request.body, key)
        except Exception as exc:  # as the service does: the request gets a 500
            status, body = (
                500,
                error_body(f"The responder failed: {type(exc).__name__}", type="server_error"),
            )
        return answer_result(request.custom_id, status, body, key)


@dataclass
class _Request:
    custom_id: str
    body: dict[str, Any]
    fault: Fault | None
    due: float = math.inf


Limits = Callable[["MemoryBatch"], BatchError | None]


@dataclass(eq=False)
class MemoryBatch:
    """A batch's state; `advance` moves it on to a time and returns its new result files."""

    id: str
    endpoint: str
    input_file_id: str
    metadata: dict[str, str]
    created_at: float
    deadline: float
    content: bytes
    forced_error: BatchError | None = None
    status: BatchStatus = BatchStatus.VALIDATING
    errors: tuple[BatchError, ...] = ()
    model: str | None = None
    requests: list[_Request] = field(default_factory=list)
    results: dict[str, Result] = field(default_factory=dict)
    file_ids: dict[str, str] = field(default_factory=dict)
    finalizing_at: float = 0.0

    def info(self) -> BatchInfo:
        """The batch as the API shows it."""
        results = self.results.values()
        succeeded = sum(result.succeeded for result in results)
        usage = [result for result in results if result.succeeded]
        return BatchInfo(
            id=self.id,
            status=self.status,
            endpoint=self.endpoint,
            input_file_id=self.input_file_id,
            created_at=int(self.created_at),
            output_file_id=self.file_ids.get("output"),
            error_file_id=self.file_ids.get("error"),
            request_counts=RequestCounts(
                total=len(self.requests), completed=succeeded, failed=len(results) - succeeded
            ),
            errors=self.errors,
            metadata=dict(self.metadata),
            input_tokens=sum(r.input_tokens for r in usage) if self.status.is_terminal else None,
            output_tokens=sum(r.output_tokens for r in usage) if self.status.is_terminal else None,
            expires_at=int(self.deadline),
        )

    @cached_property
    def prompt_tokens(self) -> int:
        """The exact prompt tokens of all requests (counted only when a limit asks)."""
        return sum(
            count_tokens(text, str(request.body.get("model") or ""))
            for request in self.requests
            for text in prompt_texts(self.endpoint, request.body)
            if text
        )

    def advance(self, now: float, answerer: Answerer, limits: Limits) -> list[tuple[str, list]]:
        """Move on to `now`; the lines of the result files made if the batch ended."""
        if self.status is BatchStatus.VALIDATING:
            validated_at = self.created_at + answerer.validation_seconds
            if validated_at <= now and validated_at < self.deadline:
                self._validate(validated_at, answerer, limits)
            elif now >= self.deadline:
                return self._end(BatchStatus.EXPIRED, answerer)
        if self.status is BatchStatus.IN_PROGRESS:
            self._answer_due(min(now, self.deadline), answerer)
            if len(self.results) == len(self.requests):
                self.status = BatchStatus.FINALIZING
                self.finalizing_at = max((r.due for r in self.requests), default=now)
            elif now >= self.deadline:
                return self._end(BatchStatus.EXPIRED, answerer)
        if (
            self.status is BatchStatus.FINALIZING
            and now >= self.finalizing_at + answerer.finalizing_seconds
        ):
            return self._end(BatchStatus.COMPLETED, answerer)
        if self.status is BatchStatus.CANCELLING:
            return self._end(BatchStatus.CANCELLED, answerer)
        return []

    def cancel(self, now: float, answerer: Answerer, limits: Limits) -> None:
        """Ask to cancel; a batch not yet validated is validated first, so that its requests
        can be listed in the error file (or its errors kept)."""
        if self.status is BatchStatus.VALIDATING:
            self._validate(now, answerer, limits)
        self.status = BatchStatus.CANCELLING

    def _validate(self, at: float, answerer: Answerer, limits: Limits) -> None:
        errors = self._parse(answerer)
        error = None if errors else limits(self)
        if errors or error is not None:
            self.status = BatchStatus.FAILED
            self.errors = tuple(errors) or (error,)  # type: ignore[assignment]
            self.requests = []
            return
        self.status = BatchStatus.IN_PROGRESS
        for request in self.requests:
            request.due = answerer.due(at, request.fault)

    def _parse(self, answerer: Answerer) -> list[BatchError]:
        """Read the input lines into requests; the errors of the lines that do not fit."""
        errors: list[BatchError] = []
        seen: set[str] = set()
        for number, raw in enumerate(self.content.splitlines(), start=1):
            if not raw.strip():
                continue
            problem = self._check(raw, seen)
            if problem is not None:
                code, param = problem
                errors.append(
                    BatchError(
                        code=code, message=f"Line {number}: {code}", line=number, param=param
                    )
                )
                if len(errors) >= MAX_REPORTED_ERRORS:
                    break
                continue
            request = orjson.loads(raw)
            body = request["body"]
            seen.add(request["custom_id"])
            self.model = self.model or body.get("model")
            fault = answerer.fault(self.endpoint, body, raw)
            self.requests.append(_Request(request["custom_id"], body, fault))
        if not errors and not self.requests:
            errors.append(
                BatchError(code="empty_file", message="The input file holds no requests.")
            )
        return errors

    def _check(self, raw: bytes, seen: set[str]) -> tuple[str, str | None] | None:
        """The error code and param of one input line, or None when it is a good request."""
        try:
            request = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return "invalid_json_line", None
        if not isinstance(request, dict):
            return "invalid_json_line", None
        custom_id, body = request.get("custom_id"), request.get("body")
        if not isinstance(custom_id, str) or not custom_id:
            return "missing_required_parameter", "custom_id"
        if custom_id in seen:
            return "duplicate_custom_id", "custom_id"
        if request.get("method") != "POST":
            return "invalid_method", "method"
        if request.get("url") != self.endpoint:
            return "mismatched_url", "url"
        if not isinstance(body, dict):
            return "invalid_parameter", "body"
        model = body.get("model")
        if model is None and self.endpoint not in MODEL_OPTIONAL_ENDPOINTS:
            return "missing_required_parameter", "body.model"
        if model is not None and self.model is not None and model != self.model:
            return "mismatched_model", "body.model"
        return None

    def _answer_due(self, until: float, answerer: Answerer) -> None:
        for index, request in enumerate(self.requests):
            if request.due <= until and request.custom_id not in self.results:
                key = f"{self.id[9:]}{index:06x}"
                self.results[request.custom_id] = answerer.answer(self.endpoint, request, key)

    def _end(self, status: BatchStatus, answerer: Answerer) -> list[tuple[str, list]]:
        """End the batch: unanswered requests of an expired or cancelled one become error
        lines; returns the output and error files' lines (empty ones left out)."""
        stopped = {
            BatchStatus.EXPIRED: (EXPIRED_CODE, EXPIRED_MESSAGE),
            BatchStatus.CANCELLED: (CANCELLED_CODE, CANCELLED_MESSAGE),
        }.get(status)
        if stopped is not None:
            for index, request in enumerate(self.requests):
                if request.custom_id not in self.results:
                    key = f"{self.id[9:]}x{index:06x}"
                    self.results[request.custom_id] = error_result(request.custom_id, *stopped, key)
        self.status = status
        output = [r.line for r in self.results.values() if not r.error_file]
        errors = [r.line for r in self.results.values() if r.error_file]
        return [(kind, lines) for kind, lines in (("output", output), ("error", errors)) if lines]
