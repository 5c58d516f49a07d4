"""Read one partition (a day) of a pipeline's source rows as a stream of Arrow record batches.

Sources: a file or folder of .parquet, .csv or .jsonl files (through `pyarrow.dataset`, with the
day filter pushed down to the scan), a SQL query (through SQLAlchemy, filtered in the database,
streamed), or a pandas DataFrame handed over from Python (filtered in memory).

The partition column may be a date, a timestamp (naive: the day as it reads; tz-aware: the
day in the spec's `schedule.timezone`, the zone the partitions count days in) or an ISO text
(its first 10 characters are the day).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Sequence
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import sqlalchemy as sa

from batch_pipeline.core.database_url import open_engine
from batch_pipeline.core.spec import PipelineSpec, SpecError

DEFAULT_BATCH_SIZE = 65_536
READAHEAD_BATCHES = 2
STREAM_BUFFER_BYTES = 1 << 20
FILE_FORMATS = {".parquet": "parquet", ".csv": "csv", ".jsonl": "json"}
_PARTITION_PATTERN = re.compile(r"\d{4}-\d{2}-\d{2}")
_DAY_PREFIX = "^" + _PARTITION_PATTERN.pattern
_SQL_ALIAS = "batch_pipeline_source"


def parse_partition(partition: str) -> date:
    """The day a partition key names; anything but a real `YYYY-MM-DD` is a ValueError."""
    if not isinstance(partition, str) or not _PARTITION_PATTERN.fullmatch(partition):
        raise ValueError(f"partition {partition!r} is not a day in the form YYYY-MM-DD")
    try:
        return date.fromisoformat(partition)
    except ValueError as exc:
        raise ValueError(f"partition {partition!r} is not a valid date: {exc}") from None


def source_schema(spec: PipelineSpec, dataframe: pd.DataFrame | None = None) -> pa.Schema:
    """The source's columns, read without reading its rows.

    A source that exists but holds no data (an empty folder, zero-byte files) has an empty
    schema. SQL sources report column names with the null type: SQL text carries no types
    that hold for every database, so types are known only once rows are read.
    """
    if dataframe is not None:
        return _dataframe_table(dataframe.iloc[:0]).schema
    if spec.source.sql is not None:
        return pa.schema([pa.field(name, pa.null()) for name in _sql_columns(spec)])
    dataset = _file_dataset(spec)
    return pa.schema([]) if dataset is None else dataset.schema


def iter_partition_batches(
    spec: PipelineSpec,
    partition: str,
    *,
    dataframe: pd.DataFrame | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    columns: Sequence[str] | None = None,
    ties: Sequence[str] = (),
) -> Iterator[pa.RecordBatch]:
    """The source rows of `partition`, in record batches of at most `batch_size` rows.

    `dataframe` replaces the spec's source (notebooks). `columns` reads only those columns
    (default: all). Empty batches are never yielded, so an empty partition yields nothing.
    `ties`: for SQL sources, the columns that order rows sharing a key after the key itself;
    every read of a partition must give the same, so that such rows come in one order (the
    build's columns: a row's answer then goes to a row with the text it was asked for).
    """
    day = parse_partition(partition)
    wanted = list(columns) if columns is not None else None
    if dataframe is None and spec.source.sql is not None:
        yield from _sql_batches(spec, day, batch_size, wanted, ties)
        return
    dataset = (
        ds.dataset(_dataframe_table(dataframe)) if dataframe is not None else _file_dataset(spec)
    )
    if dataset is None:
        return
    check_columns(spec, dataset.schema.names, wanted or (), where=_where(spec, dataframe))
    partition_field = dataset.schema.field(spec.source.partition_column)
    if pa.types.is_binary(partition_field.type) or pa.types.is_large_binary(partition_field.type):
        raise _not_text_error(spec, dataset)
    expression = partition_filter(
        partition_field.name, partition_field.type, day, timezone=spec.schedule.timezone
    )
    empty = True
    for batch in _scan(dataset, wanted, expression, batch_size, filter_column=partition_field.name):
        if batch.num_rows:
            empty = False
            yield batch
    if empty:  # a day without rows, or a column of no day at all: told apart here
        _check_some_day(spec, _sample_if_no_day(dataset, partition_field))


def count_rows_without_day(spec: PipelineSpec, dataframe: pd.DataFrame | None = None) -> int:
    """How many source rows fall on no day at all: their partition column is null, or a text
    that does not start with a YYYY-MM-DD date. No partition's build reads them, so they are
    counted for the build to report. Parquet answers from its statistics where it can;
    text files and SQL sources take one extra scan of that column."""
    column = spec.source.partition_column
    if dataframe is None and spec.source.sql is not None:
        engine = _engine(spec)
        try:
            with engine.connect() as connection:
                quoted = engine.dialect.identifier_preparer.quote(column)
                query = f"SELECT COUNT(*) FROM {_subquery(spec)} WHERE {quoted} IS NULL"
                return int(connection.execute(sa.text(query)).scalar() or 0)
        finally:
            engine.dispose()
    dataset = (
        ds.dataset(_dataframe_table(dataframe)) if dataframe is not None else _file_dataset(spec)
    )
    if dataset is None or column not in dataset.schema.names:
        return 0
    field, column_type = ds.field(column), dataset.schema.field(column).type
    if pa.types.is_dictionary(column_type):
        field, column_type = field.cast(column_type.value_type), column_type.value_type
    no_day = field.is_null()
    if pa.types.is_string(column_type) or pa.types.is_large_string(column_type):
        no_day = no_day | ~pc.match_substring_regex(field, _DAY_PREFIX)
    try:
        return dataset.count_rows(filter=no_day)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as error:
        raise SourceError(f"source {spec.source.path} cannot be read: {error}") from error


def _check_some_day(spec: PipelineSpec, sample: Any) -> None:
    """SpecError naming the partition column and `sample`, one of its values, when no value
    of it is a day (`sample` is None otherwise): no partition would hold any row, and every
    day would quietly build empty."""
    if sample is not None:
        column = spec.source.partition_column
        raise SpecError(
            f"source.partition_column: no value of column {column!r} is a day (a date, a "
            f"timestamp or text starting with YYYY-MM-DD); it holds e.g. {sample!r}, so every "
            "partition would be empty: name the column that dates the rows"
        )


def _sample_if_no_day(dataset: ds.Dataset, field: pa.Field) -> Any:
    """A text column's first value when none of its values starts with a day, else None;
    dates and timestamps are days throughout."""
    column, column_type = ds.field(field.name), field.type
    if pa.types.is_dictionary(column_type):
        column, column_type = column.cast(column_type.value_type), column_type.value_type
    if not (pa.types.is_string(column_type) or pa.types.is_large_string(column_type)):
        return None
    is_day = pc.match_substring_regex(column, _DAY_PREFIX)
    if dataset.head(1, columns=[field.name], filter=is_day).num_rows:
        return None
    sample = dataset.head(1, columns=[field.name], filter=column.is_valid() & (column != ""))
    return sample.column(0)[0].as_py() if sample.num_rows else None


def _scan(
    dataset: ds.Dataset,
    columns: list[str] | None,
    expression: ds.Expression,
    batch_size: int,
    *,
    filter_column: str,
) -> Iterator[pa.RecordBatch]:
    """The filtered rows of a dataset, in source order (`expression` reads `filter_column`).

    Parquet is read one file at a time, skipping the row groups the filter rules out by their
    statistics. A file that holds the dataset's columns as they are (the usual case) is
    streamed page by page: memory holds a batch or two however large its row groups (Arrow's
    dataset scanner decodes a whole row group at once, 490 MB for a 1M-row group of 300
    characters a row; pandas writes its files so). Other files are read one row group at a
    time, with a short read-ahead (Arrow's own scanner, over a whole dataset, reads ahead
    without bound when its consumer is slower than the disk).
    """
    options: dict[str, Any] = {
        "columns": columns,
        "filter": expression,
        "batch_size": batch_size,
        "batch_readahead": READAHEAD_BATCHES,
        "fragment_readahead": 1,
    }
    if not isinstance(dataset, ds.FileSystemDataset):
        yield from dataset.to_batches(**options)
        return
    parquet = isinstance(dataset.format, ds.ParquetFileFormat)
    for fragment in dataset.get_fragments(filter=expression):
        try:
            pieces = (
                fragment.split_by_row_group(filter=expression, schema=dataset.schema)
                if parquet
                else [fragment]
            )
            if parquet and _streamable(fragment, dataset.schema, columns, filter_column):
                yield from _stream_row_groups(
                    fragment, pieces, dataset.schema, columns, expression, batch_size, filter_column
                )
                continue
            for piece in pieces:
                yield from piece.to_batches(schema=dataset.schema, **options)
        except pa.ArrowException as error:  # bad values, types without a comparison, ...
            if isinstance(error, MemoryError):
                raise
            message = _other_partition_type(fragment, dataset.schema, filter_column)
            raise SourceError(message or _unreadable(fragment.path, error)) from error


def _other_partition_type(
    fragment: ds.Fragment, schema: pa.Schema, filter_column: str
) -> str | None:
    """The message for a file whose partition column has another type than the source's
    (Arrow's own says only that no comparison of the two types exists); None otherwise."""
    try:
        physical = fragment.physical_schema
    except (pa.ArrowException, OSError):
        return None
    expected = schema.field(filter_column).type
    if filter_column not in physical.names or physical.field(filter_column).type == expected:
        return None
    return (
        f"source file {fragment.path} cannot be read: its partition column {filter_column!r} "
        f"is {physical.field(filter_column).type}, where the source's is {expected}"
    )


def _streamable(
    fragment: ds.Fragment, schema: pa.Schema, columns: list[str] | None, filter_column: str
) -> bool:
    """Whether a Parquet file can be read as it is: no partition columns from its path, and
    every column read (the filter's included) in the file with the dataset's type."""
    if not fragment.partition_expression.equals(ds.scalar(True)):
        return False
    physical = fragment.physical_schema
    return all(
        name in physical.names and physical.field(name).type == schema.field(name).type
        for name in {*(columns if columns is not None else schema.names), filter_column}
    )


def _stream_row_groups(
    fragment: ds.ParquetFileFragment,
    pieces: Sequence[ds.ParquetFileFragment],
    schema: pa.Schema,
    columns: list[str] | None,
    expression: ds.Expression,
    batch_size: int,
    filter_column: str,
) -> Iterator[pa.RecordBatch]:
    """The filtered rows of a Parquet file's row groups `pieces`, decoded page by page."""
    row_groups = [row_group.id for piece in pieces for row_group in piece.row_groups]
    if not row_groups:
        return
    # Row groups whose statistics put every row on the day are not filtered (a copy of
    # every row): those that might hold another day's rows, or nulls, are.
    outside = ~expression | ds.field(filter_column).is_null()
    mixed = {
        row_group.id
        for piece in fragment.split_by_row_group(filter=outside, schema=schema)
        for row_group in piece.row_groups
    }
    wanted = columns if columns is not None else schema.names
    read = list(dict.fromkeys([*wanted, filter_column]))
    with fragment.filesystem.open_input_file(fragment.path) as handle:
        file = pq.ParquetFile(handle, pre_buffer=False, buffer_size=STREAM_BUFFER_BYTES)
        for row_group in row_groups:
            for batch in file.iter_batches(batch_size, row_groups=[row_group], columns=read):
                if row_group in mixed:
                    batch = batch.filter(expression)
                yield batch.select(wanted)  # in the dataset's column order


class SourceError(ValueError):
    """A source file whose rows cannot be read; the message names the file."""


_JSON_TYPE_CHANGE = re.compile(r"Column\(/([^)/]+)\) changed from (\w+) to (\w+)")
_JSON_KINDS = {
    str: "string",
    bool: "boolean",
    int: "number",
    float: "number",
    dict: "object",
    list: "array",
}


def _unreadable(path: str, error: Exception) -> str:
    """The message for a file Arrow failed to read: its reason, and for a JSON field that
    changes type, the line where it does (Arrow counts rows within a block)."""
    reason = str(error).removeprefix("Invalid: ").strip()
    changed = _JSON_TYPE_CHANGE.search(reason)
    if changed is None:
        return f"source file {path} cannot be read: {reason}"
    field, before, after = changed.groups()
    line = _first_line_of_kind(path, field, after)
    where = f" at line {line}" if line else ""
    return (
        f"source file {path} cannot be read: field {field!r} holds a {before} in earlier lines "
        f"and a {after}{where}; Arrow reads each JSON field as one type in every line, so "
        "write a text field's values as JSON strings throughout (or convert the file to Parquet)"
    )


def _first_line_of_kind(path: str, field: str, kind: str) -> int | None:
    """The 1-based number of the first line whose `field` is a JSON value of `kind`."""
    with open(path, "rb") as lines:
        for number, line in enumerate(lines, start=1):
            try:
                value = orjson.loads(line).get(field)
            except (orjson.JSONDecodeError, AttributeError):
                continue
            if _JSON_KINDS.get(type(value)) == kind:
                return number
    return None


def check_columns(
    spec: PipelineSpec, names: Sequence[str], extra: Sequence[str] = (), *, where: str = ""
) -> None:
    """SpecError unless the key, the partition column and `extra` columns are all present."""
    required = [
        ("source.key", spec.source.key),
        ("source.partition_column", spec.source.partition_column),
        *(("column", name) for name in extra),
    ]
    for role, column in required:
        if column not in names:
            listing = ", ".join(repr(name) for name in names) or "none"
            raise SpecError(
                f"{role}: column {column!r} is not in the source{where}; its columns: {listing}"
            )


def _not_text_error(spec: PipelineSpec, dataset: ds.Dataset) -> SpecError:
    """Name the first row whose partition value is not UTF-8 text (a reader types the whole
    column as bytes then, so no day can be told apart)."""
    column, key = spec.source.partition_column, spec.source.key
    row = 0
    for batch in dataset.to_batches(columns=[column, key]):
        for offset, value in enumerate(batch.column(column).to_pylist()):
            if value is not None:
                try:
                    value.decode("utf-8")
                except UnicodeDecodeError:
                    return SpecError(
                        f"source.partition_column: row {row + offset} (key "
                        f"{batch.column(key)[offset].as_py()!r}) of column {column!r} is not "
                        f"UTF-8 text: {value!r}; fix that row or re-encode the source"
                    )
        row += batch.num_rows
    return SpecError(f"source.partition_column: column {column!r} holds bytes, not dates")


def partition_filter(
    column: str, column_type: pa.DataType, day: date, *, timezone: str = "UTC"
) -> ds.Expression:
    """A dataset filter keeping the rows of `column` that fall on `day` (pushed down to scans).

    A timezone-aware timestamp falls on the day it is in `timezone` (the spec's
    `schedule.timezone`, which the Dagster partitions and the nightly schedule count days
    in too); naive timestamps, dates and ISO strings are taken as they read.
    """
    field = ds.field(column)
    if pa.types.is_dictionary(column_type):
        field, column_type = field.cast(column_type.value_type), column_type.value_type
    if pa.types.is_date(column_type):
        return field == pa.scalar(day, column_type)
    if pa.types.is_timestamp(column_type):
        start, end = _day_bounds(day, timezone if column_type.tz else None)
        return (field >= pa.scalar(start, column_type)) & (field < pa.scalar(end, column_type))
    if pa.types.is_string(column_type) or pa.types.is_large_string(column_type):
        # The same as "first 10 characters equal the day", but as a range the scan can push down:
        # the upper end is the day with its last character bumped, the next 10-char string.
        text = day.isoformat()
        return (field >= text) & (field < text[:-1] + chr(ord(text[-1]) + 1))
    raise SpecError(
        f"source.partition_column: column {column!r} has type {column_type}; "
        "it must be a date, a timestamp or an ISO date string"
    )


def _day_bounds(day: date, tz: str | None) -> tuple[datetime, datetime]:
    """Midnight of `day` and of the next day, as wall time (naive) or in the zone `tz`."""
    start = datetime.combine(day, datetime.min.time())
    end = start + timedelta(days=1)
    if tz is None:
        return start, end

    def localize(moment: datetime) -> datetime:
        localized = pd.Timestamp(moment).tz_localize(
            tz, ambiguous=True, nonexistent="shift_forward"
        )
        return localized.to_pydatetime()

    return localize(start), localize(end)


def _where(spec: PipelineSpec, dataframe: pd.DataFrame | None) -> str:
    if dataframe is not None:
        return " (the DataFrame)"
    if spec.source.sql is not None:
        return " (the SQL query)"
    return f" ({spec.resolve(spec.source.path or '')})"


# -- files -----------------------------------------------------------------------------------


def _file_dataset(spec: PipelineSpec) -> ds.Dataset | None:
    """The dataset over the source path, or None when the path holds no data."""
    path = spec.resolve(spec.source.path or "")
    if not path.exists():
        raise SpecError(f"source.path: {path} does not exist")
    file_format, files = _data_files(path)
    if not files:
        return None
    sources = [str(file) for file in files]
    if file_format == "csv":
        file_format = _csv_format(spec)
    options: dict[str, Any] = (
        {} if path.is_file() else {"partitioning": "hive", "partition_base_dir": str(path)}
    )
    try:
        dataset = ds.dataset(sources, format=file_format, **options)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as error:  # the message names the file
        raise SourceError(f"source {path} cannot be read: {error}") from error
    typed = nulls_as_text(dataset.schema)  # types come from the first file alone
    if isinstance(file_format, ds.CsvFileFormat):
        typed = _csv_types_for_every_row(spec, sources, file_format, typed)
    if typed != dataset.schema:
        dataset = ds.dataset(sources, format=file_format, schema=typed, **options)
    return dataset


def nulls_as_text(schema: pa.Schema) -> pa.Schema:
    """The schema with its null-typed columns as text.

    A column is null-typed where the rows its type was read from hold no value in it (a SQL
    batch, the first file of a folder); a later value of any type then still fits (the
    results file's columns are fixed by then).
    """
    return pa.schema(
        [f.with_type(pa.string()) if pa.types.is_null(f.type) else f for f in schema],
        metadata=schema.metadata,
    )


def _csv_format(spec: PipelineSpec) -> ds.CsvFileFormat:
    """CSV with the key column read as text, so a key `007` stays `007` rather than 7 (which
    would then collide with a real 7), and quoted values that run over several lines. Other
    columns keep inferred types (`_csv_types_for_every_row`), so a column with bytes that are
    not UTF-8 reads as binary and only its bad rows are rejected."""
    return ds.CsvFileFormat(
        parse_options=pa_csv.ParseOptions(newlines_in_values=True),
        convert_options=pa_csv.ConvertOptions(column_types={spec.source.key: pa.string()}),
    )


_CSV_CONVERSION_ERROR = re.compile(r"In CSV column #(\d+): .*CSV conversion error")
_CSV_SCHEMAS: dict[tuple[Any, ...], pa.Schema] = {}


def _csv_types_for_every_row(
    spec: PipelineSpec, sources: list[str], file_format: ds.CsvFileFormat, schema: pa.Schema
) -> pa.Schema:
    """`schema` with each CSV column typed so that every row of every file converts.

    Arrow infers a column's type from the first block (1 MB) of the first file: a column of
    numbers that turns to text further on would fail the read, at the build or, worse, at
    the results of a day already paid for. One scan of the files (about 1 s a GB) finds such
    columns; each is read as text instead, or as bytes where its text is not UTF-8 (the
    build rejects those rows by name). Remembered per file version within a process.
    """
    files = tuple((path, os.stat(path).st_size, os.stat(path).st_mtime_ns) for path in sources)
    remembered = (files, spec.source.key, schema.to_string())
    if remembered not in _CSV_SCHEMAS:
        for path in sources:
            schema = _widened_for_file(path, file_format, schema, spec.source.key)
        if len(_CSV_SCHEMAS) >= 64:
            _CSV_SCHEMAS.clear()
        _CSV_SCHEMAS[remembered] = schema
    return _CSV_SCHEMAS[remembered]


def _widened_for_file(
    path: str, file_format: ds.CsvFileFormat, schema: pa.Schema, key: str
) -> pa.Schema:
    """`schema` widened until every row of the CSV file at `path` converts to it."""
    names = ds.dataset(path, format=file_format).schema.names  # the file's own column order
    for _ in range(2 * len(names) + 1):  # each column widens at most twice
        file_schema = pa.schema([schema.field(name) for name in names if name in schema.names])
        try:
            for _batch in ds.dataset(path, format=file_format, schema=file_schema).to_batches():
                pass
            return schema
        except pa.ArrowInvalid as error:
            found = _CSV_CONVERSION_ERROR.search(str(error))
            if found is None:
                raise SourceError(_unreadable(path, error)) from error
            name = names[int(found[1])]
            if name == key or name not in schema.names:
                raise
            field = schema.field(name)
            wider = pa.binary() if pa.types.is_string(field.type) else pa.string()
            if field.type == wider:
                raise
            schema = schema.set(schema.get_field_index(name), field.with_type(wider))
    return schema


def _data_files(path: Path) -> tuple[str, list[Path]]:
    """The format and the non-empty data files of a source file or folder."""
    if path.is_file():
        file_format = FILE_FORMATS.get(path.suffix.lower())
        if file_format is None:
            raise SpecError(f"source.path: {path} is not a .parquet, .csv or .jsonl file")
        return file_format, [path] if path.stat().st_size else []
    files = [
        file
        for file in sorted(path.rglob("*"))
        if file.is_file() and not _is_hidden(file.relative_to(path))
    ]
    suffixes = {file.suffix.lower() for file in files}
    formats = {FILE_FORMATS[suffix] for suffix in suffixes if suffix in FILE_FORMATS}
    if files and not formats:
        raise SpecError(
            f"source.path: folder {path} has no .parquet, .csv or .jsonl files "
            f"(found {', '.join(sorted(suffixes))})"
        )
    if len(formats) > 1:
        raise SpecError(
            f"source.path: folder {path} mixes formats ({', '.join(sorted(formats))}); "
            "keep one format per source"
        )
    if not formats:
        return "parquet", []
    (file_format,) = formats
    data = [
        file
        for file in files
        if FILE_FORMATS.get(file.suffix.lower()) == file_format and file.stat().st_size
    ]
    return file_format, data


def _is_hidden(relative: Path) -> bool:
    """Hidden and bookkeeping files (`.crc`, `_SUCCESS`, `_temporary/`) are not data."""
    return any(part.startswith((".", "_")) for part in relative.parts)


# -- DataFrame -------------------------------------------------------------------------------


def _dataframe_table(dataframe: pd.DataFrame) -> pa.Table:
    """The DataFrame as Arrow. Text Arrow cannot hold (lone surrogates) becomes a binary
    column of its raw bytes, so the request builder can reject those rows one by one; an
    object column mixing Python types (`"A1"` and `2`) becomes text, as SQL sources do."""
    try:
        return pa.Table.from_pandas(dataframe, preserve_index=False)
    except (UnicodeEncodeError, pa.ArrowInvalid, pa.ArrowTypeError):
        pass
    arrays = []
    for name in dataframe.columns:
        series = dataframe[name]
        try:
            arrays.append(pa.array(series, from_pandas=True))
        except UnicodeEncodeError:
            arrays.append(
                pa.array(
                    [
                        value.encode("utf-8", "surrogatepass") if isinstance(value, str) else None
                        for value in series
                    ],
                    pa.binary(),
                )
            )
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            arrays.append(
                pa.array([None if _is_missing(value) else str(value) for value in series])
            )
    return pa.Table.from_arrays(arrays, names=[str(name) for name in dataframe.columns])


def _is_missing(value: object) -> bool:
    """None, NaN or pandas' NA/NaT: a missing value, not a text."""
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):  # a list or an array: a value
        return False


