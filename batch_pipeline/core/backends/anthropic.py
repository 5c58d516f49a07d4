"""Anthropic's Message Batches, through the official `anthropic` SDK (the `anthropic` extra,
imported only when a pipeline uses it).

Anthropic has no Files API and no batch metadata, so this backend fits them into the
pipeline's Files + Batches terms:

- `upload_file` stages a shard's request bodies in this process (nothing is sent), and
  `create_batch` sends them inline with custom_ids made from the submission's identity and
  each request's line (`_anthropic_ids`); a staged shard that another process would need is
  simply read again from storage (`inline_requests`).
- An ended batch offers its results as one "file" (`results:<batch id>`), which
  `download_file` writes in the OpenAI output-line form the results parser reads: `succeeded`
  as an HTTP 200 answer, `errored` as the error's HTTP status (`overloaded_error` 529,
  `api_error` 500, `rate_limit_error` 429: retried; the rest final), `expired` and `canceled`
  as `batch_expired` and `batch_cancelled` lines.
- `find_batch` finds a batch a crashed process created without metadata to go by: among the
  batches created since, of the shard's request count and unknown to the ledger, one whose
  results carry the submission's tag; one that has not ended cannot be told yet, so the
  shard waits for it (a TransientBackendError) rather than paying for a second batch.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import time
from collections.abc import Callable, Collection, Iterator, Mapping
from typing import TYPE_CHECKING, Any, BinaryIO, TypeVar

import httpx2
import orjson

from batch_pipeline.core.backends._anthropic_ids import (
    pipeline_ids,
    request_id,
    submission_tag,
    tag_of,
)
from batch_pipeline.core.backends.base import (
    ANTHROPIC_KEY_VARIABLE,
    UNREACHABLE_AFTER_SECONDS,
    BackendError,
    BatchBackend,
    ConnectionWatch,
    NotFound,
    ServiceUnreachable,
    TransientBackendError,
    created_since,
    guarded_call,
    redact,
    shown_url,
    status_error,
)
from batch_pipeline.core.batch_identity import SUBMISSION_METADATA_KEY
from batch_pipeline.core.spec import BackendSpec
from batch_pipeline.core.types import BatchInfo, BatchStatus, FileInfo, RequestCounts

if TYPE_CHECKING:
    import anthropic
    import pyarrow as pa
    from anthropic.types.messages import MessageBatch

MESSAGES_ENDPOINT = "/v1/messages"
RESULTS_PREFIX = "results:"
STAGED_PREFIX = "staged-"
_MAX_MESSAGE_CHARS = 500
# The HTTP status an `errored` result stands for, by its error type (retried: 429 and 5xx).
_STATUS_OF_ERROR_TYPE = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}
_UNANSWERED = {
    "expired": ("batch_expired", "The batch ended before this request was processed."),
    "canceled": ("batch_cancelled", "The batch was canceled before this request was processed."),
}

_T = TypeVar("_T")


def batch_info_from_anthropic(batch: MessageBatch) -> BatchInfo:
    """Parse an SDK `MessageBatch` into the core's `BatchInfo`."""
    counts = batch.request_counts
    total = counts.processing + counts.succeeded + counts.errored + counts.canceled + counts.expired
    ended = batch.processing_status == "ended"
    return BatchInfo(
        id=batch.id,
        status=_status(batch),
        endpoint=MESSAGES_ENDPOINT,
        input_file_id="",
        created_at=int(batch.created_at.timestamp()),
        output_file_id=f"{RESULTS_PREFIX}{batch.id}" if ended else None,
        request_counts=RequestCounts(
            total=total,
            completed=counts.succeeded,
            failed=counts.errored + counts.canceled + counts.expired,
        ),
    )


def _status(batch: MessageBatch) -> BatchStatus:
    if batch.processing_status == "in_progress":
        return BatchStatus.IN_PROGRESS
    if batch.processing_status == "canceling":
        return BatchStatus.CANCELLING
    if batch.cancel_initiated_at is not None:
        return BatchStatus.CANCELLED
    if batch.request_counts.expired:
        return BatchStatus.EXPIRED
    return BatchStatus.COMPLETED


def result_as_output_line(raw: bytes) -> bytes:
    """A Message Batch result line in the OpenAI output-line form the results parser reads."""
    line = orjson.loads(raw)
    result = line["result"]
    kind = result["type"]
    response: dict[str, Any] | None = None
    error: dict[str, str] | None = None
    if kind == "succeeded":
        response = {"status_code": 200, "body": result["message"]}
    elif kind == "errored":
        body = result.get("error") or {}
        error_type = (body.get("error") or {}).get("type")
        response = {"status_code": _STATUS_OF_ERROR_TYPE.get(error_type, 500), "body": body}
    else:
        code, message = _UNANSWERED.get(kind, ("unknown_result", f"result type {kind!r}"))
        error = {"code": code, "message": message}
    out = {"id": line["custom_id"], "custom_id": line["custom_id"], "response": response}
    return orjson.dumps({**out, "error": error}, option=orjson.OPT_APPEND_NEWLINE)


