"""A source read through an Arrow dataset (files, a DataFrame): the day's filter pushed down
to the scan, rows of no day counted, and a column of no day told from an empty day."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from datetime import date
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from batch_pipeline.core.partition import Partition
from batch_pipeline.core.sources._scan import scan
from batch_pipeline.core.sources.checks import (
    SourceError,
    check_columns,
    check_some_day,
    splits_by_day,
)
from batch_pipeline.core.sources.days import (
    DAY_PREFIX,
    day_span,
    decoded,
    is_text,
    partition_filter,
)
from batch_pipeline.core.spec import PipelineSpec, SpecError


class DatasetSource(ABC):
    """The operations of a `Source` over the dataset a subclass opens (`_dataset`)."""

    spec: PipelineSpec
    where: str = ""  # how messages name the source, e.g. " (the DataFrame)"

    @abstractmethod
    def _dataset(self) -> ds.Dataset | None:
        """The dataset of every source row, or None when the source holds no data."""

    def batches(
        self,
        day: date | Partition,
        *,
        batch_size: int,
        columns: Sequence[str] | None = None,
        ties: Sequence[str] = (),
    ) -> Iterator[pa.RecordBatch]:
        """The rows of `day` (or of a partition's days, or every row) in source order (`ties`
        are for sources without one: unused)."""
        dataset = self._dataset()
        if dataset is None:
            return
        wanted = list(columns) if columns is not None else None
        check_columns(self.spec, dataset.schema.names, wanted or (), where=self.where)
        span = day_span(day)
        if span is None:  # every row: no filter (the key column stands in for the scan's)
            every_row = ds.scalar(True)
            key = self.spec.source.key
            yield from scan(dataset, wanted, every_row, batch_size, filter_column=key)
            return
        field = dataset.schema.field(self.spec.source.partition_column)
        if pa.types.is_binary(field.type) or pa.types.is_large_binary(field.type):
            raise _not_text_error(self.spec, dataset)
        expression = partition_filter(
            field.name, field.type, span[0], timezone=self.spec.schedule.timezone, end=span[1]
        )
        empty = True
        for batch in scan(dataset, wanted, expression, batch_size, filter_column=field.name):
            if batch.num_rows:
                empty = False
                yield batch
        if empty:  # a day without rows, or a column of no day at all: told apart here
            check_some_day(self.spec, _sample_if_no_day(dataset, field))

    def count_rows_without_day(self) -> int:
        """Rows whose partition column is null or a text not starting with a day (Parquet
        answers from its statistics where it can)."""
        dataset = self._dataset()
        column = self.spec.source.partition_column
        if dataset is None or column not in dataset.schema.names or not splits_by_day(self.spec):
            return 0
        field, column_type = decoded(column, dataset.schema.field(column).type)
        no_day = field.is_null()
        if is_text(column_type):
            no_day = no_day | ~pc.match_substring_regex(field, DAY_PREFIX)
        try:
            return dataset.count_rows(filter=no_day)
        except (pa.ArrowInvalid, pa.ArrowTypeError) as error:
            raise SourceError(f"source {self.spec.source.path} cannot be read: {error}") from error


def _sample_if_no_day(dataset: ds.Dataset, field: pa.Field) -> Any:
    """A text column's first value when none of its values starts with a day, else None;
    dates and timestamps are days throughout."""
    column, column_type = decoded(field.name, field.type)
    if not is_text(column_type):
        return None
    is_day = pc.match_substring_regex(column, DAY_PREFIX)
    if dataset.head(1, columns=[field.name], filter=is_day).num_rows:
        return None
    sample = dataset.head(1, columns=[field.name], filter=column.is_valid() & (column != ""))
    return sample.column(0)[0].as_py() if sample.num_rows else None


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
