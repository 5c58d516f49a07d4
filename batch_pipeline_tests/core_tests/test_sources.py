from datetime import UTC, date, datetime

import orjson
import pandas as pd
import polars as pl
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa

from batch_pipeline.core.sources import (
    SourceError,
    count_rows_without_day,
    iter_partition_batches,
    parse_partition,
    source_schema,
)
from batch_pipeline.core.sources.frame import as_table
from batch_pipeline.core.spec import PipelineSpec, ScheduleSpec, SpecError

PARTITION = "2024-05-01"


def make_spec(tmp_path, partition_column="day", key="id", **source):
    source = source or {"path": "src"}
    return PipelineSpec.from_dict(
        {
            "name": "t",
            "source": {"key": key, "partition_column": partition_column, **source},
            "request": {"model": "gpt-4o-mini", "prompt": "{text}"},
        },
        base_dir=tmp_path,
    )


def read_ids(spec, partition=PARTITION, **kwargs):
    batches = list(iter_partition_batches(spec, partition, **kwargs))
    assert all(batch.num_rows for batch in batches)
    return sorted(id_ for batch in batches for id_ in batch.column("id").to_pylist())


def sample_table(day_values, day_type=None):
    """Rows 1..n with the given partition-column values and a text column."""
    return pa.table(
        {
            "id": list(range(1, len(day_values) + 1)),
            "day": pa.array(day_values, day_type),
            "text": [f"row {i}" for i in range(1, len(day_values) + 1)],
        }
    )


def write_jsonl(path, table):
    rows = table.to_pylist()
    path.write_bytes(b"".join(orjson.dumps(row, default=str) + b"\n" for row in rows))


NAIVE_TIMESTAMPS = [
    datetime(2024, 4, 30, 23, 59, 59),
    datetime(2024, 5, 1, 0, 0),
    datetime(2024, 5, 1, 23, 59, 59),
    datetime(2024, 5, 2, 0, 0),
]


def test_parquet_file_with_naive_timestamps_returns_only_the_days_rows(tmp_path):
    pq.write_table(sample_table(NAIVE_TIMESTAMPS, pa.timestamp("us")), tmp_path / "src.parquet")
    spec = make_spec(tmp_path, path="src.parquet")
    assert read_ids(spec) == [2, 3]
    assert read_ids(spec, "2024-05-02") == [4]


def test_tz_aware_timestamps_fall_on_days_of_the_schedules_timezone(tmp_path):
    """The days the Dagster partitions and the nightly schedule count in, whatever zone the
    column was written in: a nightly run then finds its whole day arrived."""
    moments = pd.to_datetime(
        ["2024-05-01 00:30", "2024-05-01 23:30", "2024-05-02 00:30", "2024-04-30 23:00"]
    ).tz_localize("America/New_York")
    table = sample_table(list(moments.to_pydatetime()), pa.timestamp("ns", "America/New_York"))
    pq.write_table(table, tmp_path / "src.parquet")
    new_york = make_spec(tmp_path, path="src.parquet").model_copy(
        update={"schedule": ScheduleSpec(timezone="America/New_York")}
    )
    # 23:30 New York on May 1 is already May 2 in UTC; in New York days it is May 1.
    assert read_ids(new_york) == [1, 2]
    # In UTC days (the default), 23:00 New York on April 30 is May 1, 03:00.
    assert read_ids(make_spec(tmp_path, path="src.parquet")) == [1, 4]


@pytest.mark.parametrize(
    ("schedule", "named"),
    [
        ({"timezone": "Europe/Pariss"}, "schedule.timezone: 'Europe/Pariss' is not an IANA"),
        ({"cron": "0 25 * * *"}, "schedule.cron: '0 25 * * *' is not a cron expression: hour"),
        ({"cron": "every night"}, "2 fields, not 5"),
    ],
)
def test_a_bad_schedule_is_a_spec_error_naming_the_key(tmp_path, schedule, named):
    with pytest.raises(SpecError) as error:
        PipelineSpec.from_dict(
            {
                "name": "t",
                "source": {"path": "src", "key": "id", "partition_column": "day"},
                "request": {"model": "gpt-4o-mini", "prompt": "{text}"},
                "schedule": schedule,
            },
            base_dir=tmp_path,
        )
    assert named in str(error.value)


