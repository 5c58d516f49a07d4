"""The ledger's rows as the rest of the core reads them."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from batch_pipeline.core.ledger_schema import UNUSED_PARTITION_COLUMNS
from batch_pipeline.core.types import BatchStatus, ShardState


@dataclass(frozen=True)
class PartitionRecord:
    pipeline: str
    partition: str
    generation: int
    source_rows: int
    requests: int
    rejected: int
    build_owner: str | None
    build_lease_expires_at: float | None
    built_at: float | None
    settled_at: float | None
    collected_at: float | None
    cancelled_at: float | None
    results_path: str | None
    summary: dict[str, Any] | None
    request_fingerprint: str | None = None  # of the spec's request the build was made with
    intermediates_removed_at: float | None = None  # its shards and batch files, by `gc`

    @property
    def is_collected(self) -> bool:
        return self.collected_at is not None

    @property
    def is_in_flight(self) -> bool:
        """Built, and not every batch of it has finished yet."""
        return self.built_at is not None and self.settled_at is None


@dataclass(frozen=True)
class ShardRecord:
    shard_id: str
    pipeline: str
    partition: str
    generation: int
    attempt: int
    shard_index: int
    path: str
    rows: int
    bytes: int
    sha256: str
    estimated_input_tokens: int
    model: str
    endpoint: str
    state: ShardState
    submissions: int
    deferrals: int
    lease_owner: str | None
    lease_expires_at: float | None
    not_before: float | None
    file_id: str | None
    batch_id: str | None
    batch_status: BatchStatus | None
    outcomes_path: str | None
    succeeded: int | None
    failed: int | None
    retried: int | None
    last_error: str | None
    created_at: float
    submitted_at: float | None
    collected_at: float | None

    @property
    def submission_key(self) -> str:
        """The identity the provider batch carries in its metadata for this submission."""
        return f"{self.shard_id}#{self.submissions}"

    @classmethod
    def from_row(cls, row: sa.Row) -> ShardRecord:
        values = dict(row._mapping)
        values.pop("updated_at", None)
        values["state"] = ShardState(values["state"])
        if values["batch_status"] is not None:
            values["batch_status"] = BatchStatus(values["batch_status"])
        return cls(**values)


def partition_from_row(row: sa.Row) -> PartitionRecord:
    """A partition row as a record (the summary parsed; unused columns left out)."""
    values = dict(row._mapping)
    for name in ("updated_at", *UNUSED_PARTITION_COLUMNS):
        values.pop(name, None)
    summary = values.pop("summary_json")
    return PartitionRecord(**values, summary=json.loads(summary) if summary else None)
