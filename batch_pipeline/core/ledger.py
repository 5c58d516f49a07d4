"""The ledger: the durable record of partitions, shards, batches and attempts.

SQLAlchemy Core over a SQLite file by default and PostgreSQL in production. Every state change
that matters for money (claiming a shard for submission, recording its batch) is a single
conditional UPDATE, so two processes working on one partition never both submit a shard.
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError

from batch_pipeline.core.database_url import database_url, open_engine, sqlite_file
from batch_pipeline.core.types import BatchInfo, BatchStatus, ShardInfo, ShardState

# 2: shards start `built` (a state version 1 does not know), otherwise the same tables.
# 3: shards count `deferrals`, the tries of one submission cut short by the provider.
# 4: partitions keep the `request_fingerprint` of the spec their generation was built with.
SCHEMA_VERSION = 4
DEFAULT_LEASE_SECONDS = 300.0
SCHEMA_LOCK_KEY = 0x62705F6C6564  # "bp_led": one advisory lock for schema changes
BUDGET_LOCK_SPACE = 0x62705F74  # "bp_t": advisory locks on a model's token budget

metadata = sa.MetaData()

schema_table = sa.Table(
    "bp_schema",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("version", sa.Integer, nullable=False),
)

partitions_table = sa.Table(
    "bp_partitions",
    metadata,
    sa.Column("pipeline", sa.String(64), primary_key=True),
    sa.Column("partition", sa.String(32), primary_key=True),
    sa.Column("generation", sa.Integer, nullable=False),
    sa.Column("source_rows", sa.Integer, nullable=False, default=0),
    sa.Column("requests", sa.Integer, nullable=False, default=0),
    sa.Column("rejected", sa.Integer, nullable=False, default=0),
    sa.Column("build_owner", sa.String(120)),
    sa.Column("build_lease_expires_at", sa.Float),
    sa.Column("built_at", sa.Float),
    sa.Column("settled_at", sa.Float),
    sa.Column("results_requested", sa.Integer, nullable=False, default=0),
    sa.Column("results_requested_at", sa.Float),
    sa.Column("collected_at", sa.Float),
    sa.Column("cancelled_at", sa.Float),
    sa.Column("results_path", sa.Text),
    sa.Column("summary_json", sa.Text),
    sa.Column("request_fingerprint", sa.String(64)),
    sa.Column("updated_at", sa.Float, nullable=False),
)

shards_table = sa.Table(
    "bp_shards",
    metadata,
    sa.Column("shard_id", sa.String(200), primary_key=True),
    sa.Column("pipeline", sa.String(64), nullable=False),
    sa.Column("partition", sa.String(32), nullable=False),
    sa.Column("generation", sa.Integer, nullable=False),
    sa.Column("attempt", sa.Integer, nullable=False),
    sa.Column("shard_index", sa.Integer, nullable=False),
    sa.Column("path", sa.Text, nullable=False),
    sa.Column("rows", sa.Integer, nullable=False),
    sa.Column("bytes", sa.BigInteger, nullable=False),
    sa.Column("sha256", sa.String(64), nullable=False),
    sa.Column("estimated_input_tokens", sa.BigInteger, nullable=False),
    sa.Column("model", sa.String(200), nullable=False),
    sa.Column("endpoint", sa.String(64), nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("submissions", sa.Integer, nullable=False, default=0),
    sa.Column("deferrals", sa.Integer, nullable=False, default=0, server_default="0"),
    sa.Column("lease_owner", sa.String(120)),
    sa.Column("lease_expires_at", sa.Float),
    sa.Column("not_before", sa.Float),
    sa.Column("file_id", sa.String(120)),
    sa.Column("batch_id", sa.String(120)),
    sa.Column("batch_status", sa.String(16)),
    sa.Column("outcomes_path", sa.Text),
    sa.Column("succeeded", sa.Integer),
    sa.Column("failed", sa.Integer),
    sa.Column("retried", sa.Integer),
    sa.Column("last_error", sa.Text),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("submitted_at", sa.Float),
    sa.Column("collected_at", sa.Float),
    sa.Column("updated_at", sa.Float, nullable=False),
    sa.Index("ix_bp_shards_partition", "pipeline", "partition", "generation"),
    sa.Index("ix_bp_shards_state", "pipeline", "state"),
)

batches_table = sa.Table(
    "bp_batches",
    metadata,
    sa.Column("batch_id", sa.String(120), primary_key=True),
    sa.Column("shard_id", sa.String(200), nullable=False, index=True),
    sa.Column("pipeline", sa.String(64), nullable=False),
    sa.Column("partition", sa.String(32), nullable=False),
    sa.Column("submission", sa.Integer, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("input_file_id", sa.String(120)),
    sa.Column("output_file_id", sa.String(120)),
    sa.Column("error_file_id", sa.String(120)),
    sa.Column("request_total", sa.Integer),
    sa.Column("request_completed", sa.Integer),
    sa.Column("request_failed", sa.Integer),
    sa.Column("input_tokens", sa.BigInteger),
    sa.Column("output_tokens", sa.BigInteger),
    sa.Column("errors_json", sa.Text),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
)


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
    results_requested: int
    results_requested_at: float | None
    collected_at: float | None
    cancelled_at: float | None
    results_path: str | None
    summary: dict[str, Any] | None
    request_fingerprint: str | None = None  # of the spec's request the build was made with

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


def default_owner() -> str:
    """An identity for lease holders: host, process and a random suffix."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Ledger:
    """Durable state of every pipeline sharing this database."""

    def __init__(self, url: str, *, clock: Any = time.time) -> None:
        self.url = url
        self._clock = clock
        self.engine: Engine = _create_engine(url)
        self._ensure_schema()

    def close(self) -> None:
        self.engine.dispose()

    def __repr__(self) -> str:
        return f"Ledger({self.engine.url.render_as_string(hide_password=True)!r})"

    # -- schema -----------------------------------------------------------------------------

    def _ensure_schema(self) -> None:
        with self.engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                # Two processes creating the tables at once would collide in the catalogue.
                conn.execute(
                    sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": SCHEMA_LOCK_KEY}
                )
            metadata.create_all(conn, checkfirst=True)
            version = conn.execute(sa.select(schema_table.c.version)).scalar()
            if version is None:
                try:
                    with conn.begin_nested():
                        conn.execute(schema_table.insert().values(id=1, version=SCHEMA_VERSION))
                except IntegrityError:
                    version = conn.execute(sa.select(schema_table.c.version)).scalar()
            if version is not None and version > SCHEMA_VERSION:
                raise RuntimeError(
                    f"the ledger at {self!r} has schema version {version}, newer than this "
                    f"batch_pipeline understands ({SCHEMA_VERSION}); upgrade batch_pipeline"
                )
            if version is not None and version < SCHEMA_VERSION:
                _migrate(conn)
                conn.execute(schema_table.update().values(version=SCHEMA_VERSION))

    @contextmanager
    def _tx(self) -> Iterator[Connection]:
        with self.engine.begin() as conn:
            yield conn

    # -- partitions -------------------------------------------------------------------------

    def get_partition(self, pipeline: str, partition: str) -> PartitionRecord | None:
        with self._tx() as conn:
            row = conn.execute(
                sa.select(partitions_table).where(*_partition_is(pipeline, partition))
            ).first()
        return _partition_from_row(row) if row else None

    def list_partitions(self, pipeline: str) -> list[PartitionRecord]:
        with self._tx() as conn:
            rows = conn.execute(
                sa.select(partitions_table)
                .where(partitions_table.c.pipeline == pipeline)
                .order_by(partitions_table.c.partition)
            ).all()
        return [_partition_from_row(row) for row in rows]

    def start_generation(self, pipeline: str, partition: str, *, rebuild: bool) -> int:
        """The generation to build: the current one, or a new one when `rebuild` is asked."""
        now = self._clock()
        with self._tx() as conn:
            current = conn.execute(
                sa.select(partitions_table.c.generation).where(*_partition_is(pipeline, partition))
            ).scalar()
            if current is None:
                try:
                    with conn.begin_nested():
                        conn.execute(
                            partitions_table.insert().values(
                                pipeline=pipeline,
                                partition=partition,
                                generation=1,
                                source_rows=0,
                                requests=0,
                                rejected=0,
                                results_requested=0,
                                updated_at=now,
                            )
                        )
                    return 1
                except IntegrityError:
                    current = conn.execute(
                        sa.select(partitions_table.c.generation).where(
                            *_partition_is(pipeline, partition)
                        )
                    ).scalar()
            if not rebuild:
                return int(current)
            conn.execute(
                partitions_table.update()
                .where(*_partition_is(pipeline, partition, current))
                .values(
                    generation=current + 1,
                    source_rows=0,
                    requests=0,
                    rejected=0,
                    build_owner=None,
                    build_lease_expires_at=None,
                    built_at=None,
                    settled_at=None,
                    results_requested=0,
                    results_requested_at=None,
                    collected_at=None,
                    cancelled_at=None,
                    results_path=None,
                    summary_json=None,
                    request_fingerprint=None,
                    updated_at=now,
                )
            )
            return int(current) + 1

    def claim_build(
        self,
        pipeline: str,
        partition: str,
        generation: int,
        owner: str,
        *,
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
        dead_owner: str | None = None,
    ) -> bool:
        """Take the right to build a generation's shards; False while another live process
        builds it (or once it is built)."""
        now = self._clock()
        table = partitions_table
        holders = [
            table.c.build_owner.is_(None),
            table.c.build_owner == owner,
            table.c.build_lease_expires_at < now,
        ]
        if dead_owner is not None:
            holders.append(table.c.build_owner == dead_owner)
        with self._tx() as conn:
            result = conn.execute(
                table.update()
                .where(
                    table.c.pipeline == pipeline,
                    table.c.partition == partition,
                    table.c.generation == generation,
                    table.c.built_at.is_(None),
                    sa.or_(*holders),
                )
                .values(build_owner=owner, build_lease_expires_at=now + lease_seconds)
            )
        return result.rowcount == 1

    def release_build(self, pipeline: str, partition: str, generation: int, owner: str) -> None:
        """Give up the right to build a generation (a build that failed), so that the next
        attempt, from any process, starts at once rather than after the lease."""
        table = partitions_table
        with self._tx() as conn:
            conn.execute(
                table.update()
                .where(
                    *_partition_is(pipeline, partition, generation),
                    table.c.built_at.is_(None),
                    table.c.build_owner == owner,
                )
                .values(build_owner=None, build_lease_expires_at=None)
            )

    def record_build(
        self,
        pipeline: str,
        partition: str,
        generation: int,
        *,
        source_rows: int,
        requests: int,
        rejected: int,
        shards: Sequence[ShardInfo],
        request_fingerprint: str | None = None,
    ) -> None:
        """Register a built generation's shards (built: not submitted until asked for, see
        `queue_built`), its counts and the fingerprint of the request it was built with;
        safe to repeat."""
        now = self._clock()
        with self._tx() as conn:
            self._insert_shards(conn, shards, now, ShardState.BUILT)
            conn.execute(
                partitions_table.update()
                .where(*_partition_is(pipeline, partition, generation))
                .values(
                    source_rows=source_rows,
                    requests=requests,
                    rejected=rejected,
                    request_fingerprint=request_fingerprint,
                    build_owner=None,
                    build_lease_expires_at=None,
                    built_at=now,
                    updated_at=now,
                )
            )

    def add_shards(self, shards: Sequence[ShardInfo]) -> None:
        """Register retry shards (queued); a shard already known is left as it is."""
        with self._tx() as conn:
            self._insert_shards(conn, shards, self._clock(), ShardState.QUEUED)

    def queue_built(self, pipeline: str, partition: str, generation: int) -> int:
        """Ask for the built shards of a partition's generation to be submitted: they become
        queued. Returns how many did."""
        query = (
            shards_table.update()
            .where(shards_table.c.pipeline == pipeline)
            .where(shards_table.c.partition == partition)
            .where(shards_table.c.generation == generation)
            .where(shards_table.c.state == ShardState.BUILT.value)
        )
        with self._tx() as conn:
            result = conn.execute(
                query.values(state=ShardState.QUEUED.value, updated_at=self._clock())
            )
        return result.rowcount

    def _insert_shards(
        self, conn: Connection, shards: Sequence[ShardInfo], now: float, state: ShardState
    ) -> None:
        for shard in shards:
            exists = conn.execute(
                sa.select(shards_table.c.shard_id).where(shards_table.c.shard_id == shard.shard_id)
            ).first()
            if exists:
                continue
            try:
                with conn.begin_nested():
                    conn.execute(
                        shards_table.insert().values(
                            shard_id=shard.shard_id,
                            pipeline=shard.pipeline,
                            partition=shard.partition,
                            generation=shard.generation,
                            attempt=shard.attempt,
                            shard_index=shard.index,
                            path=shard.path,
                            rows=shard.rows,
                            bytes=shard.bytes,
                            sha256=shard.sha256,
                            estimated_input_tokens=shard.estimated_input_tokens,
                            model=shard.model,
                            endpoint=shard.endpoint,
                            state=state.value,
                            submissions=0,
                            deferrals=0,
                            created_at=now,
                            updated_at=now,
                        )
                    )
            except IntegrityError:
                continue  # another process registered it first: same deterministic content

    def mark_settled(self, pipeline: str, partition: str, generation: int) -> bool:
        """Record that every shard of the generation is collected; True the first time."""
        now = self._clock()
        with self._tx() as conn:
            result = conn.execute(
                partitions_table.update()
                .where(*_partition_is(pipeline, partition, generation))
                .where(partitions_table.c.settled_at.is_(None))
                .values(settled_at=now, updated_at=now)
            )
        return result.rowcount == 1

    def mark_cancelled(self, pipeline: str, partition: str, generation: int) -> None:
        """Record a user's cancel: no retries and no new submissions for this generation."""
        now = self._clock()
        with self._tx() as conn:
            conn.execute(
                partitions_table.update()
                .where(*_partition_is(pipeline, partition, generation))
                .values(cancelled_at=now, updated_at=now)
            )

    def mark_collected(
        self,
        pipeline: str,
        partition: str,
        generation: int,
        *,
        results_path: str,
        summary: dict[str, Any],
    ) -> None:
        now = self._clock()
        with self._tx() as conn:
            conn.execute(
                partitions_table.update()
                .where(*_partition_is(pipeline, partition, generation))
                .values(
                    collected_at=now,
                    results_path=results_path,
                    summary_json=json.dumps(summary, sort_keys=True),
                    updated_at=now,
                )
            )

    # -- shards -----------------------------------------------------------------------------

    def shards(
        self,
        pipeline: str,
        *,
        partition: str | None = None,
        generation: int | None = None,
        states: Sequence[ShardState] | None = None,
    ) -> list[ShardRecord]:
        query = sa.select(shards_table).where(shards_table.c.pipeline == pipeline)
        if partition is not None:
            query = query.where(shards_table.c.partition == partition)
        if generation is not None:
            query = query.where(shards_table.c.generation == generation)
        if states is not None:
            query = query.where(shards_table.c.state.in_([s.value for s in states]))
        query = query.order_by(
            shards_table.c.partition, shards_table.c.attempt, shards_table.c.shard_index
        )
        with self._tx() as conn:
            return [ShardRecord.from_row(row) for row in conn.execute(query).all()]

    def get_shard(self, shard_id: str) -> ShardRecord | None:
        with self._tx() as conn:
            row = conn.execute(
                sa.select(shards_table).where(shards_table.c.shard_id == shard_id)
            ).first()
        return ShardRecord.from_row(row) if row else None

    def enqueued_tokens(self, model: str) -> int:
        """Estimated input tokens of this model's shards that are being or have been submitted
        and whose batch has not finished: what counts against the provider's enqueued limit."""
        with self._tx() as conn:
            return _enqueued_tokens(conn, model)

    def claim(
        self,
        shard_id: str,
        owner: str,
        *,
        from_states: Sequence[ShardState],
        to_state: ShardState,
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
        new_submission: bool = False,
        dead_owner: str | None = None,
        token_budget: int | None = None,
    ) -> ShardRecord | None:
        """Take the shard for `owner` if it is in one of `from_states` and not leased by a live
        holder (an expired lease, or one held by `dead_owner`, a process known to have died, is
        taken over). `new_submission` counts a fresh submission in the same statement, so the
        identity the provider batch carries changes atomically with the claim. With
        `token_budget`, the shard is taken only while its estimated input tokens fit in that
        budget of its model's enqueued tokens (or none are enqueued), checked in the claim's
        own transaction so that concurrent submitters cannot overshoot it together.
        None if someone else has it, or the budget is used up.
        """
        now = self._clock()
        table = shards_table
        holders = [
            table.c.lease_owner.is_(None),
            table.c.lease_owner == owner,
            table.c.lease_expires_at < now,
        ]
        if dead_owner is not None:
            holders.append(table.c.lease_owner == dead_owner)
        free = sa.or_(*holders)
        extra: dict[str, Any] = {}
        if new_submission:
            extra = {
                "submissions": table.c.submissions + 1,
                "deferrals": 0,
                "batch_id": None,
                "batch_status": None,
            }
        with self._tx() as conn:
            if token_budget is not None and not _fits_budget(conn, shard_id, token_budget):
                return None
            result = conn.execute(
                table.update()
                .where(table.c.shard_id == shard_id)
                .where(table.c.state.in_([s.value for s in from_states]))
                .where(free)
                .where(sa.or_(table.c.not_before.is_(None), table.c.not_before <= now))
                .values(
                    state=to_state.value,
                    lease_owner=owner,
                    lease_expires_at=now + lease_seconds,
                    updated_at=now,
                    **extra,
                )
            )
            if result.rowcount != 1:
                return None
            row = conn.execute(sa.select(table).where(table.c.shard_id == shard_id)).first()
        return ShardRecord.from_row(row)

    def release(self, shard_id: str, owner: str) -> None:
        """Give up a lease without changing the shard's state."""
        with self._tx() as conn:
            conn.execute(
                shards_table.update()
                .where(shards_table.c.shard_id == shard_id, shards_table.c.lease_owner == owner)
                .values(lease_owner=None, lease_expires_at=None, updated_at=self._clock())
            )

    def renew_lease(
        self,
        shard_id: str,
        owner: str,
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
        **values: Any,
    ) -> bool:
        """Extend `owner`'s lease on the shard (setting `values` in the same statement) while
        it still holds it; False once it does not (the lease ran out and another process took
        the shard over), and nothing is changed."""
        expires = self._clock() + lease_seconds
        return self.update_shard(shard_id, owner, lease_expires_at=expires, **values)

    def update_shard(self, shard_id: str, owner: str | None = None, **values: Any) -> bool:
        """Change a shard's columns; with `owner`, only while that owner holds the lease."""
        now = self._clock()
        values = {k: (v.value if hasattr(v, "value") else v) for k, v in values.items()}
        query = shards_table.update().where(shards_table.c.shard_id == shard_id)
        if owner is not None:
            query = query.where(shards_table.c.lease_owner == owner)
        with self._tx() as conn:
            result = conn.execute(query.values(updated_at=now, **values))
        return result.rowcount == 1

    # -- batches ----------------------------------------------------------------------------

    def record_batch(self, shard: ShardRecord, batch: BatchInfo, owner: str) -> bool:
        """Attach a created (or found) batch to the shard and mark it submitted, while `owner`
        holds the shard's lease; False (nothing recorded) once it does not."""
        now = self._clock()
        with self._tx() as conn:
            attached = conn.execute(
                shards_table.update()
                .where(shards_table.c.shard_id == shard.shard_id)
                .where(shards_table.c.lease_owner == owner)
                .values(
                    state=ShardState.SUBMITTED.value,
                    batch_id=batch.id,
                    batch_status=batch.status.value,
                    file_id=batch.input_file_id,
                    submitted_at=now,
                    lease_owner=None,
                    lease_expires_at=None,
                    updated_at=now,
                )
            )
            if attached.rowcount != 1:
                return False
            exists = conn.execute(
                sa.select(batches_table.c.batch_id).where(batches_table.c.batch_id == batch.id)
            ).first()
            if not exists:
                conn.execute(
                    batches_table.insert().values(
                        batch_id=batch.id,
                        shard_id=shard.shard_id,
                        pipeline=shard.pipeline,
                        partition=shard.partition,
                        submission=shard.submissions,
                        status=batch.status.value,
                        input_file_id=batch.input_file_id,
                        request_total=batch.request_counts.total,
                        request_completed=batch.request_counts.completed,
                        request_failed=batch.request_counts.failed,
                        created_at=now,
                        updated_at=now,
                    )
                )
        return True

    def update_batch(self, batch: BatchInfo) -> bool:
        """Store a polled batch's status; True when the status changed."""
        now = self._clock()
        with self._tx() as conn:
            before = conn.execute(
                sa.select(
                    batches_table.c.status,
                    batches_table.c.request_completed,
                    batches_table.c.request_failed,
                ).where(batches_table.c.batch_id == batch.id)
            ).first()
            counts = batch.request_counts
            if before is not None and tuple(before) == (
                batch.status.value,
                counts.completed,
                counts.failed,
            ):
                return False  # nothing moved: no write, so a tick over many batches stays cheap
            conn.execute(
                batches_table.update()
                .where(batches_table.c.batch_id == batch.id)
                .values(
                    status=batch.status.value,
                    output_file_id=batch.output_file_id,
                    error_file_id=batch.error_file_id,
                    request_total=batch.request_counts.total,
                    request_completed=batch.request_counts.completed,
                    request_failed=batch.request_counts.failed,
                    input_tokens=batch.input_tokens,
                    output_tokens=batch.output_tokens,
                    errors_json=json.dumps(
                        [
                            {"code": e.code, "message": e.message, "line": e.line}
                            for e in batch.errors
                        ]
                    )
                    if batch.errors
                    else None,
                    updated_at=now,
                )
            )
            conn.execute(
                shards_table.update()
                .where(shards_table.c.batch_id == batch.id)
                .values(batch_status=batch.status.value, updated_at=now)
            )
        return before is None or before[0] != batch.status.value

    def batches(self, pipeline: str, *, partition: str | None = None) -> list[dict[str, Any]]:
        query = sa.select(batches_table).where(batches_table.c.pipeline == pipeline)
        if partition is not None:
            query = query.where(batches_table.c.partition == partition)
        with self._tx() as conn:
            return [
                dict(row._mapping)
                for row in conn.execute(query.order_by(batches_table.c.created_at)).all()
            ]


