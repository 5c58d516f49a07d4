"""Source rows joined with outcomes and rejections into Hive-partitioned Parquet."""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from batch_pipeline.core import _results_join
from batch_pipeline.core import results as results_module
from batch_pipeline.core.layout import results_path
from batch_pipeline.core.outcomes import OUTCOME_SCHEMA
from batch_pipeline.core.results import (
    OrderedOutcomes,
    OutcomeGroup,
    ResultsIncompleteError,
    ResultsMismatchError,
    assemble_results,
    read_results,
)
from batch_pipeline.core.storage import LocalStorage

CHAT = "/v1/chat/completions"
DAY = "2026-11-20"
RESULT_COLUMNS = [
    "custom_id",
    "status",
    "attempts",
    "batch_id",
    "http_status",
    "response_text",
    "response_json",
    "error_code",
    "error_message",
    "input_tokens",
    "output_tokens",
]


def custom_id_of(keys: pa.Array) -> pa.Array:
    return pc.binary_join_element_wise(f"t-{DAY}-", pc.cast(keys, pa.string()), "")


def cid(key: Any) -> str:
    return f"t-{DAY}-{key}"


def outcome(key: Any, status: str = "succeeded", **fields: Any) -> dict[str, Any]:
    row = {"custom_id": cid(key), "status": status, "retryable": False}
    if status == "succeeded":
        row |= {"http_status": 200, "response_text": f"label {key}", "response_json": "{}"}
        row |= {"input_tokens": 10, "output_tokens": 2}
    return row | fields


def outcomes(*rows: dict[str, Any]) -> pa.Table:
    return pa.Table.from_pylist(list(rows), schema=OUTCOME_SCHEMA)


def rejections(*rows: tuple[int, Any, str]) -> pa.Table:
    return pa.table(
        {
            "row_number": pa.array([r[0] for r in rows], pa.int64()),
            "key": pa.array([str(r[1]) for r in rows], pa.string()),
            "custom_id": pa.array([cid(r[1]) for r in rows], pa.string()),
            "reason": pa.array([r[2] for r in rows], pa.string()),
        }
    )


def source(keys: list[Any], **columns: list[Any]) -> pa.Table:
    return pa.table({"ticket_id": keys, "subject": [f"subject {k}" for k in keys], **columns})


def assemble(
    tmp_path: Path,
    table: pa.Table | Iterator[pa.RecordBatch],
    *,
    partition: str = DAY,
    **options: Any,
):
    options.setdefault("outcomes", outcomes())
    options.setdefault("rejected", rejections())
    options.setdefault("endpoint", CHAT)
    return assemble_results(
        source_batches=table.to_batches(max_chunksize=3) if isinstance(table, pa.Table) else table,
        key_column="ticket_id",
        partition=partition,
        custom_id_of=custom_id_of,
        storage=LocalStorage(tmp_path),
        dest=results_path(partition),
        **options,
    )


def files_under(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def writer_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(results_module.WRITER_THREAD)]


