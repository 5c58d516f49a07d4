"""A pandas DataFrame handed over from Python (a notebook) as a source, filtered in memory."""

from __future__ import annotations

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds

from batch_pipeline.core.sources.dataset import DatasetSource
from batch_pipeline.core.spec import PipelineSpec


class FrameSource(DatasetSource):
    """The rows of `dataframe` in place of the spec's source (its key and partition column
    still name the columns). Converted to Arrow at each read, as the frame is then."""

    where = " (the DataFrame)"

    def __init__(self, spec: PipelineSpec, dataframe: pd.DataFrame) -> None:
        self.spec = spec
        self.dataframe = dataframe

    def schema(self) -> pa.Schema:
        return dataframe_table(self.dataframe.iloc[:0]).schema

    def _dataset(self) -> ds.Dataset:
        return ds.dataset(dataframe_table(self.dataframe))


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
