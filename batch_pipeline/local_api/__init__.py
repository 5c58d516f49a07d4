"""A local OpenAI-compatible Files + Batches API service (echo or proxy responder)."""

from batch_pipeline.local_api.app import create_app
from batch_pipeline.local_api.server import (
    LocalBatchApi,
    add_serve_arguments,
    run_local_batch_api,
    serve_from_args,
)
from batch_pipeline.local_api.settings import LocalApiSettings

__all__ = [
    "LocalApiSettings",
    "LocalBatchApi",
    "add_serve_arguments",
    "create_app",
    "run_local_batch_api",
    "serve_from_args",
]