def test_every_source_row_appears_once_with_its_status(tmp_path: Path) -> None:
    keys = ["a", "b", "c", "d", "e", "f", "g", "a"]
    summary = assemble(
        tmp_path,
        source(keys),
        outcomes=outcomes(
            outcome("e", "cancelled", error_code="batch_cancelled", error_message="stopped"),
            outcome("b", "failed", http_status=400, error_code="http_400", error_message="bad"),
            outcome("a", input_tokens=7),
            outcome("c", "expired", error_code="batch_expired", error_message="late"),
            outcome("d"),
        ),
        attempts=pa.table({"custom_id": [cid("a"), cid("b")], "attempts": [2, 1]}),
        batch_ids=pa.table({"custom_id": [cid("a"), cid("d")], "batch_id": ["batch_2", "b_1"]}),
        rejected=rejections((5, "f", "the prompt is empty"), (6, "g", "too long"), (7, "a", "dup")),
    )

    written = pq.read_table(summary.path)
    assert written.column_names == ["ticket_id", "subject", *RESULT_COLUMNS]
    frame = written.to_pandas()
    assert frame["ticket_id"].tolist() == keys
    assert frame["custom_id"].tolist() == [cid(k) for k in keys]
    assert frame["status"].tolist() == [
        "succeeded",
        "failed",
        "expired",
        "succeeded",
        "cancelled",
        "rejected",
        "rejected",
        "rejected",
    ]
    first, duplicate = frame.iloc[0], frame.iloc[7]
    assert (first["response_text"], first["attempts"], first["batch_id"]) == (
        "label a",
        2,
        "batch_2",
    )
    assert first["input_tokens"] == 7 and first["http_status"] == 200
    assert (duplicate["error_code"], duplicate["error_message"], duplicate["attempts"]) == (
        "rejected",
        "dup",
        0,
    )
    assert pd.isna(duplicate["response_text"]) and pd.isna(duplicate["http_status"])
    assert frame.iloc[5]["error_message"] == "the prompt is empty"
    assert frame.iloc[2][["error_code", "error_message"]].tolist() == ["batch_expired", "late"]

    assert summary.rows == 8
    assert summary.counts == {
        "succeeded": 2,
        "failed": 1,
        "expired": 1,
        "cancelled": 1,
        "rejected": 3,
    }
    assert (summary.input_tokens, summary.output_tokens) == (17, 4)
    assert summary.columns[0] == ("ticket_id", "string")
    # the rows a reader looks for come first: those without an answer, in file order
    assert [row["ticket_id"] for row in summary.preview] == ["b", "c", "e", "f", "g"]
    assert summary.failures == [
        {
            "status": "rejected",
            "error_code": "rejected",
            "rows": 3,
            "sample_message": "the prompt is empty",
        },
        {
            "status": "cancelled",
            "error_code": "batch_cancelled",
            "rows": 1,
            "sample_message": "stopped",
        },
        {"status": "expired", "error_code": "batch_expired", "rows": 1, "sample_message": "late"},
        {"status": "failed", "error_code": "http_400", "rows": 1, "sample_message": "bad"},
    ]
    assert files_under(tmp_path / "results") == [f"partition={DAY}/part-0.parquet"]
    plain = tmp_path / "plain.txt"
    plain.write_text("x")  # the results are as readable as any file written here
    assert Path(summary.path).stat().st_mode == plain.stat().st_mode


def test_the_preview_shows_succeeded_rows_after_those_without_an_answer(tmp_path: Path) -> None:
    keys = ["a", "b", "c", "d", "e", "f", "g"]
    summary = assemble(
        tmp_path,
        source(keys),
        outcomes=outcomes(
            *(outcome(key) for key in keys if key != "f"),
            outcome("f", "failed", http_status=500, error_code="http_500", error_message="x"),
        ),
    )
    assert [row["ticket_id"] for row in summary.preview] == ["f", "a", "b", "c", "d"]
    assert [(g["status"], g["error_code"], g["rows"]) for g in summary.failures] == [
        ("failed", "http_500", 1)
    ]


def test_rejections_must_say_which_row_they_reject(tmp_path: Path) -> None:
    rejected = rejections((1, "x", "duplicate key")).drop_columns("row_number")
    with pytest.raises(ValueError, match="lacks the column 'row_number'"):
        assemble(tmp_path, source(["x", "x"]), outcomes=outcomes(outcome("x")), rejected=rejected)
    assert files_under(tmp_path) == []


def test_a_row_without_outcome_or_rejection_stops_the_write(tmp_path: Path) -> None:
    with pytest.raises(ResultsIncompleteError, match=r"2 source rows .*'c' .*'d'"):
        assemble(
            tmp_path, source(["a", "b", "c", "d"]), outcomes=outcomes(outcome("a"), outcome("b"))
        )
    assert files_under(tmp_path / "results") == []


def test_an_outcome_of_no_source_row_stops_the_write(tmp_path: Path) -> None:
    with pytest.raises(ResultsMismatchError, match=r"1 outcomes match no .*t-2026-11-20-zz"):
        assemble(tmp_path, source(["a"]), outcomes=outcomes(outcome("a"), outcome("zz")))
    assert files_under(tmp_path / "results") == []


def test_duplicate_keys_that_were_not_rejected_stop_the_write(tmp_path: Path) -> None:
    with pytest.raises(ResultsMismatchError, match="claimed by several source rows"):
        assemble(tmp_path, source(["a", "a"]), outcomes=outcomes(outcome("a")))


def test_an_outcome_given_twice_stops_the_write(tmp_path: Path) -> None:
    with pytest.raises(ResultsMismatchError, match="more than one outcome"):
        assemble(tmp_path, source(["a"]), outcomes=outcomes(outcome("a"), outcome("a")))


