"""Bad input: bad rows are rejected one by one with a reason naming the row and the column while
every other row goes through; a user's mistake through `batch-pipeline run` gets a readable
message, no traceback, a non-zero exit, and nothing submitted."""

from __future__ import annotations

import re
import socket
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml

from batch_pipeline.core.spec import PipelineSpec
from batch_pipeline_tests.reliability_tests.helpers import (
    DAY,
    KEY_COLUMN,
    LEAK_ENV,
    LEAK_KEY,
    Tally,
    assert_no_leak,
    at,
    by_key,
    cli_command,
    finish_child,
    keys_of,
    rows_with_bodies,
    run_partition,
    service_batches,
    spec_data,
    start_child,
    ticket_rows,
    write_pipeline,
)

pytestmark = [pytest.mark.reliability, pytest.mark.slow]

CONTEXT_WINDOW = 1200  # tokens, 200 of them reserved for output by the spec's max_tokens
MAX_LINE_BYTES = 2048
CSV_HEADER = "ticket_id,subject,body,created_at\n"


def write_csv_pipeline(folder: Path, base_url: str, name: str, lines: list[str]) -> Path:
    """A pipeline over `tickets.csv` written in latin-1 (bytes that are not UTF-8 stay so)."""
    (folder / "tickets.csv").write_bytes((CSV_HEADER + "".join(lines)).encode("latin-1"))
    data = spec_data(base_url, name, folder, source={"path": "tickets.csv"})
    path = folder / "pipeline.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def rejections(spec: PipelineSpec, partition: str = DAY) -> list[dict[str, Any]]:
    path = spec.pipeline_dir / "requests" / f"partition={partition}" / "gen=1" / "rejected.parquet"
    return pq.read_table(path).to_pylist()


def test_bad_rows_are_rejected_by_name_and_the_rest_go_through(
    tmp_path: Path, keyed_api: str, name: str, tally: Tally
) -> None:
    rows = rows_with_bodies(
        {
            "OK0": "fine",
            "NULLBODY": None,  # type: ignore[dict-item]
            "EMPTY": "",
            "BLANK": " \t\n ",
            "DUP": "first of two",
            "LONG": "word " * 1500,  # more tokens than the context window
            "HUGE": "\u4e2d" * 750,  # few tokens, but a line larger than max_bytes_per_file
            "OK1": "fine too",
        }
    )
    rows.append({KEY_COLUMN: "DUP", "subject": "again", "body": "second", "created_at": at()})
    rows.append({KEY_COLUMN: None, "subject": "no key", "body": None, "created_at": at()})
    spec = PipelineSpec.from_yaml(
        write_pipeline(
            tmp_path,
            keyed_api,
            name,
            rows,
            request={"context_window": CONTEXT_WINDOW},
            limits={"max_bytes_per_file": MAX_LINE_BYTES},
        )
    )
    _, results = run_partition(spec, tally, keys_of(rows))
    expected = {
        "NULLBODY": ("null_value", "column 'body' is null"),
        "EMPTY": ("empty_value", "column 'body' is empty"),
        "BLANK": ("empty_value", "column 'body' is empty"),
        "LONG": ("context_window_exceeded", "does not fit the context window"),
        "HUGE": ("request_too_large", "larger than limits.max_bytes_per_file"),
    }
    rejected = results[results["status"] == "rejected"]
    for key, (code, reason) in expected.items():
        row = rejected[rejected[KEY_COLUMN] == key].iloc[0]
        assert row["error_code"] == code and reason in row["error_message"], key
    dup = results[results[KEY_COLUMN] == "DUP"].sort_values("status")
    assert list(dup["status"]) == ["rejected", "succeeded"]
    assert "duplicate key" in dup["error_message"].iloc[0]
    no_key = results[results[KEY_COLUMN].isna()].iloc[0]
    assert no_key["error_code"] == "null_key"  # the first reason wins over the null body
    assert no_key["subject"] == "no key"  # the rest of the row is there to recognise it
    assert set(results[results["status"] != "rejected"][KEY_COLUMN]) == {"OK0", "OK1", "DUP"}
    assert (results[results["status"] != "rejected"]["status"] == "succeeded").all()
    numbered = {(r["key"], r["row_number"]) for r in rejections(spec)}
    assert ("DUP", 8) in numbered and (None, 9) in numbered  # source positions, 0-based