def _partition_is(pipeline: str, partition: str, generation: int | None = None) -> list[Any]:
    """The WHERE clauses naming one partition (and, if given, its generation)."""
    clauses = [partitions_table.c.pipeline == pipeline, partitions_table.c.partition == partition]
    if generation is not None:
        clauses.append(partitions_table.c.generation == generation)
    return clauses


def _partition_from_row(row: sa.Row) -> PartitionRecord:
    values = dict(row._mapping)
    values.pop("updated_at", None)
    summary = values.pop("summary_json")
    return PartitionRecord(**values, summary=json.loads(summary) if summary else None)


def _enqueued_tokens(conn: Connection, model: str) -> int:
    total = conn.execute(
        sa.select(sa.func.coalesce(sa.func.sum(shards_table.c.estimated_input_tokens), 0))
        .where(shards_table.c.model == model)
        .where(shards_table.c.state.in_([ShardState.SUBMITTING.value, ShardState.SUBMITTED.value]))
        .where(
            sa.or_(
                shards_table.c.batch_status.is_(None),
                shards_table.c.batch_status.notin_([s.value for s in BatchStatus if s.is_terminal]),
            )
        )
    ).scalar()
    return int(total or 0)


def _migrate(conn: Connection) -> None:
    """Bring the tables of an older schema version up to this one (then marked, so that
    older versions of batch_pipeline refuse the ledger)."""
    inspector = sa.inspect(conn)
    shard_columns = {column["name"] for column in inspector.get_columns("bp_shards")}
    if "deferrals" not in shard_columns:
        conn.execute(
            sa.text("ALTER TABLE bp_shards ADD COLUMN deferrals INTEGER NOT NULL DEFAULT 0")
        )
    partition_columns = {column["name"] for column in inspector.get_columns("bp_partitions")}
    if "request_fingerprint" not in partition_columns:  # unknown for generations built before
        conn.execute(
            sa.text("ALTER TABLE bp_partitions ADD COLUMN request_fingerprint VARCHAR(64)")
        )


