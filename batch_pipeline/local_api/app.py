"""The HTTP side: starlette routes for the Files and Batches APIs, OpenAI errors: under /v1
in OpenAI's dialect, under /openai in Azure OpenAI's (see `azure`)."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import parse_options_header
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from batch_pipeline.core.tokens import default_encoding
from batch_pipeline.local_api.auth import ApiKeyAuth
from batch_pipeline.local_api.azure import (
    AZURE_PREFIX,
    is_azure_path,
    require_api_version,
    with_v1,
)
from batch_pipeline.local_api.errors import ApiError, error_body
from batch_pipeline.local_api.file_form import expires_after_seconds, read_file_form
from batch_pipeline.local_api.responders import make_responder
from batch_pipeline.local_api.settings import LocalApiSettings, default_expiry
from batch_pipeline.local_api.store import BATCH_ID_RE, FILE_ID_RE, Store, public
from batch_pipeline.local_api.uploads import MultipartUpload, UploadInvalid, UploadTooLarge
from batch_pipeline.local_api.validation import SUPPORTED_ENDPOINTS
from batch_pipeline.local_api.worker import BatchEngine

log = logging.getLogger(__name__)

MULTIPART_SLACK_BYTES = 1024 * 1024  # room for the multipart framing around the file
MAX_JSON_BODY_BYTES = 1024 * 1024
Handler = Callable[[Request], Awaitable[Response]]
CREATE_BATCH_FIELDS = frozenset(
    {"input_file_id", "endpoint", "completion_window", "metadata", "output_expires_after"}
)


class JSONResponse(Response):
    """A JSON response rendered with orjson."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def _error_response(error: ApiError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers)


def _int_param(request: Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ApiError(
            400, f"Invalid '{name}': expected an integer.", param=name, code="invalid_value"
        ) from None
    if not low <= value <= high:
        raise ApiError(
            400,
            f"Invalid '{name}': must be between {low} and {high}.",
            param=name,
            code="invalid_value",
        )
    return value


def _cursor_param(request: Request, name: str, pattern: Any) -> str | None:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return None
    if not pattern.match(raw):
        raise ApiError(
            400, f"Invalid '{name}': not an id of this API.", param=name, code="invalid_value"
        )
    return raw


def _list_body(data: list[dict[str, Any]], has_more: bool) -> dict[str, Any]:
    """A list page as the spec's ListFilesResponse / ListBatchesResponse has it.

    `first_id` and `last_id` are strings, never null: ListFilesResponse requires both and
    ListBatchesResponse types them as (optional, non-nullable) strings. An empty page has no
    ids to give, so both are the empty string there (which an `after` cursor ignores).
    """
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else "",
        "last_id": data[-1]["id"] if data else "",
        "has_more": has_more,
    }


async def _json_object(request: Request) -> dict[str, Any]:
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_JSON_BODY_BYTES:
            raise ApiError(413, "The request body is too large.", code="request_too_large")
        chunks.append(chunk)
    try:
        body = orjson.loads(b"".join(chunks))
    except orjson.JSONDecodeError:
        raise ApiError(
            400,
            "We could not parse the JSON body of your request. The body must be a JSON object.",
            code="invalid_json",
        ) from None
    if not isinstance(body, dict):
        raise ApiError(400, "The request body must be a JSON object.", code="invalid_json")
    return body


def _validate_metadata(metadata: Any) -> dict[str, str] | None:
    if metadata is None:
        return None
    if not isinstance(metadata, dict):
        raise ApiError(
            400,
            "Invalid 'metadata': expected an object of strings.",
            param="metadata",
            code="invalid_type",
        )
    if len(metadata) > 16:
        raise ApiError(
            400, "Invalid 'metadata': at most 16 keys.", param="metadata", code="invalid_value"
        )
    for key, value in metadata.items():
        if len(key) > 64:
            raise ApiError(
                400,
                "Invalid 'metadata': keys are at most 64 characters.",
                param="metadata",
                code="invalid_value",
            )
        if not isinstance(value, str):
            raise ApiError(
                400,
                "Invalid 'metadata': values must be strings.",
                param="metadata",
                code="invalid_type",
            )
        if len(value) > 512:
            raise ApiError(
                400,
                "Invalid 'metadata': values are at most 512 characters.",
                param="metadata",
                code="invalid_value",
            )
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


