"""Database URLs: the one place that decides which driver opens them.

The ledger and a SQL source both open URLs that users write as the README shows them
(`postgresql://...`). SQLAlchemy 2.1 opens a plain `postgresql://` with psycopg 3, which
batch_pipeline does not install; psycopg2 is installed (dagster-postgres uses it too), so plain
PostgreSQL URLs get it here. A URL that names its driver (`postgresql+psycopg://`) keeps it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import sqlalchemy as sa

POSTGRES_DRIVER = "postgresql+psycopg2"
# `postgres://` is what Heroku and many hosted databases hand out; SQLAlchemy knows no dialect
# of that name.
_PLAIN_POSTGRES = frozenset({"postgresql", "postgres"})
_MEMORY = (None, "", ":memory:")


class DatabaseUrlError(ValueError):
    """A database URL that cannot be opened: unparsable, or its driver is not installed."""


def database_url(url: str | sa.URL, *, base_dir: Path | None = None) -> sa.URL:
    """`url` as it is opened: plain PostgreSQL schemes take the installed driver, and a
    relative SQLite file is taken relative to `base_dir` when one is given."""
    try:
        parsed = sa.make_url(url)
    except sa.exc.ArgumentError as exc:
        raise DatabaseUrlError(f"not a database URL: {exc}") from None
    if parsed.drivername in _PLAIN_POSTGRES:
        parsed = parsed.set(drivername=POSTGRES_DRIVER)
    database = sqlite_file(parsed)
    if base_dir is not None and database is not None:
        parsed = parsed.set(database=str((base_dir / database.expanduser()).resolve()))
    return parsed


def sqlite_file(url: sa.URL) -> Path | None:
    """The file of a SQLite URL, None for another database or an in-memory one."""
    if url.get_backend_name() != "sqlite" or url.database in _MEMORY:
        return None
    return Path(url.database or "")


def shown(url: str | sa.URL) -> str:
    """The URL as it may appear in a message: its password hidden."""
    try:
        return sa.make_url(url).render_as_string(hide_password=True)
    except sa.exc.ArgumentError:
        return "<unparsable URL>"


def open_engine(url: str | sa.URL, *, base_dir: Path | None = None, **options: Any) -> sa.Engine:
    """An engine for `url` (see `database_url`); a driver that is not installed is named in a
    `DatabaseUrlError`, not a bare ModuleNotFoundError."""
    parsed = database_url(url, base_dir=base_dir)
    try:
        return sa.create_engine(parsed, **options)
    except ModuleNotFoundError as exc:
        hint = (
            " or write postgresql:// to use psycopg2"
            if parsed.drivername != POSTGRES_DRIVER
            else ""
        )
        raise DatabaseUrlError(
            f"the database URL {shown(parsed)} needs the Python module {exc.name!r}, which is "
            f"not installed: install it{hint}"
        ) from None
    except sa.exc.NoSuchModuleError as exc:
        raise DatabaseUrlError(f"the database URL {shown(parsed)}: {exc}") from None
