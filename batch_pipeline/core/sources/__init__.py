"""Read one partition (a day, a week, a month, or every row) of a pipeline's source rows as a
stream of Arrow record batches.

Three kinds of source stand behind one `Source` protocol: a file or folder of .parquet, .csv
or .jsonl files (`files`: through `pyarrow.dataset`, the day's filter pushed down to the
scan), a SQL query (`sql`: through SQLAlchemy, filtered in the database, streamed), or a
pandas DataFrame handed over from Python (`frame`: filtered in memory). `source_for` picks
the kind once, where a pipeline is made; the build and results stages take the `Source`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import date
from typing import TYPE_CHECKING, Protocol

import pyarrow as pa

from batch_pipeline.core.partition import Partition
from batch_pipeline.core.sources.checks import SourceError, check_columns
from batch_pipeline.core.sources.days import parse_partition, partition_filter
from batch_pipeline.core.sources.files import FILE_FORMATS, FileSource, nulls_as_text
from batch_pipeline.core.sources.frame import FrameSource, Table, UnloadedSource, as_table
from batch_pipeline.core.sources.sql import SqlSource
from batch_pipeline.core.spec import PipelineSpec

if TYPE_CHECKING:  # a DataFrame only where one is given: pandas loads then
    import pandas as pd

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "FILE_FORMATS",
    "FileSource",
    "FrameSource",
    "Source",
    "SourceError",
    "SqlSource",
    "Table",
    "UnloadedSource",
    "as_table",
    "check_columns",
    "count_rows_without_day",
    "iter_partition_batches",
    "nulls_as_text",
    "parse_partition",
    "partition_filter",
    "source_for",
    "source_schema",
]

DEFAULT_BATCH_SIZE = 65_536


class Source(Protocol):
    """Where a pipeline's rows come from. Nothing is read when a source is made: each
    operation reads the source as it is then (errors such as a missing path surface there)."""

    def schema(self) -> pa.Schema:
        """The source's columns, read without reading its rows. A source that exists but
        holds no data (an empty folder, zero-byte files) has an empty schema; a SQL source's
        columns have the null type (types are known only once rows are read)."""
        ...

    def batches(
        self,
        day: date | Partition,
        *,
        batch_size: int,
        columns: Sequence[str] | None = None,
        ties: Sequence[str] = (),
    ) -> Iterator[pa.RecordBatch]:
        """The rows of `day` (a date, or a partition: its days, or every row for the one
        partition of `partitions: none`), in non-empty record batches of at most
        `batch_size` rows.

        `columns` reads only those (default: all); the key, the partition column and
        `columns` must exist (SpecError naming the missing one). `ties`: the columns that
        order rows sharing a key after the key itself where the source has no order of its
        own (SQL); every read of a day must give the same, so such rows come in one order.
        A day without rows yields nothing; a partition column of no day at all is a
        SpecError naming it and one of its values.
        """
        ...

    def count_rows_without_day(self) -> int:
        """How many rows fall on no day at all: their partition column is null, or a text
        that does not start with a YYYY-MM-DD date. No partition's build reads them, so they
        are counted for the build to report."""
        ...


def source_for(spec: PipelineSpec, dataframe: Table | None = None) -> Source:
    """The source of `spec`: `dataframe` when given (a pandas DataFrame or an Arrow table;
    it replaces the spec's source), else the spec's SQL query or its files; a spec whose
    rows come from a Dagster asset has, without `dataframe`, a source that cannot be read."""
    if dataframe is not None:
        return FrameSource(spec, dataframe)
    if spec.source.from_asset is not None:
        return UnloadedSource(spec)
    if spec.source.sql is not None:
        return SqlSource(spec)
    return FileSource(spec)


def source_schema(spec: PipelineSpec, dataframe: pd.DataFrame | None = None) -> pa.Schema:
    """The columns of `source_for(spec, dataframe)`, read without reading its rows."""
    return source_for(spec, dataframe).schema()


def iter_partition_batches(
    spec: PipelineSpec,
    partition: str | Partition,
    *,
    dataframe: pd.DataFrame | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    columns: Sequence[str] | None = None,
    ties: Sequence[str] = (),
) -> Iterator[pa.RecordBatch]:
    """The rows of `partition` of `source_for(spec, dataframe)` (see `Source.batches`)."""
    days = spec.partitioning.of(partition)
    yield from source_for(spec, dataframe).batches(
        days, batch_size=batch_size, columns=columns, ties=ties
    )


def count_rows_without_day(spec: PipelineSpec, dataframe: pd.DataFrame | None = None) -> int:
    """The rows of `source_for(spec, dataframe)` that fall on no day at all."""
    return source_for(spec, dataframe).count_rows_without_day()
