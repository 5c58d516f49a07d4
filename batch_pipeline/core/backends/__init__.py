"""Providers' Files + Batches APIs behind one interface.

Names load on first use: `backends.base` (the interface, the errors) does not import a
provider's SDK; `OpenAIBackend` and `make_backend` bring in `openai` when asked for.
"""

from typing import TYPE_CHECKING

from batch_pipeline.core._lazy_exports import lazy_exports

_BASE = "batch_pipeline.core.backends.base"
_OPENAI = "batch_pipeline.core.backends.openai"

_PUBLIC = {
    "LOCAL_BASE_URL": _OPENAI,
    "TRANSIENT_BATCH_ERROR_CODES": _BASE,
    "BackendError": _BASE,
    "BatchBackend": _BASE,
    "NotFound": _BASE,
    "OpenAIBackend": _OPENAI,
    "TransientBackendError": _BASE,
    "batch_info_from_openai": _OPENAI,
    "file_info_from_openai": _OPENAI,
    "is_transient_batch_failure": _BASE,
    "make_backend": _OPENAI,
}

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

if TYPE_CHECKING:
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


__getattr__, __dir__ = lazy_exports(__name__, _PUBLIC)
