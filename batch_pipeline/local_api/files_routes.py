"""The Files API routes: upload, list, retrieve, download and delete files."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import parse_options_header
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.types import Receive, Scope, Send

from batch_pipeline.local_api._http import JSONResponse, cursor_param, int_param, list_body
from batch_pipeline.local_api.errors import ApiError
from batch_pipeline.local_api.faults import EveryNth
from batch_pipeline.local_api.file_form import FileForm, read_file_form
from batch_pipeline.local_api.service import LocalBatchService
from batch_pipeline.local_api.settings import default_expiry
from batch_pipeline.local_api.store import FILE_ID_RE, public
from batch_pipeline.local_api.uploads import MultipartUpload, UploadInvalid, UploadTooLarge

log = logging.getLogger(__name__)

MULTIPART_SLACK_BYTES = 1024 * 1024  # room for the multipart framing around the file


def no_such_file(file_id: str, param: str = "id") -> ApiError:
    """The 404 of a file id that names no live file."""
    return ApiError(404, f"No such File object: {file_id}", param=param)


def _too_large(limit: int) -> ApiError:
    return ApiError(
        413,
        f"The file is larger than the limit of {limit} bytes.",
        param="file",
        code="file_too_large",
        headers={"connection": "close"},
    )


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


class FilesRoutes:
    """The handlers of /files, /files/{file_id} and /files/{file_id}/content."""

    def __init__(self, service: LocalBatchService) -> None:
        self.service = service
        self.settings = service.settings
        self._download_fault = EveryNth(self.settings.fault_download_500_every)

    async def create_file(self, request: Request) -> Response:
        """POST /files: a multipart upload, streamed to disk."""
        upload = self._new_upload(request)
        await self._receive(upload, request)
        try:
            form = read_file_form(upload)
        except ApiError:
            upload.discard()
            raise
        record = await run_in_threadpool(
            self.service.running_store.add_file,
            upload.file_path,
            filename=upload.filename or "upload",
            purpose=form.purpose,
            expires_at=self._expires_at(form),
        )
        log.info(
            "file %s stored (%s bytes, purpose %s)", record["id"], record["bytes"], form.purpose
        )
        return JSONResponse(public(record))

    def _new_upload(self, request: Request) -> MultipartUpload:
        """An upload to receive the request's multipart body into (refused before a byte is
        read if its type or declared length is wrong)."""
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
            raise _too_large(limit)
        try:
            return MultipartUpload(
                params[b"boundary"], self.service.running_store.new_tmp_path(), limit
            )
        except FormParserError:
            raise ApiError(
                400, "Invalid multipart boundary.", code="invalid_content_type"
            ) from None

    async def _receive(self, upload: MultipartUpload, request: Request) -> None:
        try:
            await upload.receive(request.stream())
        except UploadTooLarge:
            raise _too_large(self.settings.max_upload_bytes) from None
        except UploadInvalid as exc:
            raise ApiError(400, str(exc), code="invalid_multipart") from None

    def _expires_at(self, form: FileForm) -> int | None:
        """When an upload expires: as its form asks, else by default for batch input."""
        if form.expires_after_seconds is not None:
            return int(time.time()) + form.expires_after_seconds
        if form.purpose == "batch":
            return default_expiry(self.settings)
        return None

    async def list_files(self, request: Request) -> Response:
        """GET /files: a page of files."""
        limit = int_param(request, "limit", 10_000, 1, 10_000)
        order = request.query_params.get("order") or "desc"
        if order not in ("asc", "desc"):
            raise ApiError(
                400,
                "Invalid 'order': expected 'asc' or 'desc'.",
                param="order",
                code="invalid_value",
            )
        after = cursor_param(request, "after", FILE_ID_RE)
        purpose = request.query_params.get("purpose") or None
        page, has_more = self.service.running_store.list_files(
            purpose=purpose, order=order, after=after, limit=limit
        )
        return JSONResponse(list_body([public(r) for r in page], has_more))

    async def retrieve_file(self, request: Request) -> Response:
        """GET /files/{file_id}."""
        record = self.service.running_store.get_file(_file_id(request))
        if record is None:
            raise no_such_file(request.path_params["file_id"])
        return JSONResponse(public(record))

    async def file_content(self, request: Request) -> Response:
        """GET /files/{file_id}/content: the file's bytes."""
        if self._download_fault.strikes():
            raise ApiError(
                500,
                "The server had an error while processing your request "
                "(simulated by fault_download_500_every).",
                type="server_error",
                code="server_error",
            )
        file_id = _file_id(request)
        path = await run_in_threadpool(self.service.running_store.download_path, file_id)
        if path is None:
            raise no_such_file(file_id)
        return _DownloadResponse(path, media_type="application/octet-stream")

    async def delete_file(self, request: Request) -> Response:
        """DELETE /files/{file_id}."""
        file_id = _file_id(request)
        if not await run_in_threadpool(self.service.running_store.delete_file, file_id):
            raise no_such_file(file_id)
        log.info("file %s deleted", file_id)
        return JSONResponse({"id": file_id, "object": "file", "deleted": True})
