"""A file or folder of .parquet, .csv or .jsonl files as a source, read through
`pyarrow.dataset` (a folder may be Hive-partitioned)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.dataset as ds
import pyarrow.fs as pafs

from batch_pipeline.core.sources.checks import SourceError, unreadable
from batch_pipeline.core.sources.dataset import DatasetSource
from batch_pipeline.core.spec import PipelineSpec, SpecError
from batch_pipeline.core.storage_uri import RemoteLocation, describe, filesystem_for, is_remote

FILE_FORMATS = {".parquet": "parquet", ".csv": "csv", ".jsonl": "json"}


class FileSource(DatasetSource):
    """The spec's `source.path`: a local path or an object store's URI, read through pyarrow's
    filesystem for it. The files are found again at each read, so a read sees the folder as
    it is then."""

    def __init__(self, spec: PipelineSpec) -> None:
        self.spec = spec
        self.location = spec.location(spec.source.path or "")
        self.where = f" ({self.location})"

    def schema(self) -> pa.Schema:
        """The files' columns (empty when they hold no data)."""
        dataset = self._dataset()
        return pa.schema([]) if dataset is None else dataset.schema

    def _dataset(self) -> ds.Dataset | None:
        """The dataset over the source path, or None when the path holds no data."""
        spec = self.spec
        files = SourceFiles.open(self.location, spec.source.storage_options)
        file_format, sources = files.data_files()
        if not sources:
            return None
        if file_format == "csv":
            file_format = _csv_format(spec)
        options: dict[str, Any] = {"filesystem": files.filesystem}
        if not files.is_file:
            options.update(partitioning="hive", partition_base_dir=files.path)
        paths = [info.path for info in sources]
        try:
            dataset = ds.dataset(paths, format=file_format, **options)
        except (pa.ArrowInvalid, pa.ArrowTypeError) as error:  # the message names the file
            raise SourceError(f"source {self.location} cannot be read: {error}") from error
        typed = nulls_as_text(dataset.schema)  # types come from the first file alone
        if isinstance(file_format, ds.CsvFileFormat):
            typed = _csv_types_for_every_row(spec, files, sources, file_format, typed)
        if typed != dataset.schema:
            dataset = ds.dataset(paths, format=file_format, schema=typed, **options)
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


@dataclass(frozen=True)
class SourceFiles:
    """The source path in its filesystem (local, or an object store's)."""

    filesystem: pafs.FileSystem
    path: str  # in the filesystem's own terms ("bucket/key" for an object store)
    location: str  # as the spec gives it, for messages
    is_file: bool

    @classmethod
    def open(cls, location: str, storage_options: dict[str, Any]) -> SourceFiles:
        """The source at `location`; SpecError where nothing is there."""
        if is_remote(location):
            remote = RemoteLocation.parse(location)
            filesystem, path = filesystem_for(remote, storage_options), remote.path
        else:
            filesystem, path = pafs.LocalFileSystem(), location
        try:
            info = filesystem.get_file_info(path)
        except OSError as error:
            raise SourceError(f"source.path: {location}: {describe(error)}") from None
        if info.type == pafs.FileType.NotFound:
            raise SpecError(f"source.path: {location} does not exist")
        return cls(filesystem, path, location, info.type == pafs.FileType.File)

    def name(self, path: str) -> str:
        """How a message names one of the files."""
        return self.location + path[len(self.path) :]

    def data_files(self) -> tuple[str, list[pafs.FileInfo]]:
        """The format and the non-empty data files of the source file or folder."""
        if self.is_file:
            info = self.filesystem.get_file_info(self.path)
            file_format = FILE_FORMATS.get(PurePosixPath(self.path).suffix.lower())
            if file_format is None:
                raise SpecError(
                    f"source.path: {self.location} is not a .parquet, .csv or .jsonl file"
                )
            return file_format, [info] if info.size else []
        selector = pafs.FileSelector(self.path, recursive=True)
        try:
            found = self.filesystem.get_file_info(selector)
        except OSError as error:
            raise SourceError(f"source.path: {self.location}: {describe(error)}") from None
        start = len(self.path.rstrip("/")) + 1
        files = sorted(
            (
                info
                for info in found
                if info.type == pafs.FileType.File
                and not _is_hidden(PurePosixPath(info.path[start:]))
            ),
            key=lambda info: info.path,
        )
        file_format = _folder_format(self.location, [PurePosixPath(f.path) for f in files])
        data = [
            info
            for info in files
            if FILE_FORMATS.get(PurePosixPath(info.path).suffix.lower()) == file_format
            and info.size
        ]
        return file_format, data


def _folder_format(path: str, files: list[PurePosixPath]) -> str:
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


def _is_hidden(relative: PurePosixPath) -> bool:
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
    spec: PipelineSpec,
    files: SourceFiles,
    sources: list[pafs.FileInfo],
    file_format: ds.CsvFileFormat,
    schema: pa.Schema,
) -> pa.Schema:
    """`schema` with each CSV column typed so that every row of every file converts.

    Arrow infers a column's type from the first block (1 MB) of the first file: a column of
    numbers that turns to text further on would fail the read, at the build or, worse, at
    the results of a day already paid for. One scan of the files (about 1 s a GB) finds such
    columns; each is read as text instead, or as bytes where its text is not UTF-8 (the
    build rejects those rows by name). Remembered per file version within a process.
    """
    versions = tuple((info.path, info.size, info.mtime_ns) for info in sources)
    remembered = (files.location, versions, spec.source.key, schema.to_string())
    if remembered not in _CSV_SCHEMAS:
        for info in sources:
            schema = _widened_for_file(files, info.path, file_format, schema, spec.source.key)
        if len(_CSV_SCHEMAS) >= 64:
            _CSV_SCHEMAS.clear()
        _CSV_SCHEMAS[remembered] = schema
    return _CSV_SCHEMAS[remembered]


def _widened_for_file(
    files: SourceFiles, path: str, file_format: ds.CsvFileFormat, schema: pa.Schema, key: str
) -> pa.Schema:
    """`schema` widened until every row of the CSV file at `path` converts to it."""
    fs = files.filesystem
    names = ds.dataset(path, format=file_format, filesystem=fs).schema.names  # file's order
    for _ in range(2 * len(names) + 1):  # each column widens at most twice
        file_schema = pa.schema([schema.field(name) for name in names if name in schema.names])
        try:
            scanned = ds.dataset(path, format=file_format, schema=file_schema, filesystem=fs)
            for _batch in scanned.to_batches():
                pass
            return schema
        except pa.ArrowInvalid as error:
            found = _CSV_CONVERSION_ERROR.search(str(error))
            if found is None:
                raise SourceError(unreadable(files.name(path), error)) from error
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
