"""Leases: which process holds a shard (or a partition's build) for now, and the one rule of
when another may take it over.

A lease is free when nobody holds it, this owner holds it, it ran out, or its holder is a
process of this host known to have died. The ledger applies the rule in its conditional
UPDATEs (`free_lease`); a scheduler applies the same rule to rows it has read
(`lease_is_free`).
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from batch_pipeline.core.ledger_records import ShardRecord
from batch_pipeline.core.ledger_schema import partitions_table, shards_table
from batch_pipeline.core.reconnect import Reconnect, reconnecting
from batch_pipeline.core.types import BatchStatus, ShardState

DEFAULT_LEASE_SECONDS = 300.0
BUDGET_LOCK_SPACE = 0x62705F74  # "bp_t": advisory locks on a model's token budget


def default_owner() -> str:
    """An identity for lease holders: host, process and a random suffix."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def lease_holder_is_dead(owner: str | None) -> bool:
    """True when `owner` names a process of this host that no longer runs."""
    if not owner:
        return False
    host, _, rest = owner.partition(":")
    pid_text = rest.partition(":")[0]
    if host != socket.gethostname() or not pid_text.isdigit():
        return False
    pid = int(pid_text)
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def dead_lease_owner(shard: ShardRecord) -> str | None:
    """The shard's lease holder when it is a process known to have died, else None."""
    return shard.lease_owner if lease_holder_is_dead(shard.lease_owner) else None


def lease_is_free(holder: str | None, expires_at: float | None, owner: str, now: float) -> bool:
    """The lease rule on a row already read: whether `owner` may take this lease at `now`."""
    if not holder or holder == owner or (expires_at or 0) < now:
        return True
    return lease_holder_is_dead(holder)


def free_lease(
    holder: sa.ColumnElement[Any],
    expires_at: sa.ColumnElement[Any],
    owner: str,
    now: float,
    dead_owner: str | None = None,
) -> sa.ColumnElement[bool]:
    """The lease rule as a WHERE clause: free, ours, run out, or held by `dead_owner` (a
    holder the caller found dead)."""
    holders = [holder.is_(None), holder == owner, expires_at < now]
    if dead_owner is not None:
        holders.append(holder == dead_owner)
    return sa.or_(*holders)


class LeaseStatements:
    """The ledger's statements that take, renew and give up leases (mixed into `Ledger`)."""

    _clock: Callable[[], float]
    _reconnect: Reconnect
    _tx: Callable[[], AbstractContextManager[Connection]]
    update_shard: Callable[..., bool]

    @reconnecting
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
        with self._tx() as conn:
            result = conn.execute(
                table.update()
                .where(
                    *_unbuilt(pipeline, partition, generation),
                    free_lease(
                        table.c.build_owner, table.c.build_lease_expires_at, owner, now, dead_owner
                    ),
                )
                .values(build_owner=owner, build_lease_expires_at=now + lease_seconds)
            )
        return result.rowcount == 1

    @reconnecting
    def release_build(self, pipeline: str, partition: str, generation: int, owner: str) -> None:
        """Give up the right to build a generation (a build that failed), so that the next
        attempt, from any process, starts at once rather than after the lease."""
        table = partitions_table
        with self._tx() as conn:
            conn.execute(
                table.update()
                .where(*_unbuilt(pipeline, partition, generation), table.c.build_owner == owner)
                .values(build_owner=None, build_lease_expires_at=None)
            )

    @reconnecting
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
        """Take the shard for `owner` if it is in one of `from_states` and its lease is free
        (see the module). `new_submission` counts a fresh submission in the same statement,
        so the identity the provider batch carries changes atomically with the claim. With
        `token_budget`, the shard is taken only while its estimated input tokens fit in that
        budget of its model's enqueued tokens (or none are enqueued), checked in the claim's
        own transaction so that concurrent submitters cannot overshoot it together.
        None if someone else has it, or the budget is used up.
        """
        now = self._clock()
        table = shards_table
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
                .where(
                    free_lease(
                        table.c.lease_owner, table.c.lease_expires_at, owner, now, dead_owner
                    )
                )
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

    @reconnecting
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


def _unbuilt(pipeline: str, partition: str, generation: int) -> tuple[Any, ...]:
    """The conditions that pick a generation's partition row while it is not built yet."""
    table = partitions_table
    return (
        table.c.pipeline == pipeline,
        table.c.partition == partition,
        table.c.generation == generation,
        table.c.built_at.is_(None),
    )


def enqueued_tokens(conn: Connection, model: str) -> int:
    """Estimated input tokens of the model's shards being or already submitted whose batch
    has not finished."""
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
    used = enqueued_tokens(conn, row.model)
    return not used or used + row.estimated_input_tokens <= budget
