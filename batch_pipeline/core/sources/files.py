"""A file or folder of .parquet, .csv or .jsonl files as a source, read through
`pyarrow.dataset` (a folder may be Hive-partitioned)."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.dataset as ds

from batch_pipeline.core.sources.checks import SourceError, unreadable
from batch_pipeline.core.sources.dataset import DatasetSource
from batch_pipeline.core.spec import PipelineSpec, SpecError

FILE_FORMATS = {".parquet": "parquet", ".csv": "csv", ".jsonl": "json"}


class FileSource(DatasetSource):
    """The spec's `source.path`. The files are found again at each read, so a read sees the
    folder as it is then."""

    def __init__(self, spec: PipelineSpec) -> None:
        self.spec = spec
        self.where = f" ({spec.resolve(spec.source.path or '')})"

    def schema(self) -> pa.Schema:
        """The files' columns (empty when they hold no data)."""
        dataset = self._dataset()
        return pa.schema([]) if dataset is None else dataset.schema

    def _dataset(self) -> ds.Dataset | None:
        """The dataset over the source path, or None when the path holds no data."""
        spec = self.spec
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


# -- which files ------------------------------------------------------------------------------


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
    file_format = _folder_format(path, files)
    data = [
        file
        for file in files
        if FILE_FORMATS.get(file.suffix.lower()) == file_format and file.stat().st_size
    ]
    return file_format, data


def _folder_format(path: Path, files: list[Path]) -> str:
    """The one data format of a folder's files (Parquet for a folder without files)."""
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
    return formats.pop() if formats else "parquet"


def _is_hidden(relative: Path) -> bool:
    """Hidden and bookkeeping files (`.crc`, `_SUCCESS`, `_temporary/`) are not data."""
    return any(part.startswith((".", "_")) for part in relative.parts)


# -- CSV --------------------------------------------------------------------------------------


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
                raise SourceError(unreadable(path, error)) from error
            wider = _one_step_wider(schema, names[int(found[1])], key)
            if wider is None:
                raise
            schema = wider
    return schema


def _one_step_wider(schema: pa.Schema, name: str, key: str) -> pa.Schema | None:
    """`schema` with column `name` read one step wider (numbers as text, text as bytes);
    None where it cannot widen (the key, a column already bytes)."""
    if name == key or name not in schema.names:
        return None
    field = schema.field(name)
    wider = pa.binary() if pa.types.is_string(field.type) else pa.string()
    if field.type == wider:
        return None
    return schema.set(schema.get_field_index(name), field.with_type(wider))
