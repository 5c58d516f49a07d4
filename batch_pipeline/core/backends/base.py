"""The provider-neutral interface to a Files + Batches API, and the errors it raises.

Every provider (OpenAI, Azure OpenAI, the local service, Anthropic's Message Batches)
implements `BatchBackend`, parses payloads once into `BatchInfo`/`FileInfo`, and turns its
SDK's exceptions into the ones below, so callers decide "retry later" or "give up" without
knowing any SDK.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, BinaryIO, Protocol, TypeVar, runtime_checkable
from urllib.parse import urlsplit, urlunsplit

from batch_pipeline.core.types import BatchInfo, BatchStatus, FileInfo

if TYPE_CHECKING:
    import pyarrow as pa

    from batch_pipeline.core.spec import BackendSpec

_T = TypeVar("_T")

COMPLETION_WINDOW = "24h"
ANTHROPIC_KEY_VARIABLE = "ANTHROPIC_API_KEY"
# A client that has had no answer from its service for this long gives up (see ConnectionWatch).
UNREACHABLE_AFTER_SECONDS = 600.0

# Codes in a failed batch's `errors.data[]` that say "not now" rather than "never":
# the same input file can be submitted again later.
TRANSIENT_BATCH_ERROR_CODES = frozenset(
    {
        "token_limit_exceeded",
        "rate_limit_exceeded",
        "requests_limit_exceeded",
        "server_error",
        "internal_error",
        "service_unavailable",
        "timeout",
    }
)


class BackendError(Exception):
    """A provider call that failed; the message never contains a secret.

    `status_code` is the HTTP status when there was an answer, `code` the provider's error
    code when it gave one.
    """

    def __init__(
        self, message: str, *, status_code: int | None = None, code: str | None = None
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.code = code


class TransientBackendError(BackendError):
    """Worth retrying later: connection errors, timeouts, HTTP 5xx, 429 rate limits."""


class ServiceUnreachable(TransientBackendError):
    """No answer from the service at all: at a client's first call, or for longer than its
    bound. The message names the base URL and the cause. A poll may try again later; a
    command stops with it."""


class ConnectionWatch:
    """Tells a passing connection failure from a service that is not there.

    A failure to get any HTTP answer is `ServiceUnreachable` before the first answer, or once
    `unreachable_after` seconds have passed since the last one; in between it is an ordinary
    `TransientBackendError`, retried later (a service restarting in the middle of a long run).
    """

    def __init__(
        self,
        base_url: str,
        *,
        unreachable_after: float = UNREACHABLE_AFTER_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.base_url = base_url
        self.unreachable_after = unreachable_after
        self._clock = clock
        self._last_answer: float | None = None
        self.unreachable: ServiceUnreachable | None = None  # until the next answer

    def answered(self) -> None:
        """The service answered (any HTTP status): it is there."""
        self._last_answer = self._clock()
        self.unreachable = None

    def no_answer(self, action: str, cause: str) -> TransientBackendError:
        """The error for a call that got no answer, `cause` saying why."""
        if self._last_answer is None:
            error = ServiceUnreachable(
                f"cannot connect to the Batch API at {self.base_url}: connection error "
                f"({cause}) on the first call ({action})"
            )
        elif (silent := self._clock() - self._last_answer) > self.unreachable_after:
            error = ServiceUnreachable(
                f"no answer from the Batch API at {self.base_url} for {silent:.0f} s "
                f"(the limit is {self.unreachable_after:.0f} s): connection error ({cause})"
            )
        else:
            return TransientBackendError(f"{action} failed: connection error ({cause})")
        self.unreachable = error
        return error


class NotFound(BackendError):
    """The file or batch does not exist (HTTP 404)."""


@runtime_checkable
class BatchBackend(Protocol):
    """A provider's Files + Batches API, in the terms the pipeline needs."""

    def upload_file(self, content: BinaryIO, filename: str) -> FileInfo:
        """Upload a JSONL request file with purpose `batch`, streamed from `content` (a
        seekable binary file, as a storage root opens one)."""
        ...

    def find_file(self, filename: str, *, created_after: int) -> FileInfo | None:
        """The newest `batch` file named `filename` created at or after `created_after`.

        Finds an upload that a crashed process already made, so it is not uploaded twice.
        """
        ...

    def create_batch(
        self, *, input_file_id: str, endpoint: str, metadata: dict[str, str]
    ) -> BatchInfo:
        """Create a batch with a 24 h completion window.

        Never retried inside the backend: after a `TransientBackendError` the caller must
        look with `find_batch` first, or it may pay for a second batch.
        """
        ...

    def retrieve_batch(self, batch_id: str) -> BatchInfo:
        """The batch as it stands now."""
        ...

    def iter_batches(
        self, *, created_after: int | None = None, page_size: int = 100
    ) -> Iterator[BatchInfo]:
        """All batches, newest first, stopping at the first created before `created_after`.

        One request per page, so a poller updates many in-flight batches cheaply.
        """
        ...

    def find_batch(
        self, *, metadata_key: str, metadata_value: str, created_after: int
    ) -> BatchInfo | None:
        """The newest batch created since `created_after` whose metadata carries the pair.

        Finds a batch a crashed process already created for a shard (idempotent submission).
        This default looks through `iter_batches`.
        """
        batches = self.iter_batches(created_after=created_after)
        return find_in_pages(batches, metadata_key, metadata_value)

    def cancel_batch(self, batch_id: str) -> BatchInfo:
        """Ask the provider to cancel; the batch passes through `cancelling`."""
        ...

    def download_file(self, file_id: str, dest: BinaryIO) -> int:
        """Stream a file's content into `dest` in chunks; returns the bytes written.

        On error `dest` may hold part of the content: write to a temporary file.
        """
        ...

    def delete_file(self, file_id: str) -> None:
        """Delete a file (inputs once their batch is terminal, outputs once parsed)."""
        ...

    def pipeline_ids(self, custom_ids: pa.Array, expected: pa.Array) -> pa.Array:
        """The pipeline's custom_ids of result lines whose ids on the provider are
        `custom_ids`, given the shard's requests' ids in line order (`expected`). This default
        serves providers that take the pipeline's ids as they are."""
        return custom_ids

    def unreachable(self) -> ServiceUnreachable | None:
        """The error of a service that has given no answer past the backend's bound, else None.

        Polls retry such a service; a run that waits on it stops with this error.
        """
        ...

    def close(self) -> None:
        """Release connections."""
        ...


