"""A SQL source on the machine's real PostgreSQL, named by a plain `postgresql://` URL."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa

from batch_pipeline import PipelineSpec, load_pipeline
from batch_pipeline_tests.conftest import ticket_spec

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

DAY = "2026-11-20"
TABLE = """
CREATE TABLE tickets (
    ticket_id text PRIMARY KEY,
    subject text NOT NULL,
    body text,
    created_at timestamptz NOT NULL,
    amount numeric(10, 2),
    meta jsonb
)
"""
ROWS = [
    ("A", "Refund", "Please refund me.", "2026-11-20 00:00:00+00", "12.50", '{"vip": true}'),
    ("B", "Late", "Where is it?", "2026-11-20 13:45:10+00", "0.99", '{"tags": ["late"]}'),
    ("C", "Thanks", "All good.", "2026-11-20 23:59:59+00", None, '["x", 1]'),
    ("E", "Quiet", "No notes.", "2026-11-20 08:00:00+00", "1.00", None),
    ("D", "Tomorrow", "Not today.", "2026-11-21 00:00:00+00", "3.00", "{}"),
]


def plain_scheme(url: str) -> str:
    """The URL as the README writes it: `postgresql://`, no driver named."""
    return sa.make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


@pytest.fixture
def tickets_url(own_postgres_database: str) -> str:
    """A fresh database holding a `tickets` table of typical PostgreSQL column types."""
    engine = sa.create_engine(own_postgres_database)
    with engine.begin() as conn:
        conn.exec_driver_sql(TABLE)
        conn.execute(
            sa.text(
                "INSERT INTO tickets VALUES (:id, :subject, :body, CAST(:at AS timestamptz), "
                "CAST(:amount AS numeric), CAST(:meta AS jsonb))"
            ),
            [
                dict(zip(("id", "subject", "body", "at", "amount", "meta"), r, strict=True))
                for r in ROWS
            ],
        )
    engine.dispose()
    return plain_scheme(own_postgres_database)


def test_a_postgresql_source_runs_a_partition_end_to_end(tmp_path, batch_api, tickets_url):
    assert tickets_url.startswith("postgresql://")
    source = {
        "path": None,
        "sql": {"url": tickets_url, "query": "SELECT * FROM tickets"},
        "key": "ticket_id",
        "partition_column": "created_at",
    }
    data = ticket_spec(
        tmp_path,
        batch_api,
        source=source,
        request={"prompt": "{subject}: {body}"},
        ledger={"url": tickets_url},  # the ledger's tables beside the source's, same URL form
    )
    with load_pipeline(PipelineSpec.from_dict(data, base_dir=tmp_path)) as pipeline:
        summary = pipeline.run(DAY, poll_interval=0.2, timeout=90)
        results = pipeline.read_results(DAY).set_index("ticket_id").sort_index()

    assert summary.counts["succeeded"] == 4 and summary.rows == 4
    assert pipeline.ledger.engine.dialect.name == "postgresql"
    assert list(results.index) == ["A", "B", "C", "E"]  # D falls on the next day
    assert set(results["status"]) == {"succeeded"}
    assert results.loc["B", "response_text"] == "Late: Where is it?"
    assert [ts.to_pydatetime() for ts in results["created_at"]] == [
        datetime(2026, 11, 20, 0, 0, 0, tzinfo=UTC),
        datetime(2026, 11, 20, 13, 45, 10, tzinfo=UTC),
        datetime(2026, 11, 20, 23, 59, 59, tzinfo=UTC),
        datetime(2026, 11, 20, 8, 0, 0, tzinfo=UTC),
    ]
    assert results.loc["A", "amount"] == Decimal("12.50")
    assert results.loc["B", "amount"] == Decimal("0.99")
    assert results.loc["C", "amount"] is None
    # jsonb stays JSON text, each row with its own value (no keys borrowed from other rows).
    meta = [None if pd.isna(text) else json.loads(text) for text in results["meta"]]
    assert meta == [{"vip": True}, {"tags": ["late"]}, ["x", 1], None]


def test_a_timestamptz_partition_column_counts_days_in_the_schedules_zone(tickets_url):
    """23:30 UTC on the 19th is the 20th in Paris; 23:30 UTC on the 20th is the 21st there."""
    from batch_pipeline.core.sources import iter_partition_batches

    engine = sa.create_engine(tickets_url.replace("postgresql://", "postgresql+psycopg2://", 1))
    with engine.begin() as conn:
        assert conn.exec_driver_sql("SHOW TimeZone").scalar() != "Europe/Paris"
        conn.exec_driver_sql(
            "INSERT INTO tickets (ticket_id, subject, created_at) VALUES "
            "('EVE', 'Eve', '2026-11-19 23:30:00+00'), ('LATE', 'Late', '2026-11-20 23:30:00+00')"
        )
    engine.dispose()
    source = {
        "path": None,
        "sql": {"url": tickets_url, "query": "SELECT ticket_id, created_at FROM tickets"},
        "key": "ticket_id",
        "partition_column": "created_at",
    }
    data = ticket_spec(
        Path("."), "http://127.0.0.1:9/v1", source=source, schedule={"timezone": "Europe/Paris"}
    )
    spec = PipelineSpec.from_dict(data)

    def keys(day: str) -> list[str]:
        batches = iter_partition_batches(spec, day, columns=["ticket_id", "created_at"])
        return sorted(key for batch in batches for key in batch.column("ticket_id").to_pylist())

    # Paris is UTC+1 in November: its 20th runs from 19th 23:00 to 20th 23:00 UTC.
    assert keys(DAY) == ["A", "B", "E", "EVE"]
    assert keys("2026-11-21") == ["C", "D", "LATE"]