def _fits_budget(conn: Connection, shard_id: str, budget: int) -> bool:
    """Whether the shard's tokens fit in its model's enqueued-token budget. Holds the model's
    budget until the transaction ends: SQLite's writers are serialised from BEGIN already;
    PostgreSQL takes an advisory lock, so the next claim of the model sees this one."""
    row = conn.execute(
        sa.select(shards_table.c.model, shards_table.c.estimated_input_tokens).where(
            shards_table.c.shard_id == shard_id
        )
    ).first()
    if row is None:
        return False
    if conn.dialect.name == "postgresql":
        conn.execute(
            sa.text("SELECT pg_advisory_xact_lock(:space, hashtext(:model))"),
            {"space": BUDGET_LOCK_SPACE, "model": row.model},
        )
    enqueued = _enqueued_tokens(conn, row.model)
    return not enqueued or enqueued + row.estimated_input_tokens <= budget


def _create_engine(url: str) -> Engine:
    parsed = database_url(url)
    if parsed.get_backend_name() == "sqlite":
        database = sqlite_file(parsed)
        if database is not None:
            database.parent.mkdir(parents=True, exist_ok=True)
        engine = open_engine(parsed, connect_args={"timeout": 60})

        @sa.event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _: Any) -> None:
            dbapi_conn.isolation_level = None  # let SQLAlchemy's BEGIN below take the lock
            cursor = dbapi_conn.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA busy_timeout=60000")
            cursor.close()

        @sa.event.listens_for(engine, "begin")
        def _sqlite_begin_immediate(conn: Connection) -> None:
            # Writers serialise at BEGIN, so a read-then-write never hits a stale snapshot.
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    return open_engine(parsed, pool_pre_ping=True)