def test_a_day_where_every_row_is_rejected_still_gets_its_results(
    tmp_path: Path, keyed_api: str, name: str, tally: Tally
) -> None:
    """No request is left to submit; the results still list each row with its reason."""
    rows = rows_with_bodies({"A": None, "B": "", "C": "  "})  # type: ignore[dict-item]
    spec = PipelineSpec.from_yaml(write_pipeline(tmp_path, keyed_api, name, rows))
    _, results = run_partition(spec, tally, keys_of(rows))
    assert (results["status"] == "rejected").all()
    assert set(results["error_code"]) == {"null_value", "empty_value"}
    assert service_batches(keyed_api, name) == []


def test_latin1_bytes_in_a_csv_reject_those_rows_only(
    tmp_path: Path, keyed_api: str, name: str, tally: Tally
) -> None:
    lines = [
        "L1,caf\xe9 au lait,ok,2026-11-20T10:00:00\n",
        "L2,plain,ok,2026-11-20T11:00:00\n",
        "L3,plain,na\xefve,2026-11-20T12:00:00\n",
    ]
    spec = PipelineSpec.from_yaml(write_csv_pipeline(tmp_path, keyed_api, name, lines))
    _, results = run_partition(spec, tally, ["L1", "L2", "L3"])
    table = by_key(results)
    assert table.loc["L2", "status"] == "succeeded"
    for key, column in (("L1", "subject"), ("L3", "body")):
        assert table.loc[key, "error_code"] == "invalid_text"
        assert f"column '{column}' is not valid UTF-8" in table.loc[key, "error_message"]


def test_csv_keys_keep_their_text(tmp_path: Path, keyed_api: str, name: str, tally: Tally) -> None:
    """Keys `007` and `7` are two rows; the results give them back as written."""
    lines = ["007,s,first,2026-11-20T10:00:00\n", "7,s,second,2026-11-20T11:00:00\n"]
    spec = PipelineSpec.from_yaml(write_csv_pipeline(tmp_path, keyed_api, name, lines))
    _, results = run_partition(spec, tally, ["007", "7"])
    assert sorted(map(str, results[KEY_COLUMN])) == ["007", "7"]
    assert (results["status"] == "succeeded").all(), results[["status", "error_message"]]


def test_float_and_nested_keys_come_back_once_each(
    tmp_path: Path, keyed_api: str, name: str, tally: Tally
) -> None:
    """Keys of floats (one NaN, rejected as a null key) and of structs are joined back."""
    floats = [
        {**row, KEY_COLUMN: key}
        for row, key in zip(ticket_rows(4), [0.5, 1.0, -0.0, float("nan")], strict=True)
    ]
    spec = PipelineSpec.from_yaml(write_pipeline(tmp_path / "f", keyed_api, name, floats))
    _, results = run_partition(spec, tally, keys_of(floats))
    assert status_counts(results) == {"succeeded": 3, "rejected": 1}
    assert "key column 'ticket_id' is null" in results["error_message"].dropna().iloc[0]
    nested = [
        {**row, KEY_COLUMN: {"shop": "north", "n": i}} for i, row in enumerate(ticket_rows(3))
    ]
    spec = PipelineSpec.from_yaml(write_pipeline(tmp_path / "n", keyed_api, f"{name}_n", nested))
    _, results = run_partition(spec, tally, keys_of(nested))
    assert status_counts(results) == {"succeeded": 3}


def status_counts(results: pd.DataFrame) -> dict[str, int]:
    return results["status"].value_counts().to_dict()


# -- a user's mistakes through the CLI --------------------------------------------------------


@dataclass(frozen=True)
class Mistake:
    """A broken setup, how `batch-pipeline run` must end, and what it must say."""

    prepare: Callable[[Path, str, str], Path]  # (folder, base_url, name) -> spec path
    exit_code: int
    says: tuple[str, ...]
    partition: str = DAY
    known_bug: str | None = None  # an xfail reason while the product gets it wrong


def _good(folder: Path, base_url: str, name: str) -> Path:
    return write_pipeline(folder, base_url, name, ticket_rows(3))


def _edit(folder: Path, base_url: str, name: str, edit: Callable[[dict[str, Any]], None]) -> Path:
    path = _good(folder, base_url, name)
    data = spec_data(base_url, name, folder)
    edit(data)
    path.write_text(yaml.safe_dump(data))
    return path


def _malformed_yaml(folder: Path, base_url: str, name: str) -> Path:
    path = _good(folder, base_url, name)
    path.write_text(f"name: {name}\nsource: [unclosed\n  key: : :\n")
    return path


def _unknown_spec_key(folder: Path, base_url: str, name: str) -> Path:
    return _edit(folder, base_url, name, lambda d: d["request"].update(promt="x"))


def _misspelled_column(folder: Path, base_url: str, name: str) -> Path:
    return _edit(
        folder, base_url, name, lambda d: d["request"].update(prompt="Subject: {subjct}\n\n{body}")
    )


