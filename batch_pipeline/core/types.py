"""Shared vocabulary of the core: statuses and the immutable records passed between its parts."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class RowStatus(StrEnum):
    """The final status of one source row in the results."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"
    EXPIRED = "expired"
    CANCELLED = "cancelled"
    REJECTED = "rejected"


class BatchStatus(StrEnum):
    """A provider batch's status, as the Batch API reports it."""

    VALIDATING = "validating"
    FAILED = "failed"
    IN_PROGRESS = "in_progress"
    FINALIZING = "finalizing"
    COMPLETED = "completed"
    EXPIRED = "expired"
    CANCELLING = "cancelling"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_BATCH_STATUSES


TERMINAL_BATCH_STATUSES = frozenset(
    {BatchStatus.FAILED, BatchStatus.COMPLETED, BatchStatus.EXPIRED, BatchStatus.CANCELLED}
)


class ShardState(StrEnum):
    """Where a shard stands in the ledger's state machine.

    built (written; nobody asked for it to be paid for yet) -> queued (submission asked
    for; retry shards start here) -> submitting (intent recorded, before upload) ->
    submitted (batch created) -> collected (batch terminal, its outcomes downloaded and parsed).
    """

    BUILT = "built"
    QUEUED = "queued"
    SUBMITTING = "submitting"
    SUBMITTED = "submitted"
    COLLECTED = "collected"


class Endpoint(StrEnum):
    """The Batch API endpoints a pipeline can target."""

    CHAT_COMPLETIONS = "/v1/chat/completions"
    RESPONSES = "/v1/responses"
    EMBEDDINGS = "/v1/embeddings"
    COMPLETIONS = "/v1/completions"  # the prompt is the body's `prompt`
    MODERATIONS = "/v1/moderations"  # the prompt is the body's `input`

    @property
    def takes_system(self) -> bool:
        """Whether a request can carry a system text (as a message or `instructions`)."""
        return self in (Endpoint.CHAT_COMPLETIONS, Endpoint.RESPONSES)


@dataclass(frozen=True)
class ShardInfo:
    """One JSONL request file within the limits, as described by its manifest entry."""

    shard_id: str
    pipeline: str
    partition: str
    generation: int
    attempt: int
    index: int
    path: str
    rows: int
    bytes: int
    sha256: str
    estimated_input_tokens: int
    model: str
    endpoint: str


@dataclass(frozen=True)
class RequestCounts:
    total: int = 0
    completed: int = 0
    failed: int = 0


@dataclass(frozen=True)
class BatchError:
    code: str | None
    message: str
    line: int | None = None
    param: str | None = None


@dataclass(frozen=True)
class BatchInfo:
    """A provider batch, parsed once from the API payload."""

    id: str
    status: BatchStatus
    endpoint: str
    input_file_id: str
    created_at: int
    output_file_id: str | None = None
    error_file_id: str | None = None
    request_counts: RequestCounts = field(default_factory=RequestCounts)
    errors: tuple[BatchError, ...] = ()
    metadata: dict[str, str] = field(default_factory=dict)
    input_tokens: int | None = None
    output_tokens: int | None = None


@dataclass(frozen=True)
class FileInfo:
    """A provider file, parsed once from the API payload."""

    id: str
    filename: str
    bytes: int
    purpose: str
    created_at: int