# -- SQL -------------------------------------------------------------------------------------


def _engine(spec: PipelineSpec) -> sa.Engine:
    """An engine for the source URL; a relative SQLite file is relative to the spec's folder."""
    assert spec.source.sql is not None
    engine = open_engine(spec.source.sql.resolved_url, base_dir=spec.base_dir)
    if engine.dialect.name == "postgresql":
        _count_days_in_zone(engine, spec.schedule.timezone)
    return engine


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


def _subquery(spec: PipelineSpec) -> str:
    assert spec.source.sql is not None
    return f"({spec.source.sql.query.strip().rstrip(';')}) AS {_SQL_ALIAS}"


def _sql_columns(spec: PipelineSpec) -> list[str]:
    engine = _engine(spec)
    try:
        with engine.connect() as connection:
            result = connection.execute(sa.text(f"SELECT * FROM {_subquery(spec)} WHERE 1 = 0"))
            return list(result.keys())
    finally:
        engine.dispose()


def _sql_batches(
    spec: PipelineSpec,
    day: date,
    batch_size: int,
    columns: list[str] | None,
    ties: Sequence[str] = (),
) -> Iterator[pa.RecordBatch]:
    """The day's rows of the query, filtered by the database and streamed in batches.

    The day's bounds are bound parameters in ISO form, which databases compare correctly
    against date, timestamp and ISO text columns alike. Rows come ordered by the key, then
    by `ties`: SQL promises no order otherwise (two reads may take two plans), and every read
    of a partition must number its rows alike.
    """
    check_columns(spec, _sql_columns(spec), [*(columns or ()), *ties], where=_where(spec, None))
    engine = _engine(spec)
    quote = engine.dialect.identifier_preparer.quote
    selected = ", ".join(quote(name) for name in columns) if columns else "*"
    partition_column = quote(spec.source.partition_column)
    order = ", ".join(quote(name) for name in dict.fromkeys([spec.source.key, *ties]))
    statement = sa.text(
        f"SELECT {selected} FROM {_subquery(spec)} "
        f"WHERE {partition_column} >= :day_start AND {partition_column} < :day_end "
        f"ORDER BY {order}"
    )
    bounds = {"day_start": day.isoformat(), "day_end": (day + timedelta(days=1)).isoformat()}
    try:
        with engine.connect() as connection:
            result = connection.execution_options(
                stream_results=True, yield_per=batch_size
            ).execute(statement, bounds)
            names = list(result.keys())
            known: dict[str, pa.DataType] = {}
            empty = True
            for rows in result.partitions(batch_size):
                if rows:
                    empty = False
                    yield _rows_to_batch(names, rows, known)
        if empty:  # a day without rows, or a column of no day at all: told apart here
            _check_some_day(spec, _sql_sample_if_no_day(spec, engine))
    finally:
        engine.dispose()


def _sql_sample_if_no_day(spec: PipelineSpec, engine: sa.Engine) -> Any:
    """The query's first partition value when none of its values is a day, else None (read
    in Python: SQL has no test for "a date" that every database shares)."""
    column = engine.dialect.identifier_preparer.quote(spec.source.partition_column)
    statement = sa.text(f"SELECT {column} FROM {_subquery(spec)} WHERE {column} IS NOT NULL")
    first = None
    with engine.connect() as connection:
        result = connection.execution_options(stream_results=True).execute(statement)
        for (value,) in result:
            if isinstance(value, date) or (isinstance(value, str) and re.match(_DAY_PREFIX, value)):
                return None
            first = value if first is None and value != "" else first
    return first


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