@pytest.mark.parametrize(
    ("rejected", "message"),
    [
        (rejections((1, "b", "dup")), "do not match the source row"),
        (rejections((9, "a", "gone")), "beyond the 2 source rows"),
        (rejections((1, "b", "one"), (1, "b", "two")), "rejected more than once"),
    ],
)
def test_rejections_must_name_real_rows(tmp_path: Path, rejected: pa.Table, message: str) -> None:
    with pytest.raises(ResultsMismatchError, match=message):
        assemble(tmp_path, source(["a", "c"]), outcomes=outcomes(outcome("a")), rejected=rejected)


@pytest.mark.parametrize("failing", [1, 3, 5])  # the first, a middle and the last write
def test_a_failure_mid_write_keeps_the_previous_file(
    tmp_path: Path, monkeypatch, failing: int
) -> None:
    keys = [f"k{i:03d}" for i in range(40)]
    everything = outcomes(*(outcome(k) for k in keys))
    first = assemble(tmp_path, source(keys), outcomes=everything)
    before = pq.read_table(first.path)

    original_write = results_module.AtomicParquetFile.write
    writes = []

    def failing_write(self, data) -> None:
        writes.append(threading.current_thread().name)
        if len(writes) == failing:
            raise OSError("disk full")
        original_write(self, data)

    monkeypatch.setattr(results_module.AtomicParquetFile, "write", failing_write)
    changed = pa.Table.from_pylist(
        [outcome(k, response_text="new") for k in keys], schema=OUTCOME_SCHEMA
    )
    with pytest.raises(OSError, match="disk full"):
        assemble(tmp_path, source(keys), outcomes=changed, chunk_rows=8)  # five chunks, five writes

    assert all(name.startswith(results_module.WRITER_THREAD) for name in writes)
    assert writer_threads() == []
    assert pq.read_table(first.path).equals(before)
    assert files_under(tmp_path / "results") == [f"partition={DAY}/part-0.parquet"]


def test_a_join_error_stops_the_writer_thread_and_keeps_the_previous_file(
    tmp_path: Path, monkeypatch
) -> None:
    keys = [f"k{i:02d}" for i in range(20)]
    first = assemble(tmp_path, source(keys), outcomes=outcomes(*map(outcome, keys)))
    before = Path(first.path).read_bytes()

    original_write = results_module.AtomicParquetFile.write
    writes: list[int] = []

    def slow_write(self, data) -> None:  # still writing when the join fails
        time.sleep(0.05)
        original_write(self, data)
        writes.append(len(data))

    monkeypatch.setattr(results_module.AtomicParquetFile, "write", slow_write)
    lost_in_second_chunk = outcomes(*(outcome("zz" if k == "k05" else k) for k in keys))
    with pytest.raises(ResultsIncompleteError, match=r"1 source rows .*'k05'"):
        # chunks of 4, 2, 4, 2, ... rows
        assemble(tmp_path, source(keys), outcomes=lost_in_second_chunk, chunk_rows=4)

    assert writer_threads() == []
    written = list(writes)
    time.sleep(0.1)
    assert writes == written and len(written) <= 1  # the first chunk at most, none after
    assert Path(first.path).read_bytes() == before
    assert files_under(tmp_path / "results") == [f"partition={DAY}/part-0.parquet"]


def test_the_background_writer_writes_the_file_the_sequential_one_does(
    tmp_path: Path, monkeypatch
) -> None:
    keys = [f"k{i:02d}" for i in range(30)]
    rejected_rows = {0: "empty", 9: "too long", 29: "empty"}
    accepted = [key for row, key in enumerate(keys) if row not in rejected_rows]
    groups = [
        OutcomeGroup(len(members), lambda members=members: outcomes(*map(outcome, members)))
        for members in (accepted[:11], accepted[11:])
    ]
    options: dict[str, Any] = {
        "outcomes": groups,
        "rejected": rejections(*((row, keys[row], why) for row, why in rejected_rows.items())),
    }
    background = assemble(tmp_path / "background", source(keys), **options, chunk_rows=4)
    assert writer_threads() == []
    monkeypatch.setattr(results_module, "_WriteBehind", lambda file: file)  # write in turn
    sequential = assemble(tmp_path / "sequential", source(keys), **options, chunk_rows=4)

    assert Path(background.path).read_bytes() == Path(sequential.path).read_bytes()
    assert pq.ParquetFile(background.path).metadata.num_row_groups == 10  # one per chunk
    assert replace(sequential, path=background.path) == background


