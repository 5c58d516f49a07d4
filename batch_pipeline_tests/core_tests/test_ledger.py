"""The ledger's records, leases and compatibility with ledgers made by earlier versions."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from batch_pipeline.core.database_url import DatabaseUrlError
from batch_pipeline.core.leases import lease_is_free
from batch_pipeline.core.ledger import Ledger

DAY = "2026-11-20"


def test_a_ledger_with_the_old_results_request_columns_still_opens_and_takes_rows(tmp_path):
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    ledger = Ledger(url)
    ledger.start_generation("tickets", DAY, rebuild=False)
    with ledger.engine.begin() as conn:  # as an earlier version left it
        conn.execute(
            sa.text("UPDATE bp_partitions SET results_requested = 2, results_requested_at = 5.0")
        )
    ledger.close()

    reopened = Ledger(url)
    try:
        [record] = reopened.list_partitions("tickets")
        assert (record.partition, record.generation) == (DAY, 1)
        assert not hasattr(record, "results_requested")
        assert reopened.start_generation("tickets", DAY, rebuild=True) == 2
        assert reopened.start_generation("tickets", "2026-11-21", rebuild=False) == 1
        with reopened.engine.begin() as conn:
            columns = {c["name"] for c in sa.inspect(conn).get_columns("bp_partitions")}
            new_day = conn.execute(
                sa.text("SELECT results_requested FROM bp_partitions WHERE partition = :p"),
                {"p": "2026-11-21"},
            ).scalar()
        assert {"results_requested", "results_requested_at"} <= columns
        assert new_day == 0  # the NOT NULL column an older version reads gets its default
    finally:
        reopened.close()


def test_a_lease_is_free_when_unheld_ours_or_run_out_else_held() -> None:
    assert lease_is_free(None, None, "me", now=100.0)
    assert lease_is_free("me", 500.0, "me", now=100.0)
    assert lease_is_free("other-host:1:x", 99.0, "me", now=100.0)
    assert not lease_is_free("other-host:1:x", 500.0, "me", now=100.0)


def test_two_build_claims_of_one_generation_exclude_each_other_until_released(tmp_path):
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    try:
        generation = ledger.start_generation("tickets", DAY, rebuild=False)
        assert ledger.claim_build("tickets", DAY, generation, "a")
        assert not ledger.claim_build("tickets", DAY, generation, "b")
        ledger.release_build("tickets", DAY, generation, "a")
        assert ledger.claim_build("tickets", DAY, generation, "b")
    finally:
        ledger.close()


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///:memory:"])
def test_an_in_memory_ledger_is_refused_naming_what_to_give(url) -> None:
    with pytest.raises(DatabaseUrlError, match=r"in-memory ledger .* SQLite file .* PostgreSQL"):
        Ledger(url)
