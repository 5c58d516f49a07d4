"""The outcome row of one custom_id: its columns, the rule that gives its status, and the hash
that finds custom_ids seen twice; shared by both parsers of outcome lines."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import pyarrow as pa

from batch_pipeline.core._hashing import keyed_hashes, random_seeds
from batch_pipeline.core.types import RowStatus

RETRYABLE_ERROR_CODES = frozenset(
    {
        "batch_expired",
        "rate_limit_exceeded",
        "server_error",
        "internal_error",
        "service_unavailable",
        "timeout",
        "token_limit_exceeded",
        "upstream_unavailable",  # the local service's proxy got no answer from its upstream
    }
)
_STATUS_OF_ERROR_CODE = {
    "batch_expired": RowStatus.EXPIRED,
    "batch_cancelled": RowStatus.CANCELLED,
}


OUTCOME_SCHEMA = pa.schema(
    [
        pa.field("custom_id", pa.string()),
        pa.field("status", pa.string()),
        pa.field("retryable", pa.bool_()),
        pa.field("http_status", pa.int32()),
        pa.field("response_text", pa.string()),
        pa.field("response_json", pa.string()),
        pa.field("embedding", pa.list_(pa.float32())),  # null unless /v1/embeddings
        pa.field("error_code", pa.string()),
        pa.field("error_message", pa.string()),
        pa.field("input_tokens", pa.int64()),
        pa.field("output_tokens", pa.int64()),
        pa.field("batch_request_id", pa.string()),
    ]
)


class OutcomeFileError(ValueError):
    """A line of an output or error file that cannot be read; names the file and line."""


@lru_cache(maxsize=4096)
def classify(http_status: int | None, error_code: str | None) -> tuple[RowStatus, bool]:
    """The row status and whether resubmitting the request may help.

    The one place that decides: an HTTP answer is judged by its status (2xx succeeded;
    429 and 5xx retryable; other 4xx final), an error-file line by its code (`batch_expired`
    and transient codes retryable; `batch_cancelled` final, the user asked for it).
    """
    if http_status is not None:
        if 200 <= http_status < 300:
            return RowStatus.SUCCEEDED, False
        return RowStatus.FAILED, http_status == 429 or http_status >= 500
    status = _STATUS_OF_ERROR_CODE.get(error_code or "", RowStatus.FAILED)
    return status, error_code in RETRYABLE_ERROR_CODES


_ID_SEEDS = random_seeds(1)


def id_hashes(values: pa.Array) -> np.ndarray:
    """A 64-bit hash of each custom_id: equal ids hash equally; unequal ones rarely do, and
    the parse compares the ids of equal hashes."""
    (hashes,) = keyed_hashes(values, _ID_SEEDS)
    return hashes.view(np.int64)


def one_chunk(values: pa.ChunkedArray | pa.Array) -> pa.Array:
    """The values as one array (a chunked array's chunks combined)."""
    return values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values