def test_a_source_column_named_like_a_results_column_in_another_case_is_renamed(
    tmp_path: Path,
) -> None:
    """DuckDB folds case: a source `Status` next to `status` would be read as `Status` and
    `status_1`, and `GROUP BY status` would group by the source's column."""
    table = source(["a", "b"], Status=["open", "open"], PARTITION=["x", "y"])
    summary = assemble_results(
        source_batches=table.to_batches(),
        key_column="ticket_id",
        partition=DAY,
        custom_id_of=custom_id_of,
        outcomes=outcomes(outcome("a"), outcome("b")),
        rejected=None,
        storage=LocalStorage(tmp_path),
        dest=results_path(DAY),
        endpoint=CHAT,
    )
    assert summary.renamed_columns == {"Status": "source_Status", "PARTITION": "source_PARTITION"}
    glob = str(tmp_path / "results" / "*" / "*.parquet")
    counts = duckdb.sql(
        f"SELECT status, count(*) FROM read_parquet('{glob}', hive_partitioning=true) "
        "GROUP BY status"
    ).fetchall()
    assert counts == [("succeeded", 2)]


def test_pandas_and_duckdb_read_all_partitions_whole(tmp_path: Path) -> None:
    days = {"2026-11-20": ["a", "b"], "2026-11-21": ["c", "d", "e"]}
    for day, keys in days.items():
        # A source column named `partition` must not clash with the folder key.
        table = source(keys, partition=[f"src-{k}" for k in keys])
        summary = assemble_results(
            source_batches=table.to_batches(),
            key_column="ticket_id",
            partition=day,
            custom_id_of=custom_id_of,
            outcomes=outcomes(*(outcome(k) for k in keys)),
            rejected=None,
            storage=LocalStorage(tmp_path),
            dest=results_path(day),
            endpoint=CHAT,
        )
        assert summary.renamed_columns == {"partition": "source_partition"}
    # A crash mid-write leaves a hidden temporary file, which readers must skip.
    (tmp_path / "results" / "partition=2026-11-21" / ".part-0.parquet.x1.tmp").write_bytes(b"PAR")

    frame = pd.read_parquet(tmp_path / "results")
    assert len(frame) == 5
    assert sorted(frame["ticket_id"]) == ["a", "b", "c", "d", "e"]
    assert sorted(map(str, frame["partition"].unique())) == sorted(days)
    assert sorted(frame["source_partition"]) == [f"src-{k}" for k in "abcde"]

    glob = str(tmp_path / "results" / "*" / "*.parquet")
    counts = duckdb.sql(
        f"SELECT CAST(partition AS VARCHAR) AS day, count(*) AS n, count(DISTINCT custom_id) "
        f"FROM read_parquet('{glob}', hive_partitioning=true) GROUP BY day ORDER BY day"
    ).fetchall()
    assert counts == [("2026-11-20", 2, 2), ("2026-11-21", 3, 3)]

    one_day = read_results(tmp_path / "results", "2026-11-21")
    assert one_day["ticket_id"].tolist() == ["c", "d", "e"]
    assert set(one_day["partition"]) == {"2026-11-21"}
    assert one_day["http_status"].tolist() == [200, 200, 200]
    assert len(read_results(tmp_path / "results")) == 5


def test_embeddings_results_carry_the_vector(tmp_path: Path) -> None:
    summary = assemble(
        tmp_path,
        source(["a"]),
        outcomes=outcomes(outcome("a", response_text=None, embedding=[0.5, -0.25])),
        endpoint="/v1/embeddings",
    )
    written = pq.read_table(summary.path)
    assert written.column_names == [
        "ticket_id",
        "subject",
        *RESULT_COLUMNS[:7],
        "embedding",
        *RESULT_COLUMNS[7:],
    ]
    assert written.schema.field("embedding").type == pa.list_(pa.float32())
    assert written["embedding"].to_pylist() == [[0.5, -0.25]]


def test_an_empty_partition_still_writes_the_source_columns(tmp_path: Path) -> None:
    empty = source(["x"]).slice(0, 0)
    summary = assemble_results(
        source_batches=iter(()),
        source_schema=empty.schema,
        key_column="ticket_id",
        partition=DAY,
        custom_id_of=custom_id_of,
        outcomes=outcomes(),
        rejected=None,
        storage=LocalStorage(tmp_path),
        dest=results_path(DAY),
        endpoint=CHAT,
    )
    written = pq.read_table(summary.path)
    assert written.num_rows == 0 and written.column_names[:2] == ["ticket_id", "subject"]


