"""A SQL query as a source, through SQLAlchemy: each day filtered in the database and streamed
in batches, ordered so that every read of a day gives its rows in one order."""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from datetime import date
from typing import Any

import orjson
import pyarrow as pa
import sqlalchemy as sa

from batch_pipeline.core.database_url import open_engine
from batch_pipeline.core.partition import Partition
from batch_pipeline.core.sources.checks import check_columns, check_some_day, splits_by_day
from batch_pipeline.core.sources.days import DAY_PREFIX, day_span
from batch_pipeline.core.spec import PipelineSpec

_SQL_ALIAS = "batch_pipeline_source"


class SqlSource:
    """The spec's `source.sql` query. Each operation opens its own engine and disposes of it,
    so the object holds no connection between reads."""

    where = " (the SQL query)"

    def __init__(self, spec: PipelineSpec) -> None:
        assert spec.source.sql is not None
        self.spec = spec
        self._subquery = f"({spec.source.sql.query.strip().rstrip(';')}) AS {_SQL_ALIAS}"

    def schema(self) -> pa.Schema:
        """Column names with the null type: SQL text carries no types that hold for every
        database, so types are known only once rows are read."""
        return pa.schema([pa.field(name, pa.null()) for name in self._columns()])

    def batches(
        self,
        day: date | Partition,
        *,
        batch_size: int,
        columns: Sequence[str] | None = None,
        ties: Sequence[str] = (),
    ) -> Iterator[pa.RecordBatch]:
        """The rows of `day` (or of a partition's days, or every row) of the query, filtered
        by the database and streamed in batches.

        The days' bounds are bound parameters in ISO form, which databases compare correctly
        against date, timestamp and ISO text columns alike. Rows come ordered by the key, then
        by `ties`: SQL promises no order otherwise (two reads may take two plans), and every
        read of a partition must number its rows alike.
        """
        check_columns(self.spec, self._columns(), [*(columns or ()), *ties], where=self.where)
        span = day_span(day)
        bounds = {}
        if span is not None:  # ISO dates: `str` of a date
            bounds = {"day_start": str(span[0]), "day_end": str(span[1])}
        engine = self._engine()
        try:
            with engine.connect() as connection:
                result = connection.execution_options(
                    stream_results=True, yield_per=batch_size
                ).execute(self._day_query(engine, columns, ties, every_row=span is None), bounds)
                names = list(result.keys())
                known: dict[str, pa.DataType] = {}
                empty = True
                for rows in result.partitions(batch_size):
                    if rows:
                        empty = False
                        yield _rows_to_batch(names, rows, known)
            if empty and span is not None:  # no rows that day, or a column of no day at all
                check_some_day(self.spec, self._sample_if_no_day(engine))
        finally:
            engine.dispose()

    def count_rows_without_day(self) -> int:
        """Rows whose partition column is null (counted by the database)."""
        if not splits_by_day(self.spec):
            return 0
        engine = self._engine()
        try:
            with engine.connect() as connection:
                column = self._quoted(engine, self.spec.source.partition_column)
                query = f"SELECT COUNT(*) FROM {self._subquery} WHERE {column} IS NULL"
                return int(connection.execute(sa.text(query)).scalar() or 0)
        finally:
            engine.dispose()

    def _engine(self) -> sa.Engine:
        """An engine for the source URL; a relative SQLite file is relative to the spec's
        folder."""
        assert self.spec.source.sql is not None
        engine = open_engine(self.spec.source.sql.resolved_url, base_dir=self.spec.base_dir)
        if engine.dialect.name == "postgresql":
            _count_days_in_zone(engine, self.spec.schedule.timezone)
        return engine

    @staticmethod
    def _quoted(engine: sa.Engine, name: str) -> str:
        return engine.dialect.identifier_preparer.quote(name)

    def _columns(self) -> list[str]:
        engine = self._engine()
        try:
            with engine.connect() as connection:
                query = f"SELECT * FROM {self._subquery} WHERE 1 = 0"
                return list(connection.execute(sa.text(query)).keys())
        finally:
            engine.dispose()

    def _day_query(
        self,
        engine: sa.Engine,
        columns: Sequence[str] | None,
        ties: Sequence[str],
        *,
        every_row: bool = False,
    ) -> sa.TextClause:
        """The query of some days' rows (bound `day_start`, `day_end`), or of `every_row`,
        key and ties ordered."""
        source = self.spec.source
        selected = ", ".join(self._quoted(engine, name) for name in columns) if columns else "*"
        order = ", ".join(self._quoted(engine, name) for name in dict.fromkeys([source.key, *ties]))
        where = ""
        if not every_row:
            column = self._quoted(engine, source.partition_column or "")
            where = f"WHERE {column} >= :day_start AND {column} < :day_end "
        return sa.text(f"SELECT {selected} FROM {self._subquery} {where}ORDER BY {order}")

    def _sample_if_no_day(self, engine: sa.Engine) -> Any:
        """The query's first partition value when none of its values is a day, else None
        (read in Python: SQL has no test for "a date" that every database shares)."""
        column = self._quoted(engine, self.spec.source.partition_column)
        statement = sa.text(f"SELECT {column} FROM {self._subquery} WHERE {column} IS NOT NULL")
        first = None
        with engine.connect() as connection:
            result = connection.execution_options(stream_results=True).execute(statement)
            for (value,) in result:
                if isinstance(value, date) or (
                    isinstance(value, str) and re.match(DAY_PREFIX, value)
                ):
                    return None
                first = value if first is None and value != "" else first
        return first


