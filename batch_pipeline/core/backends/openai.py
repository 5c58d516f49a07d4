"""OpenAI, Azure OpenAI and the local service, through the official `openai` SDK.

All three speak the same Files + Batches API; `make_backend` builds the right SDK client
from a `BackendSpec`, reading the key from the environment variable the spec names.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

import httpx2
import openai
from openai.types import Batch, FileObject

from batch_pipeline.core.backends.base import (
    COMPLETION_WINDOW,
    UNREACHABLE_AFTER_SECONDS,
    BackendError,
    BatchBackend,
    ConnectionWatch,
    ServiceUnreachable,
    created_since,
    guarded_call,
    key_variable,
    redact,
    shown_url,
    status_error,
)
from batch_pipeline.core.spec import BackendSpec
from batch_pipeline.core.types import BatchError, BatchInfo, BatchStatus, FileInfo, RequestCounts

LOCAL_BASE_URL = "http://127.0.0.1:8780/v1"
LOCAL_PLACEHOLDER_KEY = "local-no-key"
DOWNLOAD_CHUNK_BYTES = 1024 * 1024
FILE_PAGE_SIZE = 100
_MAX_MESSAGE_CHARS = 500

_T = TypeVar("_T")


def batch_info_from_openai(batch: Batch) -> BatchInfo:
    """Parse an SDK `Batch` payload into the core's `BatchInfo`."""
    try:
        status = BatchStatus(batch.status)
    except ValueError:
        raise BackendError(f"batch {batch.id} has an unknown status {batch.status!r}") from None
    counts = batch.request_counts
    errors = batch.errors.data if batch.errors and batch.errors.data else []
    return BatchInfo(
        id=batch.id,
        status=status,
        endpoint=batch.endpoint,
        input_file_id=batch.input_file_id,
        created_at=batch.created_at,
        output_file_id=batch.output_file_id or None,
        error_file_id=batch.error_file_id or None,
        request_counts=RequestCounts(
            total=counts.total, completed=counts.completed, failed=counts.failed
        )
        if counts
        else RequestCounts(),
        errors=tuple(
            BatchError(code=e.code, message=e.message or "", line=e.line, param=e.param)
            for e in errors
        ),
        metadata={str(k): str(v) for k, v in (batch.metadata or {}).items()},
        input_tokens=batch.usage.input_tokens if batch.usage else None,
        output_tokens=batch.usage.output_tokens if batch.usage else None,
        expires_at=batch.expires_at,
    )


def file_info_from_openai(file: FileObject) -> FileInfo:
    """Parse an SDK `FileObject` payload into the core's `FileInfo`."""
    return FileInfo(
        id=file.id,
        filename=file.filename,
        bytes=file.bytes or 0,
        purpose=file.purpose,
        created_at=file.created_at,
    )


