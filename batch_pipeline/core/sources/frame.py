"""A table handed over from Python (a notebook, a Dagster asset's IO manager) as a source,
filtered in memory: a pandas DataFrame, an Arrow table, or a frame with `to_arrow()`
(Polars)."""

from __future__ import annotations

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds

from batch_pipeline.core.sources.checks import SourceError
from batch_pipeline.core.sources.dataset import DatasetSource
from batch_pipeline.core.spec import PipelineSpec

# What a source handed over from Python may be.
Table = pd.DataFrame | pa.Table


class FrameSource(DatasetSource):
    """The rows of `dataframe` in place of the spec's source (its key and partition column
    still name the columns). Converted to Arrow at each read, as the frame is then."""

    where = " (the DataFrame)"

    def __init__(self, spec: PipelineSpec, dataframe: Table) -> None:
        self.spec = spec
        self.dataframe = dataframe

    def schema(self) -> pa.Schema:
        if isinstance(self.dataframe, pa.Table):
            return self.dataframe.schema
        return dataframe_table(self.dataframe.iloc[:0]).schema

    def _dataset(self) -> ds.Dataset:
        if isinstance(self.dataframe, pa.Table):
            return ds.dataset(self.dataframe)
        return ds.dataset(dataframe_table(self.dataframe))


def as_table(value: object, *, what: str) -> Table:
    """`value` as a table a `FrameSource` reads: a pandas DataFrame or an Arrow table as they
    are, a Polars frame (anything with `to_arrow()`) as Arrow, and a mapping of partitions
    to tables (several partitions loaded at once) as their rows together. A SourceError
    naming `what` and the type found otherwise."""
    if isinstance(value, pd.DataFrame | pa.Table):
        return value
    if isinstance(value, pa.RecordBatch):
        return pa.Table.from_batches([value])
    to_arrow = getattr(value, "to_arrow", None)
    if callable(to_arrow):
        return as_table(to_arrow(), what=what)
    if isinstance(value, dict) and value:
        tables = [as_table(part, what=what) for part in value.values()]
        return pa.concat_tables(
            [t if isinstance(t, pa.Table) else dataframe_table(t) for t in tables],
            promote_options="permissive",
        )
    raise SourceError(
        f"{what} is a {type(value).__module__}.{type(value).__qualname__}, not a table "
        "(a pandas DataFrame, an Arrow table or a Polars DataFrame)"
    )


class UnloadedSource(DatasetSource):
    """The source of a spec whose rows come from a Dagster asset (`source.asset_key` without
    a path or a query), made where no rows were handed over: reading it is a SourceError
    saying where the rows come from. A pipeline made for polling or checks never reads it."""

    def __init__(self, spec: PipelineSpec) -> None:
        self.spec = spec

    def _error(self) -> SourceError:
        return SourceError(
            f"source: the rows of {self.spec.name} come from the asset "
            f"{self.spec.source.from_asset}, which Dagster loads for the pipeline's steps; "
            "run them in Dagster, or pass the rows as a DataFrame"
        )

    def schema(self) -> pa.Schema:
        raise self._error()

    def _dataset(self) -> ds.Dataset:
        raise self._error()


def dataframe_table(dataframe: pd.DataFrame) -> pa.Table:
    """The DataFrame as Arrow. Text Arrow cannot hold (lone surrogates) becomes a binary
    column of its raw bytes, so the request builder can reject those rows one by one; an
    object column mixing Python types (`"A1"` and `2`) becomes text, as SQL sources do."""
    try:
        return pa.Table.from_pandas(dataframe, preserve_index=False)
    except (UnicodeEncodeError, pa.ArrowInvalid, pa.ArrowTypeError):
        pass
    arrays = [_column_array(dataframe[name]) for name in dataframe.columns]
    return pa.Table.from_arrays(arrays, names=[str(name) for name in dataframe.columns])


def _column_array(series: pd.Series) -> pa.Array:
    """One column as Arrow: as it is, as raw bytes, or as text (see `dataframe_table`)."""
    try:
        return pa.array(series, from_pandas=True)
    except UnicodeEncodeError:
        return pa.array(
            [
                value.encode("utf-8", "surrogatepass") if isinstance(value, str) else None
                for value in series
            ],
            pa.binary(),
        )
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return pa.array([None if _is_missing(value) else str(value) for value in series])


def _is_missing(value: object) -> bool:
    """None, NaN or pandas' NA/NaT: a missing value, not a text."""
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):  # a list or an array: a value
        return False