def _count_days_in_zone(engine: sa.Engine, timezone: str) -> None:
    """Make each PostgreSQL session's zone the spec's, so a `timestamptz` partition column
    falls on its day in `schedule.timezone` (as in file sources), not in the server's zone."""

    @sa.event.listens_for(engine, "connect")
    def set_zone(dbapi_connection: Any, _record: Any) -> None:
        autocommit = dbapi_connection.autocommit
        dbapi_connection.autocommit = True  # outlives the first transaction's rollback
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("SELECT set_config('TimeZone', %s, false)", (timezone,))
        finally:
            cursor.close()
            dbapi_connection.autocommit = autocommit


def _rows_to_batch(
    names: list[str], rows: Sequence[Sequence[object]], known: dict[str, pa.DataType]
) -> pa.RecordBatch:
    """Rows as a record batch whose column types agree with the earlier batches' (`known`,
    updated): a column that is all null here, or typed otherwise, takes the earlier type."""
    arrays = []
    for name, values in zip(names, zip(*rows, strict=True), strict=True):
        array = _column_array(values, known.get(name))
        if not pa.types.is_null(array.type):
            known.setdefault(name, array.type)
        arrays.append(array)
    return pa.RecordBatch.from_arrays(arrays, names=names)


def _column_array(values: Sequence[object], known: pa.DataType | None) -> pa.Array:
    """The values in the `known` type if they fit it, else Arrow's inferred type; values that
    disagree on a type (SQLite allows it) become text. JSON objects (json/jsonb columns) stay
    JSON text: as structs every row would take every other row's keys."""
    if any(isinstance(value, dict) for value in values):
        return pa.array([_sql_text(value) for value in values], pa.string())
    # A column already text stays text: inferring another type would break the batches' schema.
    for kind in (known,) if known == pa.string() else (known, None):
        try:
            return pa.array(values, kind)
        except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
            continue
    return pa.array([_sql_text(value) for value in values], pa.string())


def _sql_text(value: object) -> str | None:
    """A database value as text: JSON for objects and lists, so a reader can parse it back."""
    if value is None:
        return None
    if isinstance(value, dict | list):
        return orjson.dumps(value, default=str).decode()
    return str(value)
