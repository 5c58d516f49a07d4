"""The Message Batches routes of the Anthropic dialect (see `anthropic`): create, list,
retrieve, results, cancel and delete, on the engine that runs every batch."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from batch_pipeline.local_api._http import JSONResponse, int_param
from batch_pipeline.local_api.anthropic import (
    CUSTOM_ID_RE,
    RESULTS_KEPT_SECONDS,
    VERSION_HEADER,
    message_batch,
    processing_status,
    result_line,
    store_id,
    wire_id,
)
from batch_pipeline.local_api.batches_routes import begin_cancel, new_batch_record
from batch_pipeline.local_api.echo_messages import MESSAGES_ENDPOINT
from batch_pipeline.local_api.errors import ApiError
from batch_pipeline.local_api.faults import CreateRateLimit
from batch_pipeline.local_api.service import LocalBatchService
from batch_pipeline.local_api.store import BATCH_ID_RE

log = logging.getLogger(__name__)

MAX_LIST_LIMIT = 1000
RESULT_FILES = ("output_file_id", "error_file_id")


def _invalid(message: str) -> ApiError:
    return ApiError(400, message, type="invalid_request_error")


def require_version(request: Request) -> None:
    """Refuse, as Anthropic does, a call without the `anthropic-version` header."""
    if not request.headers.get(VERSION_HEADER):
        raise _invalid(f"{VERSION_HEADER}: header is required")


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 once it passes `limit` bytes."""
    too_large = ApiError(
        413, f"Request exceeds the maximum size of {limit} bytes.", type="request_too_large"
    )
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


