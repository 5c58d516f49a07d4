"""A local OpenAI-compatible Files + Batches API service (echo or proxy responder).

Names load on first use, so defining the `serve` flags (`settings`) does not import the
HTTP server, the responders or the tokenizer.
"""

from typing import TYPE_CHECKING

from batch_pipeline.core._lazy_exports import lazy_exports

_PUBLIC = {
    "LocalApiSettings": "batch_pipeline.local_api.settings",
    "LocalBatchApi": "batch_pipeline.local_api.server",
    "add_serve_arguments": "batch_pipeline.local_api.settings",
    "create_app": "batch_pipeline.local_api.app",
    "run_local_batch_api": "batch_pipeline.local_api.server",
    "serve_from_args": "batch_pipeline.local_api.server",
}

__all__ = [
    "LocalApiSettings",
    "LocalBatchApi",
    "add_serve_arguments",
    "create_app",
    "run_local_batch_api",
    "serve_from_args",
]

if TYPE_CHECKING:
    from batch_pipeline.local_api.app import create_app
    from batch_pipeline.local_api.server import (
        LocalBatchApi,
        run_local_batch_api,
        serve_from_args,
    )
    from batch_pipeline.local_api.settings import LocalApiSettings, add_serve_arguments


__getattr__, __dir__ = lazy_exports(__name__, _PUBLIC)
