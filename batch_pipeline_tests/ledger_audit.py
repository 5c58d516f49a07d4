"""Who claimed and who submitted each shard, as the ledger itself saw it.

A test that races several processes over one pipeline installs a trigger on the ledger's
shards table that records, in a table of its own, every claim of a shard for submission (the
new lease holder) and every submission (the holder whose lease the batch was recorded under,
and the batch). Every update goes through it, so nothing depends on sampling at the right
moment, and the product needs no hook of its own.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

import sqlalchemy as sa

from batch_pipeline.core.ledger import Ledger

AUDIT_TABLE = "test_shard_audit"
DAY_COLUMN = '"partition"'  # a keyword in SQL: quoted
_CREATE_TABLE = (
    f"CREATE TABLE {AUDIT_TABLE} (shard_id TEXT NOT NULL, day TEXT NOT NULL, owner TEXT NOT NULL, "
    "event TEXT NOT NULL, submission INTEGER NOT NULL, at DOUBLE PRECISION NOT NULL, "
    "batch_id TEXT)"
)
# A claim: the shard becomes `submitting` under a holder it did not have. A submission: a
# `submitting` shard becomes `submitted`; the lease it was recorded under names the submitter.
_CLAIMED = (
    "NEW.state = 'submitting' AND NEW.lease_owner IS NOT NULL AND "
    "(OLD.state <> 'submitting' OR OLD.lease_owner IS NULL OR OLD.lease_owner <> NEW.lease_owner)"
)
_SUBMITTED = "OLD.state = 'submitting' AND NEW.state = 'submitted'"


def _insert(owner: str, event: str, batch: str) -> str:
    return (
        f"INSERT INTO {AUDIT_TABLE} VALUES "
        f"(NEW.shard_id, NEW.{DAY_COLUMN}, {owner}, '{event}', NEW.submissions, "
        f"NEW.updated_at, {batch})"
    )


_CLAIM = _insert("NEW.lease_owner", "claimed", "NULL")
_SUBMISSION = _insert("OLD.lease_owner", "submitted", "NEW.batch_id")
_SQLITE = [
    f"CREATE TRIGGER test_shard_claimed AFTER UPDATE ON bp_shards WHEN {_CLAIMED} "
    f"BEGIN {_CLAIM}; END",
    f"CREATE TRIGGER test_shard_submitted AFTER UPDATE ON bp_shards WHEN {_SUBMITTED} "
    f"BEGIN {_SUBMISSION}; END",
]
_POSTGRESQL = [
    "CREATE FUNCTION test_shard_audit() RETURNS trigger AS $$ BEGIN "
    f"IF {_CLAIMED} THEN {_CLAIM}; END IF; IF {_SUBMITTED} THEN {_SUBMISSION}; END IF; "
    "RETURN NEW; END $$ LANGUAGE plpgsql",
    "CREATE TRIGGER test_shard_audit AFTER UPDATE ON bp_shards FOR EACH ROW "
    "EXECUTE FUNCTION test_shard_audit()",
]


@dataclass(frozen=True)
class ShardEvent:
    """One claim or submission of a shard, by the process (pid) whose lease it was."""

    shard_id: str
    day: str
    pid: int
    event: str
    submission: int
    at: float
    batch_id: str | None


def install(ledger_url: str) -> None:
    """Create the ledger's tables if need be, then the audit table and its trigger."""
    ledger = Ledger(ledger_url)
    try:
        with ledger.engine.begin() as conn:
            statements = _POSTGRESQL if conn.dialect.name == "postgresql" else _SQLITE
            for statement in [_CREATE_TABLE, *statements]:
                conn.execute(sa.text(statement))
    finally:
        ledger.close()


def events(ledger_url: str) -> list[ShardEvent]:
    """Every recorded claim and submission, in the order they happened."""
    ledger = Ledger(ledger_url)
    try:
        with ledger.engine.connect() as conn:
            rows = conn.execute(sa.text(f"SELECT * FROM {AUDIT_TABLE} ORDER BY at")).all()
    finally:
        ledger.close()
    return [
        ShardEvent(
            row.shard_id, row.day, _pid(row.owner), row.event, row.submission, row.at, row.batch_id
        )
        for row in rows
    ]


def wait_for_a_claim(ledger_url: str, pids: set[int], timeout: float) -> None:
    """Block until one of the processes `pids` has claimed a shard, so that an actor started
    next joins a race already under way rather than finding it over before it began (a
    process still importing on a loaded machine would otherwise never take part)."""
    deadline = time.monotonic() + timeout
    while not any(e.pid in pids for e in events(ledger_url)):
        if time.monotonic() > deadline:
            raise TimeoutError(f"none of the processes {sorted(pids)} claimed a shard")
        time.sleep(0.2)


def _pid(owner: str) -> int:
    """The process of a lease holder (`host:pid:suffix`)."""
    return int(owner.split(":")[1])


@dataclass(frozen=True)
class Race:
    """What each actor (a named process) claimed and submitted."""

    events: list[ShardEvent]
    actors: Mapping[int, str]

    def name(self, pid: int) -> str:
        return self.actors.get(pid, f"an unknown process {pid}")

    def submitters(self) -> dict[str, dict[str, str]]:
        """Day -> shard -> the actor that submitted it."""
        days: dict[str, dict[str, str]] = {}
        for e in self.events:
            if e.event == "submitted":
                days.setdefault(e.day, {})[e.shard_id] = self.name(e.pid)
        return days

    def check(self, shards: int) -> None:
        """Each of the `shards` was submitted once, by a known actor, and two actors or more
        submitted: the race ran between them. (Which day each one takes is up to the
        scheduler, so the check does not ask them to share one.)"""
        submitted = Counter(e.shard_id for e in self.events if e.event == "submitted")
        assert len(submitted) == shards and set(submitted.values()) == {1}, submitted
        names = {self.name(e.pid) for e in self.events}
        assert names <= set(self.actors.values()), f"claims by unknown processes: {names}"
        by_day = self.submitters()
        submitters = {actor for day in by_day.values() for actor in day.values()}
        assert len(submitters) >= 2, f"one actor submitted every shard: {by_day}"


@contextmanager
def recorded(ledger_url: str, actors: dict[int, str]) -> Iterator[Race]:
    """Install the audit and hand back, once the block ends, what the actors did; the caller
    names each actor (pid -> name) in `actors` as it starts them."""
    install(ledger_url)
    race = Race([], actors)
    yield race
    race.events.extend(events(ledger_url))