def _file_id(request: Request) -> str:
    file_id = request.path_params["file_id"]
    if not FILE_ID_RE.match(file_id):
        raise ApiError(404, "No such File object.", param="id")
    return file_id


class _DownloadResponse(FileResponse):
    """A file sent from a download's private name (`Store.download_path`), removed once sent
    or abandoned."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            Path(self.path).unlink(missing_ok=True)


class LocalBatchService:
    """The service's state shared by the routes: store, engine, settings, fault counters."""

    def __init__(self, settings: LocalApiSettings) -> None:
        self.settings = settings
        self.store: Store | None = None
        self.engine: BatchEngine | None = None
        self.create_calls = 0
        self.download_calls = 0
        self.startup_error: Exception | None = None  # why `open` failed, for the caller

    def open(self) -> None:
        """Load the state dir and the tokenizer, and start the batch engine."""
        default_encoding()
        self.store = Store(self.settings.state_dir)
        self.engine = BatchEngine(self.store, self.settings, make_responder(self.settings))
        self.engine.start()

    def close(self) -> None:
        """Stop the batch engine (work in progress is resumed at the next open) and let go of
        the state dir."""
        if self.engine is not None:
            self.engine.stop()
            self.engine = None
        if self.store is not None:
            self.store.close()
            self.store = None

    @property
    def _store(self) -> Store:
        assert self.store is not None, "service not started"
        return self.store

    @property
    def _engine(self) -> BatchEngine:
        assert self.engine is not None, "service not started"
        return self.engine

    # ------------------------------------------------------------------ files

    async def create_file(self, request: Request) -> Response:
        ctype, params = parse_options_header(request.headers.get("content-type"))
        if ctype != b"multipart/form-data" or not params.get(b"boundary"):
            raise ApiError(
                400,
                "Uploads must be multipart/form-data with a boundary.",
                code="invalid_content_type",
            )
        limit = self.settings.max_upload_bytes
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > limit + MULTIPART_SLACK_BYTES:
            raise ApiError(
                413,
                f"The file is larger than the limit of {limit} bytes.",
                param="file",
                code="file_too_large",
                headers={"connection": "close"},
            )
        try:
            upload = MultipartUpload(params[b"boundary"], self._store.new_tmp_path(), limit)
        except FormParserError:
            raise ApiError(
                400, "Invalid multipart boundary.", code="invalid_content_type"
            ) from None
        try:
            await upload.receive(request.stream())
        except UploadTooLarge:
            raise ApiError(
                413,
                f"The file is larger than the limit of {limit} bytes.",
                param="file",
                code="file_too_large",
                headers={"connection": "close"},
            ) from None
        except UploadInvalid as exc:
            raise ApiError(400, str(exc), code="invalid_multipart") from None
        try:
            form = read_file_form(upload)
        except ApiError:
            upload.discard()
            raise
        purpose = form.purpose
        if form.expires_after_seconds is not None:
            expires_at: int | None = int(time.time()) + form.expires_after_seconds
        elif purpose == "batch":
            expires_at = default_expiry(self.settings)
        else:
            expires_at = None
        record = await run_in_threadpool(
            self._store.add_file,
            upload.file_path,
            filename=upload.filename or "upload",
            purpose=purpose,
            expires_at=expires_at,
        )
        log.info("file %s stored (%s bytes, purpose %s)", record["id"], record["bytes"], purpose)
        return JSONResponse(public(record))

    async def list_files(self, request: Request) -> Response:
        limit = _int_param(request, "limit", 10_000, 1, 10_000)
        order = request.query_params.get("order") or "desc"
        if order not in ("asc", "desc"):
            raise ApiError(
                400,
                "Invalid 'order': expected 'asc' or 'desc'.",
                param="order",
                code="invalid_value",
            )
        after = _cursor_param(request, "after", FILE_ID_RE)
        purpose = request.query_params.get("purpose") or None
        page, has_more = self._store.list_files(
            purpose=purpose, order=order, after=after, limit=limit
        )
        return JSONResponse(_list_body([public(r) for r in page], has_more))

    async def retrieve_file(self, request: Request) -> Response:
        record = self._store.get_file(_file_id(request))
        if record is None:
            raise ApiError(
                404, f"No such File object: {request.path_params['file_id']}", param="id"
            )
        return JSONResponse(public(record))

    async def file_content(self, request: Request) -> Response:
        self.download_calls += 1
        if _nth_call(self.download_calls, self.settings.fault_download_500_every):
            raise ApiError(
                500,
                "The server had an error while processing your request "
                "(simulated by fault_download_500_every).",
                type="server_error",
                code="server_error",
            )
        file_id = _file_id(request)
        path = await run_in_threadpool(self._store.download_path, file_id)
        if path is None:
            raise ApiError(404, f"No such File object: {file_id}", param="id")
        return _DownloadResponse(path, media_type="application/octet-stream")

    async def delete_file(self, request: Request) -> Response:
        file_id = _file_id(request)
        if not await run_in_threadpool(self._store.delete_file, file_id):
            raise ApiError(404, f"No such File object: {file_id}", param="id")
        log.info("file %s deleted", file_id)
        return JSONResponse({"id": file_id, "object": "file", "deleted": True})

    # ------------------------------------------------------------------ batches

    async def create_batch(self, request: Request) -> Response:
        self.create_calls += 1
        if _nth_call(self.create_calls, self.settings.fault_create_429_every):
            raise ApiError(
                429,
                "Rate limit reached for batch creation (simulated by "
                "fault_create_429_every). Please try again in 1s.",
                type="requests",
                code="rate_limit_exceeded",
                headers={"retry-after": "1"},
            )
        body = await _json_object(request)
        unknown = sorted(set(body) - CREATE_BATCH_FIELDS)
        if unknown:
            raise ApiError(
                400,
                f"Unrecognized request argument supplied: {unknown[0][:64]}",
                param=unknown[0][:64],
                code="unknown_parameter",
            )
        for name in ("input_file_id", "endpoint", "completion_window"):
            if body.get(name) is None:
                raise ApiError(
                    400,
                    f"Missing required parameter: '{name}'.",
                    param=name,
                    code="missing_required_parameter",
                )
            if not isinstance(body[name], str):
                raise ApiError(
                    400, f"Invalid '{name}': expected a string.", param=name, code="invalid_type"
                )
        azure = is_azure_path(request.url.path)
        endpoint = with_v1(body["endpoint"]) if azure else body["endpoint"]
        if endpoint not in SUPPORTED_ENDPOINTS:
            raise ApiError(
                400,
                f"Invalid 'endpoint': expected one of {', '.join(SUPPORTED_ENDPOINTS)}.",
                param="endpoint",
                code="invalid_value",
            )
        if body["completion_window"] != "24h":
            raise ApiError(
                400,
                "Invalid 'completion_window': only '24h' is supported.",
                param="completion_window",
                code="invalid_value",
            )
        metadata = _validate_metadata(body.get("metadata"))
        output_expires = expires_after_seconds(
            body.get("output_expires_after"), "output_expires_after"
        )
        input_file_id = body["input_file_id"]
        input_file = self._store.get_file(input_file_id)
        if input_file is None:
            raise ApiError(404, f"No such File object: {input_file_id[:64]}", param="input_file_id")
        if input_file["purpose"] != "batch":
            raise ApiError(
                400,
                f"The input file must have purpose 'batch', not '{input_file['purpose']}'.",
                param="input_file_id",
                code="invalid_file_purpose",
            )
        now = time.time()
        window = self.settings.completion_window_seconds
        record: dict[str, Any] = {
            "id": self._store.new_batch_id(),
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
            "metadata": metadata,
            "_deadline": now + window,
            "_output_expires_after_seconds": output_expires,
        }
        if azure:
            record.update(
                _azure_batch_fields(body["endpoint"], self.settings.azure_max_requests_per_batch)
            )
        added = await run_in_threadpool(self._store.add_batch, record)
        if added is None:  # deleted since it was looked up
            raise ApiError(404, f"No such File object: {input_file_id[:64]}", param="input_file_id")
        record = added
        log.info("batch %s created (%s, input %s)", record["id"], endpoint, input_file_id)
        self._engine.submit(record["id"])
        return JSONResponse(_batch_body(record))

    async def list_batches(self, request: Request) -> Response:
        limit = _int_param(request, "limit", 20, 1, 100)
        after = _cursor_param(request, "after", BATCH_ID_RE)
        page, has_more = self._store.list_batches(after=after, limit=limit)
        return JSONResponse(_list_body([_batch_body(r) for r in page], has_more))

    def _batch(self, request: Request) -> dict[str, Any]:
        batch_id = request.path_params["batch_id"]
        record = self._store.get_batch(batch_id)
        if record is None:
            raise ApiError(404, "No such Batch object.", param="batch_id")
        return record

    async def retrieve_batch(self, request: Request) -> Response:
        return JSONResponse(_batch_body(self._batch(request)))

    async def cancel_batch(self, request: Request) -> Response:
        record = self._batch(request)
        updated = await run_in_threadpool(
            lambda: self._store.update_batch(
                record["id"],
                expect={"validating", "in_progress"},
                status="cancelling",
                cancelling_at=int(time.time()),
            )
        )
        if updated is not None:
            log.info("batch %s -> cancelling", record["id"])
            self._engine.cancel(record["id"])
            return JSONResponse(_batch_body(updated))
        record = self._batch(request)
        if record["status"] in ("cancelling", "cancelled"):
            return JSONResponse(_batch_body(record))
        raise ApiError(
            409,
            f"Cannot cancel a batch with status '{record['status']}'.",
            headers={"x-should-retry": "false"},
        )

    # ------------------------------------------------------------------ wiring

    def routes(self) -> list[Route]:
        """One route per path, so that a 405's `Allow` lists every method the path takes."""
        handlers: dict[str, dict[str, Handler]] = {
            "/files": {"POST": self.create_file, "GET": self.list_files},
            "/files/{file_id}": {"GET": self.retrieve_file, "DELETE": self.delete_file},
            "/files/{file_id}/content": {"GET": self.file_content},
            "/batches": {"POST": self.create_batch, "GET": self.list_batches},
            "/batches/{batch_id}": {"GET": self.retrieve_batch},
            "/batches/{batch_id}/cancel": {"POST": self.cancel_batch},
        }
        return [
            Route(prefix + path, _by_method(methods, azure=azure), methods=list(methods))
            for prefix, azure in (("/v1", False), (AZURE_PREFIX, True))
            for path, methods in handlers.items()
        ]