class OpenAIBackend(BatchBackend):
    """`BatchBackend` over an `openai.OpenAI` (or `AzureOpenAI`) client.

    SDK errors become `BackendError`s whose text is redacted of the client's key and raised
    without the SDK exception attached (it holds the request, and so the key). Calls that get
    no answer are judged by `connection` (see `ConnectionWatch`).
    """

    def __init__(
        self, client: openai.OpenAI, *, unreachable_after: float = UNREACHABLE_AFTER_SECONDS
    ) -> None:
        self._client = client
        self.connection = ConnectionWatch(
            shown_url(str(client.base_url)), unreachable_after=unreachable_after
        )
        # The API has no idempotency key for creates: a retry after a lost answer would
        # create (and bill) a second batch, so creates are never retried by the SDK.
        self._client_no_retry = client.with_options(max_retries=0)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(base_url={str(self._client.base_url)!r})"

    @property
    def client(self) -> openai.OpenAI:
        """The SDK client, for calls this interface does not cover."""
        return self._client

    def upload_file(self, content: BinaryIO | Path, filename: str) -> FileInfo:
        """`content`: a binary file, or the path of a local one."""
        with contextlib.ExitStack() as stack:
            if isinstance(content, Path):
                content = stack.enter_context(content.open("rb"))
            # A file handle is streamed by the HTTP layer in chunks (and rewound on retry).
            uploaded = self._call(
                f"upload {filename}",
                self._client.files.create,
                file=(filename, content, "application/jsonl"),
                purpose="batch",
            )
        return file_info_from_openai(uploaded)

    def find_file(self, filename: str, *, created_after: int) -> FileInfo | None:
        for file in self._iter_files(created_after=created_after):
            if file.filename == filename:
                return file
        return None

    def create_batch(
        self, *, input_file_id: str, endpoint: str, metadata: dict[str, str]
    ) -> BatchInfo:
        batch = self._call(
            f"create a batch from {input_file_id}",
            self._client_no_retry.batches.create,
            input_file_id=input_file_id,
            endpoint=endpoint,  # type: ignore[arg-type]  # compatible services take more
            completion_window=COMPLETION_WINDOW,
            metadata=metadata,
        )
        return batch_info_from_openai(batch)

    def retrieve_batch(self, batch_id: str) -> BatchInfo:
        batch = self._call(f"retrieve batch {batch_id}", self._client.batches.retrieve, batch_id)
        return batch_info_from_openai(batch)

    def iter_batches(
        self, *, created_after: int | None = None, page_size: int = 100
    ) -> Iterator[BatchInfo]:
        pages = self._pages("list batches", self._client.batches.list, limit=page_size)
        return created_since(map(batch_info_from_openai, pages), created_after)

    def cancel_batch(self, batch_id: str) -> BatchInfo:
        batch = self._call(f"cancel batch {batch_id}", self._client.batches.cancel, batch_id)
        return batch_info_from_openai(batch)

    def download_file(self, file_id: str, dest: BinaryIO) -> int:
        def stream() -> int:
            written = 0
            with self._client.files.with_streaming_response.content(file_id) as response:
                for chunk in response.iter_bytes(DOWNLOAD_CHUNK_BYTES):
                    dest.write(chunk)
                    written += len(chunk)
            return written

        return self._call(f"download file {file_id}", stream)

    def delete_file(self, file_id: str) -> None:
        self._call(f"delete file {file_id}", self._client.files.delete, file_id)

    def unreachable(self) -> ServiceUnreachable | None:
        return self.connection.unreachable

    def close(self) -> None:
        self._client.close()

    def _iter_files(self, *, created_after: int) -> Iterator[FileInfo]:
        pages = self._pages(
            "list files",
            self._client.files.list,
            purpose="batch",
            order="desc",
            limit=FILE_PAGE_SIZE,
        )
        for file in pages:
            info = file_info_from_openai(file)
            if info.created_at < created_after:
                return
            yield info

    def _pages(self, action: str, list_page: Callable[..., Any], **params: Any) -> Iterator[Any]:
        """The items of a cursor-paged list, one request per page, fetched as consumed."""
        after: str | None = None
        while True:
            cursor = {"after": after} if after else {}
            page = self._call(action, list_page, **params, **cursor)
            yield from page.data
            if not page.data or not page.has_more:
                return
            after = page.data[-1].id

    def _call(self, action: str, fn: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
        """Run one SDK call, turning its exceptions into the backend's own."""
        errors = (openai.OpenAIError, httpx2.TransportError)
        translate = functools.partial(self._translate, action)
        return guarded_call(self.connection, errors, translate, fn, *args, **kwargs)

    def _translate(self, action: str, exc: Exception) -> BackendError:
        secrets = [self._client.api_key]
        if isinstance(exc, openai.APIStatusError):
            self.connection.answered()
            status = exc.status_code
            body = exc.body if isinstance(exc.body, Mapping) else {}
            code = body.get("code") or body.get("type")
            text = f"{action} failed: HTTP {status}"
            if code:
                text += f" ({code})"
            if body.get("message"):
                text += f": {str(body['message'])[:_MAX_MESSAGE_CHARS]}"
            text = redact(text, secrets)
            return status_error(text, status, str(code) if code else None)
        if isinstance(exc, openai.APIConnectionError | httpx2.TransportError):
            return self.connection.no_answer(action, redact(_no_answer_cause(exc), secrets))
        return BackendError(redact(f"{action} failed: {exc}"[:_MAX_MESSAGE_CHARS], secrets))


def _no_answer_cause(exc: Exception) -> str:
    """Why a call got no answer, in the HTTP layer's words ("ConnectError: [Errno 111]
    Connection refused"), not the SDK's bare "Connection error."."""
    if isinstance(exc, openai.APITimeoutError | httpx2.TimeoutException):
        return "timed out"
    cause = (exc.__cause__ or exc) if isinstance(exc, openai.APIConnectionError) else exc
    text = " ".join(str(cause).split())[:_MAX_MESSAGE_CHARS]
    return f"{type(cause).__name__}: {text}" if text else type(cause).__name__


def make_backend(
    spec: BackendSpec,
    *,
    env: Mapping[str, str] = os.environ,
    api_key: str | None = None,
) -> BatchBackend:
    """Build the backend a spec describes; the key comes from `key_variable(spec)`, or is
    `api_key` itself when the caller holds it (a Dagster resource's `EnvVar` field).

    Refuses to start without a key, naming the variable, when the spec's provider needs one:
    `openai` and `azure` always, `local` when its spec names a variable (a service with
    auth). A `local` spec naming none sends a placeholder.
    `spec.unreachable_after_seconds` bounds how long the backend goes without an answer
    before its calls raise `ServiceUnreachable`. `provider: anthropic` gets the
    `AnthropicBackend` (its SDK imported only then).
    """
    if spec.provider == "anthropic":
        from batch_pipeline.core.backends.anthropic import make_anthropic_backend

        return make_anthropic_backend(spec, env=env, api_key=api_key)
    variable = key_variable(spec)
    key = api_key or ((env.get(variable) or None) if variable else None)
    if key is None and variable is not None:
        raise BackendError(
            f"the environment variable {variable} is not set; "
            f"provider {spec.provider} needs an API key in it"
        )
    common: dict[str, Any] = {
        "organization": spec.organization,
        "project": spec.project,
        "max_retries": spec.max_retries,
        "timeout": spec.request_timeout_seconds,
    }
    if spec.provider == "azure":
        client: openai.OpenAI = openai.AzureOpenAI(
            azure_endpoint=spec.azure_endpoint,
            api_version=spec.api_version,
            api_key=key,
            **common,
        )
    elif spec.provider == "local":
        client = openai.OpenAI(
            api_key=key or LOCAL_PLACEHOLDER_KEY,
            base_url=spec.base_url or LOCAL_BASE_URL,
            **common,
        )
    else:
        client = openai.OpenAI(api_key=key, base_url=spec.base_url, **common)
    return OpenAIBackend(client, unreachable_after=spec.unreachable_after_seconds)