def test_utc_timestamps_split_by_utc_days(tmp_path):
    moments = [
        datetime(2024, 5, 1, 0, 0, tzinfo=UTC),
        datetime(2024, 4, 30, 23, 59, tzinfo=UTC),
    ]
    pq.write_table(sample_table(moments, pa.timestamp("ms", "UTC")), tmp_path / "src.parquet")
    assert read_ids(make_spec(tmp_path, path="src.parquet")) == [1]


def test_date_column(tmp_path):
    days = [date(2024, 5, 1), date(2024, 5, 2), date(2024, 5, 1), None]
    pq.write_table(sample_table(days, pa.date32()), tmp_path / "src.parquet")
    assert read_ids(make_spec(tmp_path, path="src.parquet")) == [1, 3]


def test_iso_string_column_matches_on_its_first_ten_characters(tmp_path):
    days = ["2024-05-01", "2024-05-01T10:00:00+02:00", "2024-05-02", "2024-05-01 23:59", "x", None]
    pq.write_table(sample_table(days, pa.string()), tmp_path / "src.parquet")
    assert read_ids(make_spec(tmp_path, path="src.parquet")) == [1, 2, 4]


def test_csv_file_and_folder_read_keys_as_written(tmp_path):
    table = sample_table(NAIVE_TIMESTAMPS, pa.timestamp("s"))
    pacsv.write_csv(table, tmp_path / "one.csv")
    assert read_ids(make_spec(tmp_path, path="one.csv")) == ["2", "3"]

    folder = tmp_path / "csvs"
    folder.mkdir()
    pacsv.write_csv(table.slice(0, 2), folder / "a.csv")
    pacsv.write_csv(table.slice(2), folder / "b.CSV")
    assert read_ids(make_spec(tmp_path, path="csvs")) == ["2", "3"]


def test_jsonl_file_and_folder(tmp_path):
    table = sample_table(["2024-05-01", "2024-05-02", "2024-05-01 10:00:00"], pa.string())
    write_jsonl(tmp_path / "one.jsonl", table)
    assert read_ids(make_spec(tmp_path, path="one.jsonl")) == [1, 3]

    folder = tmp_path / "jsonls"
    folder.mkdir()
    write_jsonl(folder / "a.jsonl", table.slice(0, 1))
    write_jsonl(folder / "b.jsonl", table.slice(1))
    (folder / "empty.jsonl").write_bytes(b"")
    assert read_ids(make_spec(tmp_path, path="jsonls")) == [1, 3]


def test_parquet_folder_skips_hidden_and_bookkeeping_files(tmp_path):
    folder = tmp_path / "src"
    folder.mkdir()
    table = sample_table([date(2024, 5, 1)] * 4, pa.date32())
    pq.write_table(table.slice(0, 2), folder / "part-0.parquet")
    pq.write_table(table.slice(2), folder / "part-1.parquet")
    (folder / "_SUCCESS").write_bytes(b"")
    (folder / ".part-0.parquet.crc").write_bytes(b"junk")
    assert read_ids(make_spec(tmp_path)) == [1, 2, 3, 4]


def test_hive_partitioned_folder_exposes_its_partition_column(tmp_path):
    for day, ids in (("2024-05-01", [1, 2]), ("2024-05-02", [3])):
        folder = tmp_path / "src" / f"day={day}"
        folder.mkdir(parents=True)
        pq.write_table(pa.table({"id": ids, "text": ["t"] * len(ids)}), folder / "part.parquet")
    spec = make_spec(tmp_path)
    assert "day" in source_schema(spec).names
    assert read_ids(spec) == [1, 2]


def test_hive_partitioned_csv_folder_exposes_its_partition_column(tmp_path):
    for day, ids in (("2024-05-01", [1, 2]), ("2024-05-02", [3])):
        folder = tmp_path / "src" / f"day={day}"
        folder.mkdir(parents=True)
        pacsv.write_csv(pa.table({"id": ids, "text": ["t"] * len(ids)}), folder / "part.csv")
    assert read_ids(make_spec(tmp_path)) == ["1", "2"]


