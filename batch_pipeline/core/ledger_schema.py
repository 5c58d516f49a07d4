"""The ledger's tables, their schema version and migrations, and how its database is opened.

Older ledgers stay readable: a column no version uses any more is kept (with a default), so a
database made by an earlier version opens, and is written to, unchanged.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError

from batch_pipeline.core.database_url import (
    DatabaseUrlError,
    database_url,
    open_engine,
    shown,
    sqlite_file,
)

# 2: shards start `built` (a state version 1 does not know), otherwise the same tables.
# 3: shards count `deferrals`, the tries of one submission cut short by the provider.
# 4: partitions keep the `request_fingerprint` of the spec their generation was built with.
# 5: partitions record when their intermediates were removed (`intermediates_removed_at`).
# 6: batches keep `expires_at`, the end of their completion window, for the wait reasons.
SCHEMA_VERSION = 6
SCHEMA_LOCK_KEY = 0x62705F6C6564  # "bp_led": one advisory lock for schema changes
# Columns of earlier versions that nothing reads: left out of the records read back.
UNUSED_PARTITION_COLUMNS = ("results_requested", "results_requested_at")

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
    # Unused since; kept, with a default, so that ledgers made before take new rows.
    sa.Column("results_requested", sa.Integer, nullable=False, default=0),
    sa.Column("results_requested_at", sa.Float),
    sa.Column("collected_at", sa.Float),
    sa.Column("cancelled_at", sa.Float),
    sa.Column("results_path", sa.Text),
    sa.Column("summary_json", sa.Text),
    sa.Column("request_fingerprint", sa.String(64)),
    sa.Column("intermediates_removed_at", sa.Float),
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
    sa.Column("expires_at", sa.Float),  # the end of the batch's completion window
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
)


def ensure_schema(engine: Engine, name: str) -> None:
    """Create the tables of a new ledger, or migrate those of an older version; refuse one
    of a newer version (`name` says which ledger in the error)."""
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            # Two processes creating the tables at once would collide in the catalogue.
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": SCHEMA_LOCK_KEY})
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
                f"the ledger at {name} has schema version {version}, newer than this "
                f"batch_pipeline understands ({SCHEMA_VERSION}); upgrade batch_pipeline"
            )
        if version is not None and version < SCHEMA_VERSION:
            _migrate(conn)
            conn.execute(schema_table.update().values(version=SCHEMA_VERSION))


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
    if "intermediates_removed_at" not in partition_columns:  # none removed before
        conn.execute(sa.text("ALTER TABLE bp_partitions ADD COLUMN intermediates_removed_at FLOAT"))
    batch_columns = {column["name"] for column in inspector.get_columns("bp_batches")}
    if "expires_at" not in batch_columns:  # unknown for batches created before
        conn.execute(sa.text("ALTER TABLE bp_batches ADD COLUMN expires_at FLOAT"))


CONNECT_TIMEOUT_SECONDS = 10


def create_engine(url: str) -> Engine:
    """An engine on the ledger's database: SQLite with WAL and writers serialised at BEGIN."""
    parsed = database_url(url)
    if parsed.get_backend_name() == "sqlite":
        database = sqlite_file(parsed)
        if database is None:
            raise DatabaseUrlError(
                f"{shown(parsed)}: an in-memory ledger is lost with its process (and is not "
                "shared between its threads), so a rerun would pay for batches again; give a "
                "SQLite file (sqlite:///path/ledger.db) or PostgreSQL"
            )
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
    options: dict[str, Any] = {}
    if parsed.get_backend_name() == "postgresql" and "connect_timeout" not in parsed.query:
        # A host that vanished (a failover) answers nothing: give up on it in time to retry.
        options["connect_args"] = {"connect_timeout": CONNECT_TIMEOUT_SECONDS}
    return open_engine(parsed, pool_pre_ping=True, **options)
