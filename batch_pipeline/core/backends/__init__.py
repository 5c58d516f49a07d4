"""Providers' Files + Batches APIs behind one interface."""

from batch_pipeline.core.backends.base import (
    TRANSIENT_BATCH_ERROR_CODES,
    BackendError,
    BatchBackend,
    NotFound,
    TransientBackendError,
    is_transient_batch_failure,
)
from batch_pipeline.core.backends.openai import (
    LOCAL_BASE_URL,
    OpenAIBackend,
    batch_info_from_openai,
    file_info_from_openai,
    make_backend,
)

__all__ = [
    "LOCAL_BASE_URL",
    "TRANSIENT_BATCH_ERROR_CODES",
    "BackendError",
    "BatchBackend",
    "NotFound",
    "OpenAIBackend",
    "TransientBackendError",
    "batch_info_from_openai",
    "file_info_from_openai",
    "is_transient_batch_failure",
    "make_backend",
]