def test_integer_keys_and_many_chunks(tmp_path: Path) -> None:
    keys = list(range(100))
    summary = assemble(
        tmp_path,
        source(keys),
        outcomes=outcomes(*(outcome(k) for k in keys if k != 42)),
        rejected=rejections((42, 42, "empty")),
        chunk_rows=7,
    )
    frame = pq.read_table(summary.path).to_pandas()
    assert frame["ticket_id"].tolist() == keys
    assert frame.loc[42, "status"] == "rejected"
    assert summary.counts == {"succeeded": 99, "rejected": 1}


def test_the_destination_must_be_the_partition_folder(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="partition=2026-11-20"):
        assemble_results(
            source_batches=source(["a"]).to_batches(),
            key_column="ticket_id",
            partition=DAY,
            custom_id_of=custom_id_of,
            outcomes=outcomes(outcome("a")),
            rejected=None,
            storage=LocalStorage(tmp_path),
            dest="results.parquet",
            endpoint=CHAT,
        )
    assert files_under(tmp_path) == []


def thirty_keys_four_rejected() -> tuple[list[str], dict[int, str], list[str]]:
    """30 source keys; the rows rejected, with their reasons; the keys accepted."""
    keys = [f"k{i:02d}" for i in range(30)]
    rejected_rows = {0: "empty", 9: "too long", 10: "duplicate key", 29: "empty"}
    return keys, rejected_rows, [key for row, key in enumerate(keys) if row not in rejected_rows]


def test_outcome_groups_are_read_in_turn_as_the_join_reaches_them(tmp_path: Path) -> None:
    keys, rejected_rows, accepted = thirty_keys_four_rejected()
    loads: list[int] = []

    def group(index: int, members: list[str]) -> OutcomeGroup:
        table = outcomes(*(outcome(key) for key in reversed(members)))  # not in source order
        return OutcomeGroup(len(members), lambda: loads.append(index) or table)

    groups = [group(0, accepted[:7]), group(1, accepted[7:15]), group(2, accepted[15:])]
    summary = assemble(
        tmp_path,
        source(keys),
        outcomes=groups,
        rejected=rejections(*((row, keys[row], reason) for row, reason in rejected_rows.items())),
        chunk_rows=4,
    )

    assert loads == [0, 1, 2]
    written = pq.read_table(summary.path)
    assert written["ticket_id"].to_pylist() == keys
    assert written["response_text"].to_pylist() == [
        None if row in rejected_rows else f"label {key}" for row, key in enumerate(keys)
    ]
    rejected = written.filter(pc.equal(written["status"], "rejected"))
    assert rejected["error_message"].to_pylist() == list(rejected_rows.values())


def ordered_group(members: list[str], loads: list[str], order: list[str] | None = None):
    """A group whose outcomes are stored in the order `order` (default: `members`), read in
    pieces of 3 rows; `load` notes its first member in `loads`."""
    table = outcomes(*map(outcome, order or members))
    pulled: list[int] = []

    def pieces():
        for start in range(0, table.num_rows, 3):
            pulled.append(start)
            yield table.slice(start, 3)

    return OutcomeGroup(
        len(members),
        lambda: loads.append(members[0]) or table,
        lambda: OrderedOutcomes(ids=table["custom_id"], tables=pieces()),
    ), pulled


def test_ordered_groups_are_streamed_in_pieces_and_never_loaded_whole(tmp_path: Path) -> None:
    keys, rejected_rows, accepted = thirty_keys_four_rejected()
    rejected = rejections(*((row, keys[row], reason) for row, reason in rejected_rows.items()))
    loads: list[str] = []
    streamed = [ordered_group(accepted[i : i + 9], loads) for i in range(0, len(accepted), 9)]
    summary = assemble(
        tmp_path / "streamed",
        source(keys),
        outcomes=[group for group, _ in streamed],
        rejected=rejected,
        chunk_rows=4,
    )
    whole = assemble(
        tmp_path / "whole",
        source(keys),
        outcomes=[OutcomeGroup(g.rows, g.load) for g, _ in streamed],
        rejected=rejected,
        chunk_rows=4,
    )
    assert loads == [accepted[i] for i in range(0, len(accepted), 9)]  # the whole run only
    assert [pulled for _, pulled in streamed] == [[0, 3, 6]] * 3
    assert pq.read_table(summary.path).equals(pq.read_table(whole.path))
    assert summary.counts == {"succeeded": 26, "rejected": 4}


