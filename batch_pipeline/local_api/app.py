"""The HTTP side: the starlette app of the Files (files_routes.py) and Batches
(batches_routes.py) APIs, with OpenAI errors: under /v1 in OpenAI's dialect, under /openai
in Azure OpenAI's (see `azure`); and Anthropic's Message Batches under /v1/messages/batches
(anthropic_routes.py), with Anthropic's errors."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from batch_pipeline.local_api._http import api_error, http_error, server_error
from batch_pipeline.local_api.anthropic import REQUEST_ID_HEADER, new_request_id
from batch_pipeline.local_api.anthropic_routes import MessageBatchesRoutes, require_version
from batch_pipeline.local_api.auth import ApiKeyAuth
from batch_pipeline.local_api.azure import AZURE_PREFIX, require_api_version
from batch_pipeline.local_api.batches_routes import BatchesRoutes
from batch_pipeline.local_api.errors import ApiError
from batch_pipeline.local_api.files_routes import FilesRoutes
from batch_pipeline.local_api.service import LocalBatchService
from batch_pipeline.local_api.settings import LocalApiSettings

Handler = Callable[[Request], Awaitable[Response]]


def _routes(service: LocalBatchService) -> list[Route]:
    """One route per path, so that a 405's `Allow` lists every method the path takes."""
    files, batches = FilesRoutes(service), BatchesRoutes(service)
    handlers: dict[str, dict[str, Handler]] = {
        "/files": {"POST": files.create_file, "GET": files.list_files},
        "/files/{file_id}": {"GET": files.retrieve_file, "DELETE": files.delete_file},
        "/files/{file_id}/content": {"GET": files.file_content},
        "/batches": {"POST": batches.create_batch, "GET": batches.list_batches},
        "/batches/{batch_id}": {"GET": batches.retrieve_batch},
        "/batches/{batch_id}/cancel": {"POST": batches.cancel_batch},
    }
    openai_routes = [
        Route(prefix + path, _by_method(methods, azure=azure), methods=list(methods))
        for prefix, azure in (("/v1", False), (AZURE_PREFIX, True))
        for path, methods in handlers.items()
    ]
    return openai_routes + _anthropic_routes(MessageBatchesRoutes(service))


def _anthropic_routes(batches: MessageBatchesRoutes) -> list[Route]:
    """The Message Batches paths of the Anthropic dialect (see `anthropic`)."""
    handlers: dict[str, dict[str, Handler]] = {
        "": {"POST": batches.create, "GET": batches.list_batches},
        "/{batch_id}": {"GET": batches.retrieve, "DELETE": batches.delete},
        "/{batch_id}/results": {"GET": batches.results},
        "/{batch_id}/cancel": {"POST": batches.cancel},
    }
    return [
        Route(
            "/v1/messages/batches" + path,
            _by_method(methods, anthropic=True),
            methods=list(methods),
        )
        for path, methods in handlers.items()
    ]


def _by_method(
    handlers: dict[str, Handler], *, azure: bool = False, anthropic: bool = False
) -> Handler:
    """An endpoint that hands a request to the handler of its method (HEAD to GET's), after
    the Azure dialect's `api-version` check on an Azure path, or the Anthropic dialect's
    `anthropic-version` check on one of its paths (whose answers carry a `request-id`).

    Starlette answers a method the route does not list with 405 and `Allow` made from the
    route's methods, so the one table above is all that `Allow` is computed from.
    """

    async def endpoint(request: Request) -> Response:
        if azure:
            require_api_version(request)
        if anthropic:
            require_version(request)
        method = "GET" if request.method == "HEAD" else request.method
        response = await handlers[method](request)
        if anthropic:
            response.headers[REQUEST_ID_HEADER] = new_request_id()
        return response

    return endpoint


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
        routes=_routes(service),
        middleware=middleware,
        exception_handlers={
            ApiError: api_error,
            HTTPException: http_error,
            Exception: server_error,
        },
        lifespan=lifespan,
    )
    # A trailing slash must not redirect: `DELETE /files/<id>%2F` would delete `<id>`.
    app.router.redirect_slashes = False
    app.state.service = service
    return app
