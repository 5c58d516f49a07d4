"""The ledger: the durable record of partitions, shards, batches and attempts.

SQLAlchemy Core over a SQLite file by default and PostgreSQL in production. Every state change
that matters for money (claiming a shard for submission, recording its batch) is a single
conditional UPDATE, so two processes working on one partition never both submit a shard.
Its tables and migrations are in `ledger_schema`, its records in `ledger_records`, its
leases in `leases`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError

from batch_pipeline.core.leases import (
    DEFAULT_LEASE_SECONDS,
    LeaseStatements,
    default_owner,
    enqueued_tokens,
)
from batch_pipeline.core.ledger_records import PartitionRecord, ShardRecord, partition_from_row
from batch_pipeline.core.ledger_schema import (
    SCHEMA_VERSION,
    batches_table,
    create_engine,
    ensure_schema,
    partitions_table,
    shards_table,
)
from batch_pipeline.core.reconnect import (
    Reconnect,
    database_location,
    reconnecting,
)
from batch_pipeline.core.spec import DEFAULT_RECONNECT_SECONDS
from batch_pipeline.core.types import BatchInfo, ShardInfo, ShardState

__all__ = [
    "DEFAULT_LEASE_SECONDS",
    "SCHEMA_VERSION",
    "Ledger",
    "PartitionRecord",
    "ShardRecord",
    "default_owner",
]


class Ledger(LeaseStatements):
    """Durable state of every pipeline sharing this database.

    Each public operation is one transaction, run again as a whole while the database is
    away for at most `reconnect_seconds` (see `reconnect`; never on SQLite, a local file).
    """

    def __init__(
        self,
        url: str,
        *,
        clock: Any = time.time,
        reconnect_seconds: float = DEFAULT_RECONNECT_SECONDS,
    ) -> None:
        self.url = url
        self._clock = clock
        self.engine: Engine = create_engine(url)
        local = self.engine.dialect.name == "sqlite"
        self._reconnect = Reconnect(
            database_location(self.engine.url), 0.0 if local else reconnect_seconds
        )
        self._reconnect.run(lambda: ensure_schema(self.engine, repr(self)))

    def close(self) -> None:
        self.engine.dispose()

    def __repr__(self) -> str:
        return f"Ledger({self.engine.url.render_as_string(hide_password=True)!r})"

    @contextmanager
    def _tx(self) -> Iterator[Connection]:
        if not self._reconnect.inside:  # else an outage would cut the operation in half
            raise RuntimeError("a ledger transaction outside a @reconnecting operation")
        with self.engine.begin() as conn:
            yield conn

    # -- partitions -------------------------------------------------------------------------

    @reconnecting
    def get_partition(self, pipeline: str, partition: str) -> PartitionRecord | None:
        with self._tx() as conn:
            row = conn.execute(
                sa.select(partitions_table).where(*_partition_is(pipeline, partition))
            ).first()
        return partition_from_row(row) if row else None

    @reconnecting
    def list_partitions(self, pipeline: str) -> list[PartitionRecord]:
        with self._tx() as conn:
            rows = conn.execute(
                sa.select(partitions_table)
                .where(partitions_table.c.pipeline == pipeline)
                .order_by(partitions_table.c.partition)
            ).all()
        return [partition_from_row(row) for row in rows]

    @reconnecting
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
                    collected_at=None,
                    cancelled_at=None,
                    results_path=None,
                    summary_json=None,
                    request_fingerprint=None,
                    intermediates_removed_at=None,
                    updated_at=now,
                )
            )
            return int(current) + 1

    @reconnecting
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

    @reconnecting
    def add_shards(self, shards: Sequence[ShardInfo]) -> None:
        """Register retry shards (queued); a shard already known is left as it is."""
        with self._tx() as conn:
            self._insert_shards(conn, shards, self._clock(), ShardState.QUEUED)

    @reconnecting
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

    @reconnecting
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

    @reconnecting
    def mark_cancelled(self, pipeline: str, partition: str, generation: int) -> None:
        """Record a user's cancel: no retries and no new submissions for this generation."""
        self._stamp_partition(pipeline, partition, generation, "cancelled_at")

    @reconnecting
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

    @reconnecting
    def mark_intermediates_removed(self, pipeline: str, partition: str, generation: int) -> None:
        """Record that the intermediates of the partition, up to this generation, are gone
        (nothing changes if a newer generation was started meanwhile)."""
        self._stamp_partition(pipeline, partition, generation, "intermediates_removed_at")

    def _stamp_partition(self, pipeline: str, partition: str, generation: int, column: str) -> None:
        """Set the time `column` of the partition's generation to now."""
        now = self._clock()
        with self._tx() as conn:
            conn.execute(
                partitions_table.update()
                .where(*_partition_is(pipeline, partition, generation))
                .values({column: now, "updated_at": now})
            )

    # -- shards -----------------------------------------------------------------------------

    @reconnecting
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

    @reconnecting
    def get_shard(self, shard_id: str) -> ShardRecord | None:
        with self._tx() as conn:
            row = conn.execute(
                sa.select(shards_table).where(shards_table.c.shard_id == shard_id)
            ).first()
        return ShardRecord.from_row(row) if row else None

    @reconnecting
    def enqueued_tokens(self, model: str) -> int:
        """Estimated input tokens of this model's shards that are being or have been submitted
        and whose batch has not finished: what counts against the provider's enqueued limit."""
        with self._tx() as conn:
            return enqueued_tokens(conn, model)

    @reconnecting
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

    @reconnecting
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
                        expires_at=batch.expires_at,
                        created_at=now,
                        updated_at=now,
                    )
                )
        return True

    @reconnecting
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
                    # kept when a provider's later reads leave it out
                    **({"expires_at": batch.expires_at} if batch.expires_at is not None else {}),
                )
            )
            conn.execute(
                shards_table.update()
                .where(shards_table.c.batch_id == batch.id)
                .values(batch_status=batch.status.value, updated_at=now)
            )
        return before is None or before[0] != batch.status.value

    @reconnecting
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