def _missing_key_column(folder: Path, base_url: str, name: str) -> Path:
    return _edit(folder, base_url, name, lambda d: d["source"].update(key="id"))


def _missing_source(folder: Path, base_url: str, name: str) -> Path:
    path = _good(folder, base_url, name)
    (folder / "tickets.parquet").unlink()
    return path


def _zero_rows(folder: Path, base_url: str, name: str) -> Path:
    path = _good(folder, base_url, name)
    frame = pd.read_parquet(folder / "tickets.parquet").iloc[:0]
    frame.to_parquet(folder / "tickets.parquet", index=False)
    return path


def _ledger_database_down(folder: Path, base_url: str, name: str) -> Path:
    with socket.socket() as probe:  # a port where nothing listens
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"postgresql://batch:ledger-pw@127.0.0.1:{port}/ledger"
    return _edit(folder, base_url, name, lambda d: d.update(ledger={"url": url}))


def _partition_column_not_utf8(folder: Path, base_url: str, name: str) -> Path:
    return write_csv_pipeline(
        folder,
        base_url,
        name,
        [
            "A,s,ok,2026-11-20T10:00:00\xe9\n",
            "B,s,ok,2026-11-20T11:00:00\n",
        ],
    )


MISTAKES = {
    "malformed-yaml": Mistake(_malformed_yaml, 1, ("is not valid YAML", "line 2")),
    "unknown-spec-key": Mistake(_unknown_spec_key, 1, ("request.promt: unknown key",)),
    "misspelled-column": Mistake(
        _misspelled_column, 1, ("placeholder {subjct} names no column", "'subject'")
    ),
    "missing-key-column": Mistake(
        _missing_key_column, 1, ("source.key: column 'id' is not in the source",)
    ),
    "missing-source-file": Mistake(_missing_source, 1, ("tickets.parquet does not exist",)),
    "partition-not-a-date": Mistake(_good, 1, ("'2026-13-45' is not a valid date",), "2026-13-45"),
    "partition-column-not-utf8": Mistake(
        _partition_column_not_utf8,
        1,
        ("created_at", "row 0", "not UTF-8"),
    ),
    "ledger-database-down": Mistake(
        _ledger_database_down, 1, ("error: database: connection to server", "refused")
    ),
    "source-with-zero-rows": Mistake(_zero_rows, 0, ("rows:    0",)),
    "partition-with-no-rows": Mistake(_good, 0, ("rows:    0",), "2026-11-25"),
}


@pytest.fixture(scope="module")
def mistakes_run(
    tmp_path_factory: pytest.TempPathFactory, keyed_api: str, tally: Tally
) -> Iterator[dict[str, tuple[subprocess.CompletedProcess[str], str]]]:
    """Every mistake's `batch-pipeline run`, all at once (each is a process start)."""
    root = tmp_path_factory.mktemp("mistakes")
    started = {}
    for index, (case, mistake) in enumerate(MISTAKES.items()):
        folder = root / case
        folder.mkdir()
        name = f"r_mistake_{index}"
        spec = mistake.prepare(folder, keyed_api, name)
        command = cli_command(
            "run",
            str(spec),
            "--partition",
            mistake.partition,
            "--poll-interval",
            "0.2",
            "--timeout",
            "60",
        )
        # The module's children start before the per-test key is set: they get it here.
        started[case] = (start_child(command, **{LEAK_ENV: LEAK_KEY}), name)
    yield {case: (finish_child(child, tally), name) for case, (child, name) in started.items()}
    assert_no_leak(tally.scan_tree(root))


@pytest.mark.parametrize(
    "case",
    [
        pytest.param(
            case,
            marks=[pytest.mark.xfail(strict=True, reason=m.known_bug)] if m.known_bug else [],
        )
        for case, m in MISTAKES.items()
    ],
)
def test_a_users_mistake_gets_a_readable_message_and_no_traceback(
    mistakes_run: dict[str, tuple[subprocess.CompletedProcess[str], str]],
    keyed_api: str,
    case: str,
) -> None:
    mistake = MISTAKES[case]
    done, name = mistakes_run[case]
    output = done.stdout + done.stderr
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    assert done.returncode == mistake.exit_code, output[-2000:]
    if mistake.exit_code:
        assert re.search(r"^error: ", done.stderr, re.MULTILINE), done.stderr
        assert service_batches(keyed_api, name) == []  # nothing paid for
    for fragment in mistake.says:
        assert fragment in output, f"{fragment!r} not in:\n{output[-2000:]}"
    assert "ledger-pw" not in output