def test_a_jsonl_field_that_turns_from_numbers_to_text_names_the_file_and_line(tmp_path):
    folder = tmp_path / "src"
    folder.mkdir()
    write_jsonl(folder / "a.jsonl", sample_table([PARTITION] * 3, pa.string()))
    rows = [{"id": 10 + i, "day": PARTITION, "text": i} for i in range(20_000)]
    rows.append({"id": 99, "day": PARTITION, "text": "a ticket"})
    (folder / "b.jsonl").write_bytes(b"".join(orjson.dumps(row) + b"\n" for row in rows))
    with pytest.raises(SourceError) as raised:
        read_ids(make_spec(tmp_path))
    message = str(raised.value)
    assert f"source file {folder / 'b.jsonl'} cannot be read" in message
    assert "field 'text' holds a number in earlier lines and a string at line 20001" in message


@pytest.mark.parametrize("good_lines", [1, 50_000])
def test_a_csv_line_with_too_many_values_names_the_file(tmp_path, good_lines):
    good = "".join(f"{i},2024-05-01,fine\n" for i in range(good_lines))
    (tmp_path / "src.csv").write_text(f"id,day,text\n{good}x,2024-05-01,a,b\n")
    with pytest.raises(SourceError, match=r"source .*src\.csv cannot be read: .*Expected 3 col"):
        read_ids(make_spec(tmp_path, path="src.csv"))


