"""Every database URL the project opens takes its driver from one place."""

from __future__ import annotations

from pathlib import Path

import pytest

from batch_pipeline.core.database_url import DatabaseUrlError, database_url, open_engine


@pytest.mark.parametrize("scheme", ["postgresql", "postgres"])
def test_a_plain_postgresql_url_takes_the_installed_driver(scheme: str) -> None:
    url = database_url(f"{scheme}://user:pw@db.example:5432/tickets")
    assert url.drivername == "postgresql+psycopg2"
    assert (url.host, url.port, url.database, url.password) == ("db.example", 5432, "tickets", "pw")


def test_a_url_that_names_its_driver_keeps_it() -> None:
    assert database_url("postgresql+pg8000://h/db").drivername == "postgresql+pg8000"


def test_a_relative_sqlite_file_is_taken_from_the_given_folder(tmp_path: Path) -> None:
    assert database_url("sqlite:///a/b.db", base_dir=tmp_path).database == str(tmp_path / "a/b.db")
    assert database_url("sqlite:////abs/b.db", base_dir=tmp_path).database == "/abs/b.db"
    assert database_url("sqlite://", base_dir=tmp_path).database is None
    assert database_url("sqlite:///b.db").database == "b.db"  # no folder given: as written


def test_a_driver_that_is_not_installed_is_named_without_the_password() -> None:
    with pytest.raises(DatabaseUrlError, match="'psycopg', which is not installed") as caught:
        open_engine("postgresql+psycopg://user:s3cret@h/db")
    assert "s3cret" not in str(caught.value) and "postgresql://" in str(caught.value)


def test_an_unparsable_url_is_a_clear_error() -> None:
    with pytest.raises(DatabaseUrlError, match="not a database URL"):
        database_url("tickets.db")
