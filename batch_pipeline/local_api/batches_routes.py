"""The Batches API routes: create, list, retrieve and cancel batches."""

from __future__ import annotations

import logging
import time
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from batch_pipeline.local_api._http import (
    JSONResponse,
    cursor_param,
    int_param,
    json_object,
    list_body,
)
from batch_pipeline.local_api.azure import is_azure_path, with_v1
from batch_pipeline.local_api.errors import ApiError
from batch_pipeline.local_api.faults import CreateRateLimit
from batch_pipeline.local_api.file_form import expires_after_seconds
from batch_pipeline.local_api.files_routes import no_such_file
from batch_pipeline.local_api.service import LocalBatchService
from batch_pipeline.local_api.store import BATCH_ID_RE, public
from batch_pipeline.local_api.validation import SUPPORTED_ENDPOINTS

log = logging.getLogger(__name__)

CREATE_BATCH_FIELDS = frozenset(
    {"input_file_id", "endpoint", "completion_window", "metadata", "output_expires_after"}
)
REQUIRED_FIELDS = ("input_file_id", "endpoint", "completion_window")
MAX_METADATA_KEYS = 16
MAX_METADATA_KEY_CHARS = 64
MAX_METADATA_VALUE_CHARS = 512


def _invalid(message: str, param: str, code: str = "invalid_value") -> ApiError:
    return ApiError(400, message, param=param, code=code)


def _check_fields(body: dict[str, Any]) -> None:
    """No unknown field; every required one a string."""
    unknown = sorted(set(body) - CREATE_BATCH_FIELDS)
    if unknown:
        raise ApiError(
            400,
            f"Unrecognized request argument supplied: {unknown[0][:64]}",
            param=unknown[0][:64],
            code="unknown_parameter",
        )
    for name in REQUIRED_FIELDS:
        if body.get(name) is None:
            raise _invalid(
                f"Missing required parameter: '{name}'.", name, "missing_required_parameter"
            )
        if not isinstance(body[name], str):
            raise _invalid(f"Invalid '{name}': expected a string.", name, "invalid_type")


def _endpoint(body: dict[str, Any], azure: bool) -> str:
    """The batch's endpoint (with `/v1`, which Azure's may leave out), if supported."""
    endpoint = with_v1(body["endpoint"]) if azure else body["endpoint"]
    if endpoint not in SUPPORTED_ENDPOINTS:
        raise _invalid(
            f"Invalid 'endpoint': expected one of {', '.join(SUPPORTED_ENDPOINTS)}.", "endpoint"
        )
    if body["completion_window"] != "24h":
        raise _invalid("Invalid 'completion_window': only '24h' is supported.", "completion_window")
    return endpoint


def _validate_metadata(metadata: Any) -> dict[str, str] | None:
    if metadata is None:
        return None
    if not isinstance(metadata, dict):
        raise _invalid(
            "Invalid 'metadata': expected an object of strings.", "metadata", "invalid_type"
        )
    if len(metadata) > MAX_METADATA_KEYS:
        raise _invalid("Invalid 'metadata': at most 16 keys.", "metadata")
    for key, value in metadata.items():
        if len(key) > MAX_METADATA_KEY_CHARS:
            raise _invalid("Invalid 'metadata': keys are at most 64 characters.", "metadata")
        if not isinstance(value, str):
            raise _invalid(
                "Invalid 'metadata': values must be strings.", "metadata", "invalid_type"
            )
        if len(value) > MAX_METADATA_VALUE_CHARS:
            raise _invalid("Invalid 'metadata': values are at most 512 characters.", "metadata")
    return metadata


def _batch_body(record: dict[str, Any]) -> dict[str, Any]:
    """A batch's wire form, its endpoint written as it was sent."""
    body = public(record)
    body["endpoint"] = record.get("_endpoint_sent", record["endpoint"])
    return body


def _azure_batch_fields(endpoint_sent: str, max_requests: int) -> dict[str, Any]:
    """What a batch created through the Azure paths keeps besides: the endpoint as sent,
    Azure's request limit, and that its lines may name their url without `/v1`."""
    return {"_endpoint_sent": endpoint_sent, "_max_requests": max_requests, "_dialect": "azure"}