def test_parquet_row_groups_are_read_in_order_and_filtered(tmp_path):
    days = [date(2024, 5, 1 + (i // 7) % 2) for i in range(40)]
    pq.write_table(sample_table(days, pa.date32()), tmp_path / "src.parquet", row_group_size=5)
    spec = make_spec(tmp_path, path="src.parquet")
    batches = list(iter_partition_batches(spec, PARTITION, batch_size=4))
    ids = [id_ for batch in batches for id_ in batch.column("id").to_pylist()]
    assert ids == [i + 1 for i in range(40) if days[i] == date(2024, 5, 1)]
    assert max(batch.num_rows for batch in batches) <= 4


def test_parquet_files_with_their_columns_in_another_order_or_type_read_as_the_first(tmp_path):
    """Each file is read in the dataset's columns and types: one in another column order
    (streamed as it is), one with another key type (read through the dataset scanner)."""
    folder = tmp_path / "src"
    folder.mkdir()
    table = sample_table([date(2024, 5, 1)] * 6, pa.date32())
    pq.write_table(table.slice(0, 2), folder / "a.parquet")
    pq.write_table(table.slice(2, 2).select(["text", "day", "id"]), folder / "b.parquet")
    narrow = table.slice(4).set_column(0, "id", table.slice(4)["id"].cast(pa.int32()))
    pq.write_table(narrow, folder / "c.parquet")
    batches = list(iter_partition_batches(make_spec(tmp_path), PARTITION))
    assert [batch.schema.names for batch in batches] == [["id", "day", "text"]] * 3
    assert {batch.schema.field("id").type for batch in batches} == {pa.int64()}
    assert [i for batch in batches for i in batch.column("id").to_pylist()] == [1, 2, 3, 4, 5, 6]


@pytest.mark.parametrize(
    "day_type", [pa.date32(), pa.timestamp("s"), pa.timestamp("ms", tz="UTC"), pa.string()]
)
def test_row_groups_wholly_on_the_day_or_not_give_exactly_the_days_rows(tmp_path, day_type):
    """A row group whose statistics put every row on the day is read unfiltered; one that
    also holds nulls or another day's rows is filtered, row by row."""
    groups = [
        [date(2024, 5, 1)] * 3,  # all on the day
        [date(2024, 5, 1), None, date(2024, 5, 1)],  # a null among them
        [date(2024, 4, 30), date(2024, 5, 1), date(2024, 5, 2)],  # days around it
        [date(2024, 5, 2)] * 3,  # ruled out by its statistics
    ]
    table = sample_table([day for group in groups for day in group], pa.date32())
    table = table.set_column(1, "day", table["day"].cast(day_type))
    pq.write_table(table, tmp_path / "src.parquet", row_group_size=3)
    spec = make_spec(tmp_path, path="src.parquet")
    assert read_ids(spec, batch_size=2) == [1, 2, 3, 4, 6, 8]


@pytest.mark.parametrize("columns", [["id", "text"], None])
def test_a_parquet_file_without_the_partition_column_has_no_rows_of_the_day(tmp_path, columns):
    """Read for only some columns (as the build reads) or all (as the results do), a file
    that lacks the partition column gives no rows, as with Arrow's scanner."""
    folder = tmp_path / "src"
    folder.mkdir()
    pq.write_table(sample_table([PARTITION] * 2, pa.string()), folder / "a.parquet")
    pq.write_table(pa.table({"id": [3, 4], "text": ["later", "rows"]}), folder / "b.parquet")
    assert read_ids(make_spec(tmp_path), columns=columns) == [1, 2]


def test_a_parquet_file_whose_partition_column_has_another_type_is_named(tmp_path):
    folder = tmp_path / "src"
    folder.mkdir()
    pq.write_table(sample_table([date(2024, 5, 1)] * 2, pa.date32()), folder / "a.parquet")
    pq.write_table(sample_table([PARTITION, "2024-05-02"], pa.string()), folder / "b.parquet")
    with pytest.raises(SourceError) as raised:
        read_ids(make_spec(tmp_path))
    assert str(raised.value) == (
        f"source file {folder / 'b.parquet'} cannot be read: its partition column 'day' is "
        "string, where the source's is date32[day]"
    )


def test_batches_respect_batch_size_and_columns(tmp_path):
    days = [date(2024, 5, 1)] * 10
    pq.write_table(sample_table(days, pa.date32()), tmp_path / "src.parquet")
    spec = make_spec(tmp_path, path="src.parquet")
    batches = list(iter_partition_batches(spec, PARTITION, batch_size=3, columns=["id"]))
    assert max(batch.num_rows for batch in batches) <= 3
    assert sum(batch.num_rows for batch in batches) == 10
    assert batches[0].schema.names == ["id"]


NO_DAY = [None, "yesterday", "2024-05-01 08:00", None, "  2024-05-01"]


SOURCE_FORMS = ["parquet", "csv", "jsonl", "dataframe", "sqlite"]


def source_in_form(tmp_path, table, form):
    """(spec, dataframe) reading `table` as a Parquet, CSV or JSONL file, a DataFrame or a
    SQLite query."""
    if form == "dataframe":
        return make_spec(tmp_path), table.to_pandas()
    if form == "sqlite":
        engine = sa.create_engine(f"sqlite:///{tmp_path / 'src.db'}")
        table.to_pandas().to_sql("items", engine, index=False)
        engine.dispose()
        query = {"url": "sqlite:///src.db", "query": "SELECT * FROM items"}
        return make_spec(tmp_path, sql=query), None
    path = tmp_path / f"src.{form}"
    if form == "jsonl":
        write_jsonl(path, table)
    else:
        {"parquet": pq.write_table, "csv": pacsv.write_csv}[form](table, path)
    return make_spec(tmp_path, path=f"src.{form}"), None


@pytest.mark.parametrize("form", SOURCE_FORMS)
def test_rows_that_fall_on_no_day_are_counted(tmp_path, form):
    """Null days (and, for text, values that do not start with a date) are in no partition:
    the count lets the build say so instead of dropping them unseen."""
    table = sample_table(NO_DAY, pa.string())
    spec, dataframe = source_in_form(tmp_path, table, form)
    # SQL compares in the database, which has no portable "starts with a date": nulls only.
    expected = 2 if form == "sqlite" else 4
    assert count_rows_without_day(spec, dataframe) == expected
    assert read_ids(spec, dataframe=dataframe) in ([3], ["3"])


@pytest.mark.parametrize("form", SOURCE_FORMS)
def test_a_partition_column_of_no_day_at_all_is_an_error_naming_it_and_a_value(tmp_path, form):
    table = sample_table([None, "open", "closed"], pa.string())
    spec, dataframe = source_in_form(tmp_path, table, form)
    with pytest.raises(SpecError, match=r"source.partition_column: .*column 'day'.*'open'"):
        read_ids(spec, dataframe=dataframe)


@pytest.mark.parametrize("form", SOURCE_FORMS)
def test_a_day_without_rows_in_a_column_of_days_is_just_empty(tmp_path, form):
    spec, dataframe = source_in_form(tmp_path, sample_table(NO_DAY, pa.string()), form)
    assert read_ids(spec, "2024-06-01", dataframe=dataframe) == []


def test_a_timestamp_column_counts_its_nulls_as_rows_of_no_day(tmp_path):
    days = [datetime(2024, 5, 1, 9), None, datetime(2024, 5, 2, 9)]
    pq.write_table(sample_table(days, pa.timestamp("us")), tmp_path / "src.parquet")
    assert count_rows_without_day(make_spec(tmp_path, path="src.parquet")) == 1


def test_sqlite_query_is_filtered_in_the_database(tmp_path):
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'src.db'}")
    with engine.begin() as connection:
        connection.execute(sa.text("CREATE TABLE items (id INTEGER, day TEXT, text TEXT)"))
        connection.execute(
            sa.text("INSERT INTO items VALUES (:id, :day, :text)"),
            [
                {"id": 2, "day": "2024-05-01", "text": "b"},
                {"id": 1, "day": "2024-05-01 08:00:00", "text": "a"},
                {"id": 3, "day": "2024-05-02 00:00:00", "text": "c"},
                {"id": 4, "day": "2024-04-30 23:59:59", "text": None},
                {"id": 5, "day": "2024-05-01T23:59:59", "text": "e"},
            ],
        )
    engine.dispose()
    spec = make_spec(
        tmp_path, sql={"url": "sqlite:///src.db", "query": "SELECT * FROM items WHERE id < 5;"}
    )
    assert source_schema(spec).names == ["id", "day", "text"]
    batches = list(iter_partition_batches(spec, PARTITION, batch_size=1))
    assert [batch.num_rows for batch in batches] == [1, 1]
    assert [row["id"] for b in batches for row in b.to_pylist()] == [1, 2]  # in key order
    assert read_ids(spec, "2024-04-30") == [4]
    assert read_ids(spec, "2024-06-01") == []


def test_sql_batches_keep_one_type_per_column(tmp_path):
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'src.db'}")
    with engine.begin() as connection:
        connection.execute(sa.text("CREATE TABLE items (id INTEGER, day TEXT, text, n)"))
        connection.execute(
            sa.text("INSERT INTO items VALUES (:id, '2024-05-01', :text, :n)"),
            [
                {"id": 1, "text": "a", "n": 1},
                {"id": 2, "text": None, "n": "two"},  # SQLite lets a column mix types
                {"id": 3, "text": None, "n": 3},
            ],
        )
    engine.dispose()
    spec = make_spec(tmp_path, sql={"url": "sqlite:///src.db", "query": "SELECT * FROM items"})
    batches = list(iter_partition_batches(spec, PARTITION, batch_size=1))
    assert [batch.schema.field("text").type for batch in batches] == [pa.string()] * 3
    assert [batch.column("n").to_pylist() for batch in batches] == [[1], ["two"], [3]]


def test_sql_missing_key_column_is_named(tmp_path):
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'src.db'}")
    with engine.begin() as connection:
        connection.execute(sa.text("CREATE TABLE items (ident INTEGER, day TEXT)"))
    engine.dispose()
    spec = make_spec(tmp_path, sql={"url": "sqlite:///src.db", "query": "SELECT * FROM items"})
    with pytest.raises(SpecError, match=r"source\.key: column 'id' .*'ident', 'day'"):
        list(iter_partition_batches(spec, PARTITION))