def parse_requests(raw: bytes, max_requests: int) -> list[tuple[str, dict[str, Any]]]:
    """The (custom_id, params) of a create body, or the 400 of its first fault."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise _invalid("The request body is not valid JSON.") from None
    if not isinstance(body, dict):
        raise _invalid("The request body must be a JSON object.")
    for name in sorted(set(body) - {"requests"}):
        raise _invalid(f"{name[:64]}: Extra inputs are not permitted")
    requests = body.get("requests")
    if not isinstance(requests, list) or not requests:
        raise _invalid("requests: Field required (a non-empty list)")
    if len(requests) > max_requests:
        raise _invalid(
            f"requests: List should have at most {max_requests} items after validation, "
            f"not {len(requests)}"
        )
    seen: set[str] = set()
    parsed = []
    for index, item in enumerate(requests):
        where = f"requests.{index}"
        if not isinstance(item, dict):
            raise _invalid(f"{where}: Input should be a valid dictionary")
        for name in sorted(set(item) - {"custom_id", "params"}):
            raise _invalid(f"{where}.{name[:64]}: Extra inputs are not permitted")
        custom_id, params = item.get("custom_id"), item.get("params")
        if not isinstance(custom_id, str) or not CUSTOM_ID_RE.match(custom_id):
            raise _invalid(
                f"{where}.custom_id: String should match pattern '^[a-zA-Z0-9_-]{{1,64}}$'"
            )
        if custom_id in seen:
            raise _invalid(
                f"{where}.custom_id: Duplicate custom_id '{custom_id}': every request of a "
                "Message Batch needs its own"
            )
        seen.add(custom_id)
        if not isinstance(params, dict):
            raise _invalid(f"{where}.params: Field required (an object)")
        parsed.append((custom_id, params))
    return parsed


class MessageBatchesRoutes:
    """The handlers of /v1/messages/batches and the paths below it."""

    def __init__(self, service: LocalBatchService) -> None:
        self.service = service
        self.settings = service.settings
        self._create_fault = CreateRateLimit(
            self.settings.fault_create_429_every,
            "Number of request tokens has exceeded your rate limit",
            type="rate_limit_error",
        )

    async def create(self, request: Request) -> Response:
        """POST /v1/messages/batches: the inline requests become a batch of the engine."""
        self._create_fault.check()
        raw = await read_body(request, self.settings.anthropic_max_batch_bytes)
        record = await run_in_threadpool(self._create, raw)
        log.info("message batch %s created (%d requests)", record["id"], record["_requests"])
        self.service.running_engine.submit(record["id"])
        return JSONResponse(message_batch(record, None, str(request.base_url)))

    def _create(self, raw: bytes) -> dict[str, Any]:
        limit = self.settings.anthropic_max_requests_per_batch
        requests = parse_requests(raw, limit)
        store = self.service.running_store
        path = store.new_tmp_path(".jsonl")
        try:
            with open(path, "wb") as out:
                for custom_id, params in requests:
                    line = {
                        "custom_id": custom_id,
                        "method": "POST",
                        "url": MESSAGES_ENDPOINT,
                        "body": params,
                    }
                    out.write(orjson.dumps(line, option=orjson.OPT_APPEND_NEWLINE))
            record = new_batch_record(
                store.new_batch_id(),
                MESSAGES_ENDPOINT,
                None,
                self.settings.completion_window_seconds,
                _dialect="anthropic",
                _requests=len(requests),
                _max_requests=limit,
                _max_bytes=max(path.stat().st_size, self.settings.anthropic_max_batch_bytes),
                _output_expires_after_seconds=RESULTS_KEPT_SECONDS,
            )
            return store.add_inline_batch(record, path)
        finally:
            path.unlink(missing_ok=True)

    async def list_batches(self, request: Request) -> Response:
        """GET /v1/messages/batches: a page, newest first (`after_id`: older, `before_id`:
        newer than the cursor)."""
        limit = int_param(request, "limit", 20, 1, MAX_LIST_LIMIT)
        after, before = self._cursor(request, "after_id"), self._cursor(request, "before_id")
        page, has_more = self.service.running_store.list_batches(
            after=after, before=before, limit=limit, anthropic=True
        )
        base = str(request.base_url)
        # Counting an ended batch's results the first time reads its files: off the loop.
        data = await run_in_threadpool(
            lambda: [message_batch(r, self._counts(r), base) for r in page]
        )
        return JSONResponse(
            {
                "data": data,
                "has_more": has_more,
                "first_id": data[0]["id"] if data else None,
                "last_id": data[-1]["id"] if data else None,
            }
        )

    @staticmethod
    def _cursor(request: Request, name: str) -> str | None:
        raw = request.query_params.get(name)
        if not raw:
            return None
        cursor = store_id(raw)
        if cursor is None or not BATCH_ID_RE.match(cursor):
            raise _invalid(f"{name}: not a Message Batch id")
        return cursor

    def _batch(self, request: Request) -> dict[str, Any]:
        batch_id = request.path_params["batch_id"]
        engine_id = store_id(batch_id)
        record = self.service.running_store.get_batch(engine_id) if engine_id else None
        if record is None or record.get("_dialect") != "anthropic":
            raise ApiError(404, f"No Message Batch with id {batch_id[:80]!r}.")
        return record

    def _ended(self, request: Request, otherwise: str) -> dict[str, Any]:
        """The batch asked for, refused with `otherwise` unless it has ended."""
        record = self._batch(request)
        if processing_status(record) != "ended":
            raise _invalid(f"Message Batch {wire_id(record['id'])} {otherwise}.")
        return record

    async def retrieve(self, request: Request) -> Response:
        """GET /v1/messages/batches/{batch_id}."""
        record = self._batch(request)
        counts = await run_in_threadpool(self._counts, record)
        return JSONResponse(message_batch(record, counts, str(request.base_url)))

    async def cancel(self, request: Request) -> Response:
        """POST .../cancel: `canceling` now, `ended` once the requests sent have drained; the
        requests not done end `canceled`."""
        record = self._batch(request)
        updated = await begin_cancel(self.service, record["id"])
        if updated is not None:
            return JSONResponse(message_batch(updated, None, str(request.base_url)))
        record = self._batch(request)
        if record["status"] not in ("cancelling", "cancelled"):
            raise _invalid(
                f"Message Batch {wire_id(record['id'])} has ended; it cannot be canceled."
            )
        counts = await run_in_threadpool(self._counts, record)
        return JSONResponse(message_batch(record, counts, str(request.base_url)))

    async def delete(self, request: Request) -> Response:
        """DELETE /v1/messages/batches/{batch_id}: an ended batch and its results."""
        record = self._ended(request, "is still processing: cancel it, and delete it once ended")
        store = self.service.running_store
        for name in RESULT_FILES:
            if record.get(name):
                await run_in_threadpool(store.delete_file, record[name])
        await run_in_threadpool(store.delete_batch, record["id"])
        return JSONResponse({"id": wire_id(record["id"]), "type": "message_batch_deleted"})

    async def results(self, request: Request) -> Response:
        """GET .../results: the results of an ended batch, one JSON line per request."""
        record = self._ended(request, "has not ended yet; its results come once it has")
        paths = self._result_paths(record)
        return StreamingResponse(_result_lines(paths), media_type="application/binary")

    def _result_paths(self, record: dict[str, Any]) -> list[Path]:
        """Private names of the batch's result files (404 once they are gone)."""
        store = self.service.running_store
        paths = []
        for name in RESULT_FILES:
            if not record.get(name):
                continue
            path = store.download_path(record[name])
            if path is None:
                for taken in paths:
                    taken.unlink(missing_ok=True)
                raise ApiError(404, f"The results of {wire_id(record['id'])} are no longer kept.")
            paths.append(path)
        return paths

    def _counts(self, record: dict[str, Any]) -> dict[str, int] | None:
        """An ended batch's results by type (counted once, then kept in its record)."""
        if processing_status(record) != "ended":
            return None
        if record.get("_anthropic_counts"):
            return record["_anthropic_counts"]
        counts = dict.fromkeys(("processing", "succeeded", "errored", "canceled", "expired"), 0)
        with contextlib.suppress(ApiError):
            for path in self._result_paths(record):
                for _line, kind in _converted(path):
                    counts[kind] += 1
        # Requests of a batch that failed as a whole have no result line: errored.
        counts["errored"] += max(0, record.get("_requests", 0) - sum(counts.values()))
        self.service.running_store.update_batch(record["id"], _anthropic_counts=counts)
        return counts


def _converted(path: Path) -> Iterator[tuple[bytes, str]]:
    """The Message Batch lines of one engine result file; the file is removed after."""
    try:
        with open(path, "rb") as lines:
            for raw in lines:
                if raw.strip():
                    yield result_line(raw)
    finally:
        path.unlink(missing_ok=True)


def _result_lines(paths: list[Path]) -> Iterator[bytes]:
    try:
        for path in paths:
            for line, _kind in _converted(path):
                yield line
    finally:  # a client that stops reading leaves no private names behind
        for path in paths:
            path.unlink(missing_ok=True)
