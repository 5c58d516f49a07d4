"""The three kinds of source (files, SQL, DataFrame) behind the one `Source` protocol: the
same rows give the same batches, counts and columns whichever kind holds them."""

from datetime import date

import orjson
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa

from batch_pipeline.core.sources import (
    FileSource,
    FrameSource,
    SqlSource,
    iter_partition_batches,
    source_for,
)
from batch_pipeline.core.spec import PipelineSpec, SpecError

DAY = date(2024, 5, 1)
KINDS = ["parquet", "csv", "jsonl", "dataframe", "sqlite"]

# Keys as text (CSV reads its key column as text), days as ISO text, one row of no day, and
# the day's rows mixed with another day's.
ROWS = pa.table(
    {
        "id": ["k1", "k2", "k3", "k4", "k5", "k6", "k7", "k8"],
        "day": [
            "2024-05-01",
            "2024-05-02",
            "2024-05-01",
            None,
            "2024-05-01",
            "2024-05-01",
            "2024-05-02",
            "2024-05-01",
        ],
        "text": [f"text {i}" for i in range(1, 9)],
    }
)
DAY_ROWS = [
    {"id": row["id"], "text": row["text"]}
    for row in ROWS.to_pylist()
    if row["day"] == DAY.isoformat()
]


def make_spec(tmp_path, **source):
    return PipelineSpec.from_dict(
        {
            "name": "t",
            "source": {"key": "id", "partition_column": "day", **source},
            "request": {"model": "gpt-4o-mini", "prompt": "{text}"},
        },
        base_dir=tmp_path,
    )


def source_of_kind(tmp_path, table, kind):
    """A Source holding `table` as a file, a DataFrame or a SQLite query."""
    if kind == "dataframe":
        return source_for(make_spec(tmp_path, path="unused"), table.to_pandas())
    if kind == "sqlite":
        engine = sa.create_engine(f"sqlite:///{tmp_path / 'src.db'}")
        table.to_pandas().to_sql("items", engine, index=False)
        engine.dispose()
        sql = {"url": "sqlite:///src.db", "query": "SELECT * FROM items"}
        return source_for(make_spec(tmp_path, sql=sql))
    path = tmp_path / f"src.{kind}"
    if kind == "jsonl":
        path.write_bytes(b"".join(orjson.dumps(row) + b"\n" for row in table.to_pylist()))
    else:
        {"parquet": pq.write_table, "csv": pacsv.write_csv}[kind](table, path)
    return source_for(make_spec(tmp_path, path=path.name))


@pytest.mark.parametrize("kind", KINDS)
def test_each_kind_gives_the_same_batches_for_the_same_rows(tmp_path, kind):
    source = source_of_kind(tmp_path, ROWS, kind)
    batches = list(source.batches(DAY, batch_size=2, columns=["id", "text"]))
    assert all(0 < batch.num_rows <= 2 for batch in batches)
    assert all(batch.schema.names == ["id", "text"] for batch in batches)
    assert [row for batch in batches for row in batch.to_pylist()] == DAY_ROWS


@pytest.mark.parametrize("kind", KINDS)
def test_each_kind_reports_its_columns_and_its_rows_of_no_day(tmp_path, kind):
    source = source_of_kind(tmp_path, ROWS, kind)
    assert source.schema().names == ["id", "day", "text"]
    assert source.count_rows_without_day() == 1
    assert list(source.batches(date(2024, 6, 1), batch_size=2)) == []  # a day without rows


@pytest.mark.parametrize("kind", KINDS)
def test_each_kind_names_a_missing_column(tmp_path, kind):
    source = source_of_kind(tmp_path, ROWS, kind)
    with pytest.raises(SpecError, match=r"column 'summary' is not in the source .*'text'"):
        list(source.batches(DAY, batch_size=2, columns=["id", "summary"]))


@pytest.mark.parametrize("kind", KINDS)
def test_each_kind_reads_as_the_compatibility_function_does(tmp_path, kind):
    source = source_of_kind(tmp_path, ROWS, kind)
    frame = source.dataframe if isinstance(source, FrameSource) else None
    spec = source.spec
    expected = pa.Table.from_batches(list(source.batches(DAY, batch_size=3)))
    wrapped = list(iter_partition_batches(spec, DAY.isoformat(), dataframe=frame, batch_size=3))
    assert pa.Table.from_batches(wrapped).equals(expected)


def test_source_for_picks_the_kind_and_a_dataframe_replaces_the_spec_source(tmp_path):
    sql = {"url": "sqlite:///src.db", "query": "SELECT * FROM items"}
    assert isinstance(source_for(make_spec(tmp_path, path="src.parquet")), FileSource)
    assert isinstance(source_for(make_spec(tmp_path, sql=sql)), SqlSource)
    frame = pd.DataFrame({"id": ["a"], "day": ["2024-05-01"], "text": ["x"]})
    assert isinstance(source_for(make_spec(tmp_path, sql=sql), frame), FrameSource)


def test_a_source_reads_nothing_when_made_and_its_files_as_they_are_at_each_read(tmp_path):
    """A pipeline makes its source once and keeps it: a folder that does not exist yet, or
    gains files later, is read as it is when each stage reads it."""
    source = source_for(make_spec(tmp_path, path="folder"))
    with pytest.raises(SpecError, match="does not exist"):
        source.schema()
    (tmp_path / "folder").mkdir()
    pq.write_table(ROWS.slice(0, 4), tmp_path / "folder" / "a.parquet")
    first = [row["id"] for batch in source.batches(DAY, batch_size=10) for row in batch.to_pylist()]
    assert first == ["k1", "k3"]
    pq.write_table(ROWS.slice(4), tmp_path / "folder" / "b.parquet")
    again = [row["id"] for batch in source.batches(DAY, batch_size=10) for row in batch.to_pylist()]
    assert again == ["k1", "k3", "k5", "k6", "k8"]


def test_a_sql_source_orders_rows_sharing_a_key_by_the_ties(tmp_path):
    """SQL has no order of its own: rows sharing a key come in the order of `ties`, so every
    read of a day numbers them alike."""
    rows = pa.table({"id": ["k1", "k1", "k1"], "day": ["2024-05-01"] * 3, "text": ["c", "a", "b"]})
    source = source_of_kind(tmp_path, rows, "sqlite")
    batches = source.batches(DAY, batch_size=10, columns=["id", "text"], ties=["text"])
    assert [row["text"] for batch in batches for row in batch.to_pylist()] == ["a", "b", "c"]