def test_dataframe_is_filtered_in_memory_and_replaces_the_spec_source(tmp_path):
    frame = pd.DataFrame(
        {
            "id": ["a", "b", "c"],
            "day": pd.to_datetime(["2024-05-01 09:00", "2024-05-02 09:00", "2024-05-01 18:00"]),
            "text": ["x", "y", "z"],
        }
    )
    spec = make_spec(tmp_path, path="does-not-exist")
    assert read_ids(spec, dataframe=frame) == ["a", "c"]
    assert source_schema(spec, frame).names == ["id", "day", "text"]


def test_a_polars_frame_from_an_io_manager_reads_like_an_arrow_table(tmp_path):
    frame = pl.DataFrame(
        {
            "id": ["a", "b", "c"],
            "day": [datetime(2024, 5, 1, 9), datetime(2024, 5, 2, 9), datetime(2024, 5, 1, 18)],
            "text": ["x", "y", "z"],
        }
    )
    table = as_table(frame, what="source.asset_key raw/tickets")
    spec = make_spec(tmp_path, path="does-not-exist")
    assert read_ids(spec, dataframe=table) == ["a", "c"]
    assert source_schema(spec, table).names == ["id", "day", "text"]


def test_dataframe_columns_mixing_python_types_read_as_text(tmp_path):
    frame = pd.DataFrame(
        {
            "id": pd.Series(["A1", 2, None], dtype=object),
            "day": [date(2024, 5, 1)] * 3,
            "text": pd.Series(["words", 3.5, float("nan")], dtype=object),
        }
    )
    (batch,) = iter_partition_batches(make_spec(tmp_path), PARTITION, dataframe=frame)
    assert batch.column("id").to_pylist() == ["A1", "2", None]
    assert batch.column("text").to_pylist() == ["words", "3.5", None]