def is_transient_batch_failure(batch: BatchInfo) -> bool:
    """True if a `failed` batch failed for a reason that passes (token or rate limits).

    Such a batch never ran: its shard can be submitted again once the enqueued tokens drain.
    A batch that failed validation (bad lines, wrong model) is not transient.
    """
    if batch.status is not BatchStatus.FAILED or not batch.errors:
        return False
    return all(error.code in TRANSIENT_BATCH_ERROR_CODES for error in batch.errors)


def cancel_or_read(backend: BatchBackend, batch_id: str) -> BatchInfo:
    """Ask the provider to cancel, and return the batch as it then stands.

    A batch already finalizing or finished cannot be cancelled (HTTP 409): it is read back
    instead, and its results are collected as they come. Transient errors, and refusals of a
    batch that could still be cancelled, are raised.
    """
    try:
        return backend.cancel_batch(batch_id)
    except TransientBackendError:
        raise
    except BackendError:
        batch = backend.retrieve_batch(batch_id)
        if batch.status is not BatchStatus.FINALIZING and not batch.status.is_terminal:
            raise
        return batch


def created_since(batches: Iterable[BatchInfo], created_after: int | None) -> Iterator[BatchInfo]:
    """The batches of a newest-first listing, up to the first created before `created_after`."""
    for batch in batches:
        if created_after is not None and batch.created_at < created_after:
            return
        yield batch


def find_in_pages(batches: Iterable[BatchInfo], key: str, value: str) -> BatchInfo | None:
    """The first batch whose metadata maps `key` to `value`."""
    return next((batch for batch in batches if batch.metadata.get(key) == value), None)


_KEY_LIKE = re.compile(r"\b(?:sk|rk|pk|sess)-[A-Za-z0-9_\-*.]{3,}|\bBearer\s+\S+", re.IGNORECASE)


def redact(text: str, secrets: Iterable[str | None] = ()) -> str:
    """`text` with the given secrets and anything shaped like an API key replaced by `***`.

    Providers echo (parts of) a refused key in their error messages.
    """
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return _KEY_LIKE.sub("***", text)


def status_error(text: str, status: int, code: str | None) -> BackendError:
    """The error of a call answered with HTTP `status`: NotFound for 404, transient for 408,
    429 and 5xx, final otherwise."""
    if status == 404:
        return NotFound(text, status_code=status, code=code)
    if status in (408, 429) or status >= 500:
        return TransientBackendError(text, status_code=status, code=code)
    return BackendError(text, status_code=status, code=code)


def guarded_call(
    connection: ConnectionWatch,
    errors: tuple[type[BaseException], ...],
    translate: Callable[[Any], BackendError],
    fn: Callable[..., _T],
    *args: Any,
    **kwargs: Any,
) -> _T:
    """Run one SDK call; an SDK error (`errors`) becomes the backend's own, by `translate`.

    The backend's error is raised outside the `except`, so the SDK exception (which holds
    the request, and so the key) is not chained as its context.
    """
    try:
        result = fn(*args, **kwargs)
    except errors as exc:
        error = translate(exc)
    else:
        connection.answered()
        return result
    raise error


def shown_url(url: str) -> str:
    """A base URL as a message may show it: no user, password or query."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"[{host}]" if ":" in host else host
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def key_variable(spec: BackendSpec) -> str | None:
    """The environment variable the API key is read from. None for a local service whose
    spec names no variable itself: the default OPENAI_API_KEY, a real key, is never sent to
    a local service by accident."""
    if spec.provider == "local" and "api_key_env" not in spec.model_fields_set:
        return None
    if spec.provider == "anthropic" and "api_key_env" not in spec.model_fields_set:
        return ANTHROPIC_KEY_VARIABLE  # an OpenAI key is never sent to Anthropic
    return spec.api_key_env