class AnthropicBackend(BatchBackend):
    """`BatchBackend` over an `anthropic.Anthropic` client (see the module's docstring)."""

    inline_requests = True  # nothing is kept on the provider between upload and create

    def __init__(
        self, client: anthropic.Anthropic, *, unreachable_after: float = UNREACHABLE_AFTER_SECONDS
    ) -> None:
        self._client = client
        self.connection = ConnectionWatch(
            shown_url(str(client.base_url)), unreachable_after=unreachable_after
        )
        # No idempotency key for creates: never retried by the SDK (see BatchBackend).
        self._client_no_retry = client.with_options(max_retries=0)
        self._staged: dict[str, list[bytes]] = {}
        self._tags: dict[str, str | None] = {}  # an ended batch's tag, read once

    def __repr__(self) -> str:
        return f"{type(self).__name__}(base_url={str(self._client.base_url)!r})"

    @property
    def client(self) -> anthropic.Anthropic:
        """The SDK client, for calls this interface does not cover."""
        return self._client

    # -- requests ---------------------------------------------------------------------------

    def upload_file(self, content: BinaryIO, filename: str) -> FileInfo:
        """Stage the shard's request lines for `create_batch` (nothing is sent)."""
        lines = [line for line in content if line.strip()]
        file_id = STAGED_PREFIX + hashlib.sha256(filename.encode()).hexdigest()[:24]
        self._staged[file_id] = lines
        size = sum(map(len, lines))
        return FileInfo(file_id, filename, size, "batch", int(time.time()))

    def find_file(self, filename: str, *, created_after: int) -> FileInfo | None:
        return None  # nothing is stored on the provider before its batch

    def create_batch(
        self, *, input_file_id: str, endpoint: str, metadata: dict[str, str]
    ) -> BatchInfo:
        lines = self._staged.pop(input_file_id, None)
        if lines is None:
            raise NotFound(f"create a batch from {input_file_id} failed: not staged here")
        tag = submission_tag(metadata[SUBMISSION_METADATA_KEY])
        requests = [
            {"custom_id": request_id(tag, index), "params": orjson.loads(line)["body"]}
            for index, line in enumerate(lines)
        ]
        batch = self._call(
            f"create a message batch of {len(requests)} requests",
            self._client_no_retry.messages.batches.create,
            requests=requests,
        )
        self._tags[batch.id] = tag
        return batch_info_from_anthropic(batch)

    # -- batches ----------------------------------------------------------------------------

    def retrieve_batch(self, batch_id: str) -> BatchInfo:
        batch = self._call(
            f"retrieve batch {batch_id}", self._client.messages.batches.retrieve, batch_id
        )
        return batch_info_from_anthropic(batch)

    def iter_batches(
        self, *, created_after: int | None = None, page_size: int = 100
    ) -> Iterator[BatchInfo]:
        return created_since(map(batch_info_from_anthropic, self._pages(page_size)), created_after)

    def _pages(self, page_size: int) -> Iterator[MessageBatch]:
        """Every batch, newest first, one request per page, fetched as consumed."""
        after: str | None = None
        while True:
            cursor = {"after_id": after} if after else {}
            page = self._call(
                "list message batches",
                self._client.messages.batches.list,
                limit=page_size,
                **cursor,
            )
            yield from page.data
            if not page.data or not page.has_more:
                return
            after = page.data[-1].id

    def find_batch(
        self,
        *,
        metadata_key: str,
        metadata_value: str,
        created_after: int,
        requests: int | None = None,
        known: Collection[str] = (),
    ) -> BatchInfo | None:
        """The batch of the submission `metadata_value`, among those created since
        `created_after` with `requests` requests that are not `known` (to the ledger).

        TransientBackendError when such a batch has not ended: its results, which would say
        whose it is, are not out yet.
        """
        tag = submission_tag(metadata_value)
        undecided: list[str] = []
        for batch in self.iter_batches(created_after=created_after):
            if batch.id in known or (
                requests is not None and batch.request_counts.total != requests
            ):
                continue
            if batch.output_file_id is None:
                undecided.append(batch.id)
            elif self._tag_of(batch.id) == tag:
                return batch
        if undecided:
            raise TransientBackendError(
                f"batch {undecided[0]} was created since this shard's submission began and has "
                "not ended: its results will tell whether it is this shard's, so no other "
                "batch is made for it until then"
            )
        return None

    def _tag_of(self, batch_id: str) -> str | None:
        """The tag of an ended batch's requests, from its first result line."""
        if batch_id not in self._tags:
            first = next(self._result_lines(batch_id), None)
            self._tags[batch_id] = tag_of(orjson.loads(first)["custom_id"]) if first else None
        return self._tags[batch_id]

    def cancel_batch(self, batch_id: str) -> BatchInfo:
        batch = self._call(
            f"cancel batch {batch_id}", self._client.messages.batches.cancel, batch_id
        )
        return batch_info_from_anthropic(batch)

    # -- results ----------------------------------------------------------------------------

    def download_file(self, file_id: str, dest: BinaryIO) -> int:
        """Write an ended batch's results (`results:<batch id>`) as OpenAI output lines."""
        batch_id = file_id.removeprefix(RESULTS_PREFIX)
        written = 0
        for raw in self._result_lines(batch_id):
            line = result_as_output_line(raw)
            dest.write(line)
            written += len(line)
        return written

    def _result_lines(self, batch_id: str) -> Iterator[bytes]:
        """The raw result lines of an ended batch, streamed."""
        batches = self._client.messages.batches
        with contextlib.ExitStack() as stack:
            response = self._call(
                f"download the results of {batch_id}",
                lambda: stack.enter_context(batches.with_streaming_response.results(batch_id)),
            )
            for line in response.iter_lines():
                if line.strip():
                    yield line.encode() if isinstance(line, str) else line

    def delete_file(self, file_id: str) -> None:
        """Nothing to delete: Anthropic keeps a batch's results 29 days, then drops them."""

    def pipeline_ids(self, custom_ids: pa.Array, expected: pa.Array) -> pa.Array:
        """The pipeline's custom_ids of result lines (see `_anthropic_ids`)."""
        return pipeline_ids(custom_ids, expected)

    def unreachable(self) -> ServiceUnreachable | None:
        return self.connection.unreachable

    def close(self) -> None:
        self._client.close()

    # -- calls ------------------------------------------------------------------------------

    def _call(self, action: str, fn: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
        """Run one SDK call, turning its exceptions into the backend's own."""
        import anthropic

        errors = (anthropic.AnthropicError, httpx2.TransportError)
        translate = functools.partial(self._translate, action)
        return guarded_call(self.connection, errors, translate, fn, *args, **kwargs)

    def _translate(self, action: str, exc: Exception) -> BackendError:
        import anthropic

        secrets = [self._client.api_key]
        if isinstance(exc, anthropic.APIStatusError):
            self.connection.answered()
            status = exc.status_code
            body = exc.body if isinstance(exc.body, Mapping) else {}
            detail = body.get("error") if isinstance(body.get("error"), Mapping) else {}
            code = detail.get("type")
            text = f"{action} failed: HTTP {status}" + (f" ({code})" if code else "")
            if detail.get("message"):
                text += f": {str(detail['message'])[:_MAX_MESSAGE_CHARS]}"
            return status_error(redact(text, secrets), status, code)
        if isinstance(exc, anthropic.APIConnectionError | httpx2.TransportError):
            cause = (
                "timed out" if isinstance(exc, anthropic.APITimeoutError) else type(exc).__name__
            )
            return self.connection.no_answer(action, redact(cause, secrets))
        return BackendError(redact(f"{action} failed: {exc}"[:_MAX_MESSAGE_CHARS], secrets))


def make_anthropic_backend(
    spec: BackendSpec, *, env: Mapping[str, str] = os.environ, api_key: str | None = None
) -> AnthropicBackend:
    """The backend of a `provider: anthropic` spec; BackendError naming the variable when no
    key is set, or when the `anthropic` extra is not installed."""
    try:
        import anthropic
    except ImportError:
        raise BackendError(
            "backend.provider anthropic needs the anthropic SDK: "
            "pip install 'batch_pipeline[anthropic]'"
        ) from None
    # Named by the spec, else ANTHROPIC_API_KEY: an OpenAI key is never sent to Anthropic.
    variable = (
        spec.api_key_env if "api_key_env" in spec.model_fields_set else ANTHROPIC_KEY_VARIABLE
    )
    key = api_key or env.get(variable) or None
    if key is None:
        raise BackendError(
            f"the environment variable {variable} is not set; provider anthropic needs an "
            "API key in it"
        )
    client = anthropic.Anthropic(
        api_key=key,
        base_url=spec.base_url.removesuffix("/v1") if spec.base_url else None,
        max_retries=spec.max_retries,
        timeout=spec.request_timeout_seconds,
    )
    return AnthropicBackend(client, unreachable_after=spec.unreachable_after_seconds)