def test_a_failing_source_stops_the_read_ahead_and_closes_the_outcome_file(
    tmp_path: Path,
) -> None:
    keys = [f"k{i:02d}" for i in range(12)]
    closed: list[bool] = []

    def pieces():
        for start in range(0, 12, 3):
            yield outcomes(*map(outcome, keys[start : start + 3]))

    group = OutcomeGroup(
        12,
        lambda: outcomes(*map(outcome, keys)),
        lambda: OrderedOutcomes(
            ids=outcomes(*map(outcome, keys))["custom_id"],
            tables=pieces(),
            close=lambda: closed.append(True),
        ),
    )

    def failing_source():
        yield from source(keys[:4]).to_batches()
        raise OSError("the source went away")

    with pytest.raises(OSError, match="went away"):
        assemble(tmp_path, failing_source(), outcomes=[group], chunk_rows=4)
    assert closed == [True]
    assert files_under(tmp_path / "results") == []
    threads = {thread.name.split("_")[0] for thread in threading.enumerate()}
    assert not threads & {_results_join.READ_AHEAD_THREAD, results_module.SOURCE_THREAD}


def test_rows_that_stop_following_an_ordered_group_are_joined_from_its_whole_table(
    tmp_path: Path,
) -> None:
    keys = [f"k{i:02d}" for i in range(12)]
    stored = [*keys[:5], keys[6], keys[5], *keys[7:]]  # two rows swapped in the file
    loads: list[str] = []
    group, _ = ordered_group(keys, loads, order=stored)
    summary = assemble(tmp_path, source(keys), outcomes=[group], chunk_rows=4)
    assert loads == ["k00"]
    written = pq.read_table(summary.path)
    assert written["ticket_id"].to_pylist() == keys
    assert written["response_text"].to_pylist() == [f"label {key}" for key in keys]


def test_a_row_missing_from_an_ordered_group_stops_the_write(tmp_path: Path) -> None:
    keys = ["a", "b", "c", "d"]
    group, _ = ordered_group(keys, [], order=["a", "c", "d"])
    with pytest.raises(ResultsIncompleteError, match=r"1 source rows .*'b'"):
        assemble(tmp_path, source(keys), outcomes=[group])
    assert files_under(tmp_path / "results") == []


def test_an_ordered_group_with_an_outcome_twice_stops_the_write(tmp_path: Path) -> None:
    group, _ = ordered_group(["a", "b"], [], order=["a", "b", "b"])
    with pytest.raises(ResultsMismatchError, match="more than one outcome"):
        assemble(tmp_path, source(["a", "b"]), outcomes=[group])


def test_an_outcome_in_the_wrong_group_stops_the_write(tmp_path: Path) -> None:
    first = outcomes(outcome("a"), outcome("c"))
    second = outcomes(outcome("b"), outcome("d"))
    groups = [OutcomeGroup(2, lambda: first), OutcomeGroup(2, lambda: second)]
    with pytest.raises(ResultsIncompleteError, match=r"2 source rows .*'b' .*'c'"):
        assemble(tmp_path, source(["a", "b", "c", "d"]), outcomes=groups)
    assert files_under(tmp_path / "results") == []


def test_at_most_the_group_being_joined_is_held_while_the_next_one_is_read(
    tmp_path: Path, monkeypatch
) -> None:
    opened: list[weakref.ref] = []

    class TrackedGroup(_results_join._Group):
        def __init__(self, **fields: Any) -> None:
            super().__init__(**fields)
            opened.append(weakref.ref(self))

    monkeypatch.setattr(_results_join, "_Group", TrackedGroup)
    keys = [f"k{i:02d}" for i in range(12)]
    alive_at_load: list[int] = []

    def group(members: list[str]) -> OutcomeGroup:
        def load() -> pa.Table:
            alive_at_load.append(sum(ref() is not None for ref in opened))
            return outcomes(*map(outcome, members))

        return OutcomeGroup(len(members), load)

    groups = [group(keys[i : i + 3]) for i in range(0, 12, 3)]
    assemble(tmp_path, source(keys), outcomes=groups, chunk_rows=4)  # chunks span two groups
    assert len(alive_at_load) == 4 and max(alive_at_load) <= 1 and len(opened) == 4