def new_batch_record(
    batch_id: str, endpoint: str, input_file_id: str, window: float, **fields: Any
) -> dict[str, Any]:
    """The record of a batch just created: validating, due `window` seconds from now."""
    now = time.time()
    return {
        "id": batch_id,
        "object": "batch",
        "endpoint": endpoint,
        "model": None,
        "errors": None,
        "input_file_id": input_file_id,
        "completion_window": "24h",
        "status": "validating",
        "output_file_id": None,
        "error_file_id": None,
        "created_at": int(now),
        "in_progress_at": None,
        "expires_at": int(now + window),
        "finalizing_at": None,
        "completed_at": None,
        "failed_at": None,
        "expired_at": None,
        "cancelling_at": None,
        "cancelled_at": None,
        "request_counts": {"total": 0, "completed": 0, "failed": 0},
        "usage": None,
        "metadata": None,
        "_deadline": now + window,
        **fields,
    }


async def begin_cancel(service: LocalBatchService, batch_id: str) -> dict[str, Any] | None:
    """Make a validating or running batch `cancelling` and have the engine drain it: its
    record now, or None if it was neither (ended, or cancelling already)."""
    updated = await run_in_threadpool(
        lambda: service.running_store.update_batch(
            batch_id,
            expect={"validating", "in_progress"},
            status="cancelling",
            cancelling_at=int(time.time()),
        )
    )
    if updated is not None:
        log.info("batch %s -> cancelling", batch_id)
        service.running_engine.cancel(batch_id)
    return updated


class BatchesRoutes:
    """The handlers of /batches, /batches/{batch_id} and /batches/{batch_id}/cancel."""

    def __init__(self, service: LocalBatchService) -> None:
        self.service = service
        self.settings = service.settings
        self._create_fault = CreateRateLimit(
            self.settings.fault_create_429_every,
            "Rate limit reached for batch creation, please try again in 1s",
            type="requests",
            code="rate_limit_exceeded",
        )

    async def create_batch(self, request: Request) -> Response:
        """POST /batches: a batch of an uploaded input file, handed to the engine."""
        self._create_fault.check()
        body = await json_object(request)
        _check_fields(body)
        azure = is_azure_path(request.url.path)
        endpoint = _endpoint(body, azure)
        fields: dict[str, Any] = {
            "metadata": _validate_metadata(body.get("metadata")),
            "_output_expires_after_seconds": expires_after_seconds(
                body.get("output_expires_after"), "output_expires_after"
            ),
        }
        input_file_id = body["input_file_id"]
        self._check_input_file(input_file_id)
        if azure:
            fields.update(
                _azure_batch_fields(body["endpoint"], self.settings.azure_max_requests_per_batch)
            )
        store = self.service.running_store
        record = new_batch_record(
            store.new_batch_id(),
            endpoint,
            input_file_id,
            self.settings.completion_window_seconds,
            **fields,
        )
        added = await run_in_threadpool(store.add_batch, record)
        if added is None:  # deleted since it was looked up
            raise no_such_file(input_file_id[:64], "input_file_id")
        log.info("batch %s created (%s, input %s)", added["id"], endpoint, input_file_id)
        self.service.running_engine.submit(added["id"])
        return JSONResponse(_batch_body(added))

    def _check_input_file(self, input_file_id: str) -> None:
        """The input file is live and meant for batches."""
        input_file = self.service.running_store.get_file(input_file_id)
        if input_file is None:
            raise no_such_file(input_file_id[:64], "input_file_id")
        if input_file["purpose"] != "batch":
            raise _invalid(
                f"The input file must have purpose 'batch', not '{input_file['purpose']}'.",
                "input_file_id",
                "invalid_file_purpose",
            )

    async def list_batches(self, request: Request) -> Response:
        """GET /batches: a page of batches, newest first."""
        limit = int_param(request, "limit", 20, 1, 100)
        after = cursor_param(request, "after", BATCH_ID_RE)
        page, has_more = self.service.running_store.list_batches(after=after, limit=limit)
        return JSONResponse(list_body([_batch_body(r) for r in page], has_more))

    def _batch(self, request: Request) -> dict[str, Any]:
        batch_id = request.path_params["batch_id"]
        record = self.service.running_store.get_batch(batch_id)
        if record is None:
            raise ApiError(404, "No such Batch object.", param="batch_id")
        return record

    async def retrieve_batch(self, request: Request) -> Response:
        """GET /batches/{batch_id}."""
        return JSONResponse(_batch_body(self._batch(request)))

    async def cancel_batch(self, request: Request) -> Response:
        """POST /batches/{batch_id}/cancel: cancelling now, cancelled once it has drained."""
        record = self._batch(request)
        updated = await begin_cancel(self.service, record["id"])
        if updated is not None:
            return JSONResponse(_batch_body(updated))
        record = self._batch(request)
        if record["status"] in ("cancelling", "cancelled"):
            return JSONResponse(_batch_body(record))
        raise ApiError(
            409,
            f"Cannot cancel a batch with status '{record['status']}'.",
            headers={"x-should-retry": "false"},
        )