def _by_method(handlers: dict[str, Handler], *, azure: bool) -> Handler:
    """An endpoint that hands a request to the handler of its method (HEAD to GET's), after
    the Azure dialect's `api-version` check on an Azure path.

    Starlette answers a method the route does not list with 405 and `Allow` made from the
    route's methods, so the one table above is all that `Allow` is computed from.
    """

    async def endpoint(request: Request) -> Response:
        if azure:
            require_api_version(request)
        method = "GET" if request.method == "HEAD" else request.method
        return await handlers[method](request)

    return endpoint


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return _error_response(exc)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        message = f"Invalid URL ({request.method} {request.url.path})"
    elif exc.status_code == 405:
        message = f"Method {request.method} not allowed on {request.url.path}."
    else:
        message = str(exc.detail)
    return _error_response(ApiError(exc.status_code, message, headers=exc.headers))


async def _server_error(request: Request, exc: Exception) -> Response:
    log.error("unexpected error on %s %s", request.method, request.url.path, exc_info=exc)
    return JSONResponse(
        error_body(
            "The server had an error while processing your request.",
            type="server_error",
            code="server_error",
        ),
        status_code=500,
    )


def create_app(settings: LocalApiSettings) -> Starlette:
    """The ASGI app of the local Batch API; its lifespan opens the store and the engine."""
    service = LocalBatchService(settings)
    api_key = settings.resolved_api_key()  # fail early if a named variable is unset
    if settings.responder == "proxy":
        settings.resolved_upstream_api_key()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            await run_in_threadpool(service.open)
        except Exception as exc:
            service.startup_error = exc
            raise
        try:
            yield
        finally:
            await run_in_threadpool(service.close)

    middleware = [Middleware(ApiKeyAuth, api_key=api_key)] if api_key else []
    app = Starlette(
        routes=service.routes(),
        middleware=middleware,
        exception_handlers={
            ApiError: _api_error,
            HTTPException: _http_error,
            Exception: _server_error,
        },
        lifespan=lifespan,
    )
    # A trailing slash must not redirect: `DELETE /files/<id>%2F` would delete `<id>`.
    app.router.redirect_slashes = False
    app.state.service = service
    return app


def _nth_call(calls: int, every: int) -> bool:
    """True on every `every`-th call of a service-wide fault (never when `every` is 0)."""
    return bool(every) and calls % every == 0
