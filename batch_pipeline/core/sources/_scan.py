"""The filtered rows of an Arrow dataset in source order, with memory bounded however large
its Parquet row groups."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from batch_pipeline.core.sources.checks import SourceError, unreadable

READAHEAD_BATCHES = 2
STREAM_BUFFER_BYTES = 1 << 20


def scan(
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
    for fragment in dataset.get_fragments(filter=expression):
        try:
            yield from _fragment_batches(fragment, dataset.schema, options, filter_column)
        except pa.ArrowException as error:  # bad values, types without a comparison, ...
            if isinstance(error, MemoryError):
                raise
            message = _other_partition_type(fragment, dataset.schema, filter_column)
            raise SourceError(
                message or unreadable(fragment.path, error, fragment.filesystem)
            ) from error


def _fragment_batches(
    fragment: ds.Fragment, schema: pa.Schema, options: dict[str, Any], filter_column: str
) -> Iterator[pa.RecordBatch]:
    """The filtered rows of one file of the dataset (`options`: the scan's)."""
    expression, columns = options["filter"], options["columns"]
    if not isinstance(fragment, ds.ParquetFileFragment):
        yield from fragment.to_batches(schema=schema, **options)
        return
    pieces = fragment.split_by_row_group(filter=expression, schema=schema)
    if _streamable(fragment, schema, columns, filter_column):
        yield from _stream_row_groups(
            fragment, pieces, schema, columns, expression, options["batch_size"], filter_column
        )
        return
    for piece in pieces:
        yield from piece.to_batches(schema=schema, **options)


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
