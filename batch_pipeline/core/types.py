"""Shared vocabulary of the core: statuses and the immutable records passed between its parts."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class PipelineError(RuntimeError):
    """The pipeline cannot do what was asked; the message says why and what to do."""


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


# Shards that are not finished with: waiting to be paid for, being submitted, or in a batch.
OPEN_STATES = (ShardState.QUEUED, ShardState.SUBMITTING, ShardState.SUBMITTED)


class PartitionState(StrEnum):
    """Where a partition's current generation stands (`status.partition_state` derives it).

    building -> built (nobody asked for its submission yet) -> queued (shards wait to be
    submitted) -> in_flight (a batch of it runs) -> settled (every shard collected) ->
    collected (its results written).
    """

    BUILDING = "building"
    BUILT = "built"
    QUEUED = "queued"
    IN_FLIGHT = "in_flight"
    SETTLED = "settled"
    COLLECTED = "collected"

    @property
    def is_settled(self) -> bool:
        """Every shard collected: nothing of it runs or waits any more."""
        return self in (PartitionState.SETTLED, PartitionState.COLLECTED)


class WaitReason(StrEnum):
    """Why a shard that should be submitted is not, for now."""

    TIME_BUDGET = "time_budget"  # the poll's time budget ran out before its turn
    TOKEN_BUDGET = "token_budget"  # its model's enqueued-token budget is in use
    HELD = "held"  # another process holds it
    TAKEN_OVER = "taken_over"  # another process took it over during this try
    PROVIDER_BUSY = "provider_busy"  # the provider turned it away for now
    INPUT_FILE_GONE = "input_file_gone"  # its uploaded file is gone: uploaded again later


@dataclass(frozen=True)
class ShardWait:
    """One shard left waiting, why, and the words for a person."""

    shard_id: str
    reason: WaitReason
    detail: str

    def __str__(self) -> str:
        return f"{self.shard_id}: {self.detail}"


class Endpoint(StrEnum):
    """The Batch API endpoints a pipeline can target."""

    CHAT_COMPLETIONS = "/v1/chat/completions"
    RESPONSES = "/v1/responses"
    EMBEDDINGS = "/v1/embeddings"
    COMPLETIONS = "/v1/completions"  # the prompt is the body's `prompt`
    MODERATIONS = "/v1/moderations"  # the prompt is the body's `input`
    MESSAGES = "/v1/messages"  # Anthropic's Messages API (backend.provider: anthropic)

    @property
    def takes_system(self) -> bool:
        """Whether a request can carry a system text (as a message, `instructions` or
        `system`)."""
        return self in (Endpoint.CHAT_COMPLETIONS, Endpoint.RESPONSES, Endpoint.MESSAGES)


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
    expires_at: int | None = None  # when the completion window ends (Unix seconds)


@dataclass(frozen=True)
class FileInfo:
    """A provider file, parsed once from the API payload."""

    id: str
    filename: str
    bytes: int
    purpose: str
    created_at: int


# -- what the pipeline's steps report ----------------------------------------------------------


@dataclass(frozen=True)
class RequestsSummary:
    """What building one partition's requests produced."""

    pipeline: str
    partition: str
    generation: int
    source_rows: int
    requests: int
    rejected: int
    shards: int
    bytes: int
    estimated_input_tokens: int
    estimated_cost_live_usd: float | None
    estimated_cost_batch_usd: float | None
    manifest_path: str
    already_built: bool
    rows_without_day: int = 0  # source rows that fall on no day, so in no partition
    notes: tuple[str, ...] = ()  # the manifest's warnings (unknown price, rows of no day)
    spec_changed: str | None = None  # a reused build made with another request: says so


@dataclass(frozen=True)
class SubmitSummary:
    """What one submission pass did: batches made, shards left waiting (and why), shards the
    provider refused (settled as failed)."""

    pipeline: str
    partition: str | None
    submitted_batch_ids: list[str]
    in_flight_batch_ids: list[str]
    waiting: list[ShardWait] = field(default_factory=list)
    refused_reasons: list[str] = field(default_factory=list)

    @property
    def waiting_shards(self) -> int:
        return len(self.waiting)

    @property
    def waiting_reasons(self) -> list[str]:
        """Each waiting shard and why, as a person reads it."""
        return [str(wait) for wait in self.waiting]

    @property
    def timed_out(self) -> bool:
        """Some shard was not tried because the time budget ran out."""
        return any(wait.reason is WaitReason.TIME_BUDGET for wait in self.waiting)


@dataclass(frozen=True)
class PollReport:
    """What one poll pass did, and what is left open after it."""

    changed: list[tuple[str, str]]
    collected_shards: int
    retry_shards: int
    submitted_batch_ids: list[str]
    in_flight: int
    queued: int
    timed_out: bool
    errors: list[str]


@dataclass(frozen=True)
class ResultsSummary:
    """A partition's written results: rows per status, tokens, cost, columns, first rows."""

    pipeline: str
    partition: str
    generation: int
    path: str
    rows: int
    counts: dict[str, int]
    input_tokens: int
    output_tokens: int
    cost_batch_usd: float | None
    cost_live_usd: float | None
    saved_usd: float | None
    columns: list[tuple[str, str]]
    preview: list[dict[str, Any]]
    already_collected: bool = False
    spec_changed: str | None = None  # results made with another request: says so
    # Unanswered rows per status and error code, with a sample message (`core.failures`).
    failures: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """What the ledger keeps of it: the facts of the results, not this call's notes."""
        notes = ("already_collected", "spec_changed")
        return {k: v for k, v in self.__dict__.items() if k not in notes}


@dataclass(frozen=True)
class PartitionStatus:
    """A partition's current generation as `status` shows it."""

    pipeline: str
    partition: str
    generation: int
    state: PartitionState
    source_rows: int
    requests: int
    rejected: int
    shards: dict[ShardState, int]
    batches: list[dict[str, Any]]
    waiting: list[str]
    results_path: str | None