def test_dataframe_text_that_arrow_cannot_hold_becomes_bytes(tmp_path):
    frame = pd.DataFrame(
        {
            "id": [1, 2],
            "day": [date(2024, 5, 1)] * 2,
            "text": pd.Series(["fine", "lone \ud800 surrogate"], dtype=object),
        }
    )
    (batch,) = iter_partition_batches(make_spec(tmp_path), PARTITION, dataframe=frame)
    assert batch.column("text").to_pylist() == [
        b"fine",
        "lone \ud800 surrogate".encode("utf-8", "surrogatepass"),
    ]


@pytest.mark.parametrize("missing", ["id", "day"])
def test_missing_key_or_partition_column_is_named_with_the_existing_columns(tmp_path, missing):
    table = sample_table([date(2024, 5, 1)], pa.date32()).drop_columns([missing])
    pq.write_table(table, tmp_path / "src.parquet")
    spec = make_spec(tmp_path, path="src.parquet")
    with pytest.raises(SpecError, match=rf"column '{missing}' is not in the source") as info:
        list(iter_partition_batches(spec, PARTITION))
    for existing in table.schema.names:
        assert repr(existing) in str(info.value)


def test_missing_source_path_is_named(tmp_path):
    spec = make_spec(tmp_path, path="nowhere/data.parquet")
    with pytest.raises(SpecError, match=r"nowhere/data\.parquet does not exist"):
        list(iter_partition_batches(spec, PARTITION))
    with pytest.raises(SpecError, match="does not exist"):
        source_schema(spec)


@pytest.mark.parametrize("bad", ["2024-13-01", "20240501", "2024-5-1", "May 1", "2024-02-30"])
def test_invalid_partition_is_a_value_error_naming_it(tmp_path, bad):
    with pytest.raises(ValueError, match=bad):
        parse_partition(bad)
    with pytest.raises(ValueError, match=bad):
        list(iter_partition_batches(make_spec(tmp_path), bad))


def test_empty_sources_and_empty_partitions_yield_nothing(tmp_path):
    pq.write_table(sample_table([], pa.date32()), tmp_path / "zero.parquet")
    assert read_ids(make_spec(tmp_path, path="zero.parquet")) == []

    pq.write_table(sample_table([date(2024, 5, 2)], pa.date32()), tmp_path / "other.parquet")
    assert read_ids(make_spec(tmp_path, path="other.parquet")) == []

    (tmp_path / "empty").mkdir()
    spec = make_spec(tmp_path, path="empty")
    assert read_ids(spec) == []
    assert source_schema(spec).names == []


def test_folder_without_data_files_or_with_mixed_formats_is_refused(tmp_path):
    folder = tmp_path / "src"
    folder.mkdir()
    (folder / "notes.txt").write_text("hi")
    with pytest.raises(SpecError, match=r"no \.parquet, \.csv or \.jsonl files \(found \.txt\)"):
        list(iter_partition_batches(make_spec(tmp_path), PARTITION))
    pacsv.write_csv(sample_table([date(2024, 5, 1)], pa.date32()), folder / "a.csv")
    write_jsonl(folder / "b.jsonl", sample_table([date(2024, 5, 1)], pa.date32()))
    with pytest.raises(SpecError, match="mixes formats"):
        list(iter_partition_batches(make_spec(tmp_path), PARTITION))


def test_partition_column_of_another_type_is_refused(tmp_path):
    pq.write_table(sample_table([20240501], pa.int64()), tmp_path / "src.parquet")
    with pytest.raises(SpecError, match="column 'day' has type int64"):
        list(iter_partition_batches(make_spec(tmp_path, path="src.parquet"), PARTITION))
