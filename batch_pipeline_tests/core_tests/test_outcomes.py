"""Output and error files of a batch parsed into one outcome row per custom_id."""

from __future__ import annotations

import base64
import json
import random
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from batch_pipeline.core import _outcome_columns, _outcome_rows
from batch_pipeline.core.outcomes import (
    OUTCOME_SCHEMA,
    OutcomeFileError,
    classify,
    parse_outcomes,
)
from batch_pipeline.core.parquet_files import AtomicParquetFile
from batch_pipeline.core.storage import LocalStorage
from batch_pipeline.core.types import RowStatus

CHAT = "/v1/chat/completions"
RESPONSES = "/v1/responses"
EMBEDDINGS = "/v1/embeddings"


def chat_body(text: str, prompt_tokens: int = 10, completion_tokens: int = 3) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}}],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens},
    }


def answer(custom_id: str, body: Any, status: int = 200) -> dict[str, Any]:
    return {
        "id": f"batch_req_{custom_id}",
        "custom_id": custom_id,
        "response": {"status_code": status, "request_id": "req_1", "body": body},
        "error": None,
    }


def failure(custom_id: str, status: int, code: str | None, message: str = "no") -> dict:
    error = {"message": message, "type": "invalid_request_error"}
    if code:
        error["code"] = code
    return answer(custom_id, {"error": error}, status)


def unanswered(custom_id: str, code: str, message: str = "not run") -> dict[str, Any]:
    return {
        "id": f"batch_req_{custom_id}",
        "custom_id": custom_id,
        "response": None,
        "error": {"code": code, "message": message},
    }


def jsonl(path: Path, lines: list[dict[str, Any]]) -> Path:
    path.write_bytes(b"".join(orjson.dumps(line) + b"\n" for line in lines))
    return path


def rows_by_id(table) -> dict[str, dict[str, Any]]:
    return {row["custom_id"]: row for row in table.to_pylist()}


@pytest.mark.parametrize(
    ("http_status", "code", "expected"),
    [
        (200, None, (RowStatus.SUCCEEDED, False)),
        (201, None, (RowStatus.SUCCEEDED, False)),
        (429, "rate_limit_exceeded", (RowStatus.FAILED, True)),
        (500, None, (RowStatus.FAILED, True)),
        (503, "http_503", (RowStatus.FAILED, True)),
        (400, "invalid_request", (RowStatus.FAILED, False)),
        (404, "model_not_found", (RowStatus.FAILED, False)),
        (None, "batch_expired", (RowStatus.EXPIRED, True)),
        (None, "batch_cancelled", (RowStatus.CANCELLED, False)),
        (None, "rate_limit_exceeded", (RowStatus.FAILED, True)),
        (None, "server_error", (RowStatus.FAILED, True)),
        (None, "invalid_request", (RowStatus.FAILED, False)),
        (None, None, (RowStatus.FAILED, False)),
    ],
)
def test_classify(http_status: int | None, code: str | None, expected: tuple) -> None:
    assert classify(http_status, code) == expected


def test_lines_in_any_order_from_both_files_become_one_row_per_custom_id(tmp_path: Path) -> None:
    answers = [answer(f"ok-{i}", chat_body(f"label {i}", 10 + i, i)) for i in range(50)]
    answers += [
        failure("limited", 429, "rate_limit_exceeded", "slow down"),
        failure("broken", 500, None, "server fell over"),
        failure("invalid", 400, None, "bad max_tokens"),
    ]
    random.Random(7).shuffle(answers)
    errors = [
        unanswered("late", "batch_expired"),
        unanswered("stopped", "batch_cancelled"),
        unanswered("refused", "invalid_request", "model is not allowed"),
    ]
    table = parse_outcomes(
        jsonl(tmp_path / "out.jsonl", answers), jsonl(tmp_path / "err.jsonl", errors), endpoint=CHAT
    )

    assert table.schema == OUTCOME_SCHEMA
    rows = rows_by_id(table)
    assert len(rows) == table.num_rows == 56
    assert rows["ok-7"] | {"response_json": None} == {
        "custom_id": "ok-7",
        "status": "succeeded",
        "retryable": False,
        "http_status": 200,
        "response_text": "label 7",
        "response_json": None,
        "embedding": None,
        "error_code": None,
        "error_message": None,
        "input_tokens": 17,
        "output_tokens": 7,
        "batch_request_id": "batch_req_ok-7",
    }
    assert orjson.loads(rows["ok-7"]["response_json"]) == chat_body("label 7", 17, 7)
    expected = {
        "limited": ("failed", True, 429, "rate_limit_exceeded", "slow down"),
        "broken": ("failed", True, 500, "http_500", "server fell over"),
        "invalid": ("failed", False, 400, "http_400", "bad max_tokens"),
        "late": ("expired", True, None, "batch_expired", "not run"),
        "stopped": ("cancelled", False, None, "batch_cancelled", "not run"),
        "refused": ("failed", False, None, "invalid_request", "model is not allowed"),
    }
    for custom_id, (status, retryable, http_status, code, message) in expected.items():
        row = rows[custom_id]
        assert (row["status"], row["retryable"], row["http_status"]) == (
            status,
            retryable,
            http_status,
        ), custom_id
        assert (row["error_code"], row["error_message"]) == (code, message), custom_id
        assert row["response_text"] is None and row["input_tokens"] is None


def test_either_file_may_be_absent(tmp_path: Path) -> None:
    out = jsonl(tmp_path / "out.jsonl", [answer("a", chat_body("A"))])
    err = jsonl(tmp_path / "err.jsonl", [unanswered("b", "batch_expired")])

    assert parse_outcomes(out, None, endpoint=CHAT)["custom_id"].to_pylist() == ["a"]
    assert parse_outcomes(None, err, endpoint=CHAT)["custom_id"].to_pylist() == ["b"]
    nothing = parse_outcomes(None, None, endpoint=CHAT)
    assert nothing.num_rows == 0 and nothing.schema == OUTCOME_SCHEMA
    empty = parse_outcomes(jsonl(tmp_path / "empty.jsonl", []), None, endpoint=CHAT)
    assert empty.num_rows == 0


def test_a_real_answer_wins_over_other_lines_of_the_same_custom_id(tmp_path: Path) -> None:
    out = jsonl(
        tmp_path / "out.jsonl",
        [
            failure("retried", 500, None),
            answer("retried", chat_body("second try")),
            answer("both", chat_body("answered")),
            failure("twice-failed", 429, "rate_limit_exceeded", "first"),
            failure("twice-failed", 429, "rate_limit_exceeded", "second"),
        ],
    )
    err = jsonl(
        tmp_path / "err.jsonl",
        [unanswered("both", "batch_expired"), unanswered("failed-then-error", "batch_expired")],
    )
    out_more = jsonl(tmp_path / "out2.jsonl", [failure("failed-then-error", 400, None)])
    rows = rows_by_id(parse_outcomes(out, err, endpoint=CHAT))
    assert rows["retried"]["response_text"] == "second try"
    assert rows["both"]["status"] == "succeeded"
    assert rows["twice-failed"]["error_message"] == "first"
    assert len(rows) == 4

    mixed = rows_by_id(parse_outcomes(out_more, err, endpoint=CHAT))
    assert mixed["failed-then-error"]["http_status"] == 400  # an HTTP answer beats no answer


def test_responses_api_text_is_the_output_text_parts_joined(tmp_path: Path) -> None:
    body = {
        "id": "resp_1",
        "object": "response",
        "output": [
            {"type": "reasoning", "id": "rs_1", "summary": []},
            {
                "type": "message",
                "role": "assistant",
                "content": [
                    {"type": "output_text", "text": "Hello, ", "annotations": []},
                    {"type": "refusal", "refusal": "not this"},
                    {"type": "output_text", "text": "world.", "annotations": []},
                ],
            },
        ],
        "usage": {"input_tokens": 21, "output_tokens": 4, "total_tokens": 25},
    }
    out = jsonl(tmp_path / "out.jsonl", [answer("r", body), answer("empty", {"output": []})])
    rows = rows_by_id(parse_outcomes(out, None, endpoint=RESPONSES))
    assert rows["r"]["response_text"] == "Hello, world."
    assert (rows["r"]["input_tokens"], rows["r"]["output_tokens"]) == (21, 4)
    assert rows["empty"]["response_text"] is None and rows["empty"]["status"] == "succeeded"


def test_embeddings_keep_the_first_input_vector_as_float32(tmp_path: Path) -> None:
    vector = [0.25, -1.5, 3.0]
    packed = base64.b64encode(np.array([1.0, 2.0], dtype="<f4").tobytes()).decode()
    out = jsonl(
        tmp_path / "out.jsonl",
        [
            answer(
                "two-inputs",
                {
                    "object": "list",
                    "data": [
                        {"object": "embedding", "index": 1, "embedding": [9.0, 9.0, 9.0]},
                        {"object": "embedding", "index": 0, "embedding": vector},
                    ],
                    "usage": {"prompt_tokens": 8, "total_tokens": 8},
                },
            ),
            answer("base64", {"data": [{"index": 0, "embedding": packed}], "usage": {}}),
        ],
    )
    table = parse_outcomes(out, None, endpoint=EMBEDDINGS)
    rows = rows_by_id(table)
    assert rows["two-inputs"]["embedding"] == vector
    assert (rows["two-inputs"]["input_tokens"], rows["two-inputs"]["output_tokens"]) == (8, 0)
    assert rows["two-inputs"]["response_text"] is None
    assert rows["base64"]["embedding"] == [1.0, 2.0]
    assert str(table.schema.field("embedding").type) == "list<item: float>"


def test_completions_text(tmp_path: Path) -> None:
    body = {"choices": [{"index": 0, "text": "done"}], "usage": {"prompt_tokens": 2}}
    out = jsonl(tmp_path / "out.jsonl", [answer("c", body)])
    row = parse_outcomes(out, None, endpoint="/v1/completions").to_pylist()[0]
    assert (row["response_text"], row["input_tokens"], row["output_tokens"]) == ("done", 2, None)


def test_an_answer_of_an_unexpected_shape_is_kept_whole(tmp_path: Path) -> None:
    parts = {"choices": [{"message": {"content": [{"type": "text", "text": "hi"}]}}]}
    out = jsonl(
        tmp_path / "out.jsonl",
        [answer("odd", {"choices": "not a list"}), answer("parts", parts)],
    )
    rows = rows_by_id(parse_outcomes(out, None, endpoint=CHAT))
    for custom_id, body in (("odd", {"choices": "not a list"}), ("parts", parts)):
        assert rows[custom_id]["status"] == "succeeded"
        assert rows[custom_id]["response_text"] is None
        assert orjson.loads(rows[custom_id]["response_json"]) == body


@pytest.mark.parametrize(
    ("bad_line", "reason"),
    [
        (b'{"custom_id": "x", "response": {"status_', "not JSON"),
        (b'{"id": "batch_req_1", "response": null, "error": null}', "no custom_id"),
        (b'{"custom_id": 5, "response": null, "error": {"code": "x"}}', "not a string"),
        (b'{"custom_id": "x", "response": null, "error": null}', "neither"),
        (b'{"custom_id": "x", "response": {"body": {}}}', "status_code"),
    ],
)
def test_a_malformed_line_names_the_file_and_line(
    tmp_path: Path, bad_line: bytes, reason: str
) -> None:
    good = orjson.dumps(answer("a", chat_body("A"))) + b"\n"
    path = tmp_path / "output.jsonl"
    path.write_bytes(good + b"\n" + bad_line + b"\n" + good)  # line 2 is blank: skipped
    with pytest.raises(OutcomeFileError, match=rf"output\.jsonl, line 3: .*{reason}"):
        parse_outcomes(path, None, endpoint=CHAT)


@pytest.mark.parametrize("bad_file", ["output", "errors"])
def test_a_malformed_line_past_the_first_chunks_is_named_by_its_own_file_and_line(
    tmp_path: Path, bad_file: str
) -> None:
    """Chunks of both files parsed side by side still number each file's lines from 1."""
    lines = {
        "output": [orjson.dumps(answer(f"a{i}", chat_body("A" * 50))) for i in range(30)],
        "errors": [orjson.dumps(unanswered(f"e{i}", "batch_expired")) for i in range(30)],
    }
    lines[bad_file][22] = b'{"custom_id": "x", "response": {"status_'
    for name, found in lines.items():
        (tmp_path / f"{name}.jsonl").write_bytes(b"\n".join(found) + b"\n")
    with pytest.raises(OutcomeFileError, match=rf"{bad_file}\.jsonl, line 23: not JSON"):
        parse_outcomes(
            tmp_path / "output.jsonl", tmp_path / "errors.jsonl", endpoint=CHAT, chunk_bytes=400
        )


def test_a_failed_write_leaves_the_previous_file(tmp_path: Path) -> None:
    def parsed(name: str, key: str) -> pa.Table:
        path = jsonl(tmp_path / name, [answer(key, chat_body(key.upper()))])
        return parse_outcomes(path, None, endpoint=CHAT)

    dest = tmp_path / "outcomes.parquet"
    storage = LocalStorage(tmp_path)
    with AtomicParquetFile(storage, dest.name, OUTCOME_SCHEMA) as first:
        first.write(parsed("old.jsonl", "a"))
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(orjson.dumps(answer("b", chat_body("B"))) + b"\n{oops\n")
    with (
        pytest.raises(OutcomeFileError),
        AtomicParquetFile(storage, dest.name, OUTCOME_SCHEMA) as second,
    ):
        second.write(parsed("fine.jsonl", "c"))
        second.write(parse_outcomes(bad, None, endpoint=CHAT))
    assert pq.read_table(dest)["custom_id"].to_pylist() == ["a"]
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["bad.jsonl", "fine.jsonl", "old.jsonl", dest.name]


def write_large_files(tmp_path: Path, n: int, seed: int = 1) -> tuple[Path, Path, Counter]:
    """n requests: answers (a few 429s) in random order in the output file, 5% in errors."""
    rng = random.Random(seed)
    ids = list(range(n))
    rng.shuffle(ids)
    expected: Counter = Counter()
    out_lines, err_lines = [], []
    for i in ids:
        custom_id = f"tickets-2026-11-20-{i:08d}"
        if i % 20 == 0:
            err_lines.append(orjson.dumps(unanswered(custom_id, "batch_expired")))
            expected["expired"] += 1
        elif i % 97 == 0:
            out_lines.append(orjson.dumps(failure(custom_id, 429, "rate_limit_exceeded")))
            expected["failed"] += 1
        else:
            out_lines.append(orjson.dumps(answer(custom_id, chat_body(f"answer {i}", 100, 5))))
            expected["succeeded"] += 1
    out, err = tmp_path / "output.jsonl", tmp_path / "errors.jsonl"
    out.write_bytes(b"\n".join(out_lines) + b"\n")
    err.write_bytes(b"\n".join(err_lines) + b"\n")
    return out, err, expected


def test_a_large_pair_of_files_parses_chunk_by_chunk_into_one_row_per_request(
    tmp_path: Path,
) -> None:
    n = 200_000
    out, err, expected = write_large_files(tmp_path, n)

    table = parse_outcomes(out, err, endpoint=CHAT, chunk_bytes=4 * 1024 * 1024)

    assert table.num_rows == n and len(table["custom_id"].combine_chunks().unique()) == n
    assert Counter(table["status"].to_pylist()) == expected
    assert pc.sum(table["retryable"]).as_py() == expected["expired"] + expected["failed"]
    assert pc.sum(table["input_tokens"]).as_py() == 100 * expected["succeeded"]


def spaced(line: dict[str, Any]) -> bytes:
    """A line as OpenAI writes it: a space after every colon and comma."""
    return json.dumps(line, ensure_ascii=False).encode()


TRICKY_LINES: dict[str, bytes] = {
    "compact": orjson.dumps(answer("a-1", chat_body("plain"))),
    "spaced": spaced(answer("a-2", chat_body("spaced out, with: punctuation"))),
    "crlf": orjson.dumps(answer("a-3", chat_body("windows"))) + b"\r",
    "quoted key text": orjson.dumps(answer('a-"body": {}', chat_body('say "body": {"x": 1}'))),
    "tool call": orjson.dumps(
        answer("a-4", {**chat_body("x"), "choices": [{"message": {"content": None}}]})
    ),
    "no choices": orjson.dumps(answer("a-5", {"usage": {"prompt_tokens": 3}})),
    "content parts": orjson.dumps(
        answer("a-6", {**chat_body("x"), "choices": [{"message": {"content": [{"t": 1}]}}]})
    ),
    "key after body": orjson.dumps(answer("a-7", chat_body("late")))[: -len(b'},"error":null}')]
    + b',"extra":{"body":1}},"error":null}',
    "error body": orjson.dumps(failure("a-8", 400, "invalid_request", "bad model")),
    "error without code": orjson.dumps(failure("a-9", 503, None, "overloaded")),
    "error line": orjson.dumps(unanswered("a-10", "batch_expired")),
    "unicode": orjson.dumps(answer("a-11", chat_body("Zürich 東京 \u2028 line"))),
    "numeric code": orjson.dumps(
        answer("a-12", {"error": {"code": 42, "message": "odd"}}, status=500)
    ),
    "null id": orjson.dumps({**answer("a-13", chat_body("no id")), "id": None}),
    "no request_id": orjson.dumps(
        {**answer("a-14", chat_body("bare")), "response": {"status_code": 200, "body": {}}}
    ),
    "keys reordered": orjson.dumps(
        {"custom_id": "a-15", "id": "batch_req_15", **answer("a-15", chat_body("moved"))}
    ),
    "escaped custom_id": orjson.dumps(answer("a-16\\x", chat_body("backslash"))),
}


NOT_COLUMNAR = {"content parts", "key after body", "numeric code"}


@pytest.mark.parametrize("shape", sorted(TRICKY_LINES))
def test_both_parsing_paths_agree_on_every_line_shape(
    tmp_path: Path, shape: str, monkeypatch
) -> None:
    """Arrow's column-wise path and the line-by-line path give the same rows, whichever path a
    shape takes (a shape Arrow cannot be sure of falls back whole)."""
    ordinary = [orjson.dumps(answer(f"n-{i}", chat_body(f"label {i}", 5, i))) for i in range(20)]
    path = tmp_path / "output.jsonl"
    path.write_bytes(b"\n".join([*ordinary[:10], TRICKY_LINES[shape], *ordinary[10:]]) + b"\n")

    parse_columns = _outcome_columns.parse_chunk
    took_columns = []
    monkeypatch.setattr(
        _outcome_columns,
        "parse_chunk",
        lambda *args: took_columns.append(parse_columns(*args) is not None) or parse_columns(*args),
    )
    columnar = parse_outcomes(path, None, endpoint=CHAT)
    assert took_columns == [shape not in NOT_COLUMNAR]
    # The same chunk with every line read whole by Arrow, not through its usual head.
    monkeypatch.setattr(_outcome_columns, "_USUAL_HEAD", r"^a line never starts like this")
    whole_lines = parse_outcomes(path, None, endpoint=CHAT)
    monkeypatch.setattr(_outcome_columns, "parse_chunk", lambda *args: None)
    line_by_line = parse_outcomes(path, None, endpoint=CHAT)

    assert columnar.num_rows == line_by_line.num_rows == 21
    assert whole_lines.equals(columnar)
    assert columnar.drop_columns("response_json").equals(line_by_line.drop_columns("response_json"))
    for fast, slow in zip(
        columnar["response_json"].to_pylist(),
        line_by_line["response_json"].to_pylist(),
        strict=True,
    ):
        assert (fast is None) == (slow is None)
        if fast is not None:
            assert orjson.loads(fast) == orjson.loads(slow)


def test_a_file_mixing_every_unusual_shape_parses_as_the_reference_does(tmp_path: Path) -> None:
    """Ordinary lines, every tricky shape, error lines and a body larger than Arrow's block,
    in one file of many chunks parsed side by side: the column-wise parse gives the rows the
    line-by-line reference gives, column for column, in the same order."""
    huge = orjson.dumps(answer("huge", chat_body("é" * (5 * 1024 * 1024))))  # 10 MB of text
    lines = [orjson.dumps(answer(f"n-{i}", chat_body(f"label {i}", 5, i))) for i in range(300)]
    for offset, tricky in enumerate([*TRICKY_LINES.values(), huge]):
        lines.insert(offset * 17, tricky)
    for i in range(0, 300, 29):
        lines.insert(i, orjson.dumps(unanswered(f"e-{i}", "batch_expired")))
    path = tmp_path / "output.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    chunk_bytes = 4096  # dozens of chunks, some column-wise, some not, parsed two at a time

    taken = []  # per chunk: whether it was parsed column-wise
    parse_columns = _outcome_columns.parse_chunk
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(
            _outcome_columns,
            "parse_chunk",
            lambda *args: taken.append(parse_columns(*args) is not None) or parse_columns(*args),
        )
        columnar = parse_outcomes(path, None, endpoint=CHAT, chunk_bytes=chunk_bytes)
        patch.setattr(_outcome_columns, "parse_chunk", lambda *args: None)
        reference = parse_outcomes(path, None, endpoint=CHAT, chunk_bytes=chunk_bytes)

    assert taken.count(True) > 10 and taken.count(False) >= 3  # both paths took part

    assert columnar.num_rows == reference.num_rows == len(lines)
    assert columnar.drop_columns("response_json").equals(reference.drop_columns("response_json"))
    # The column-wise parse keeps each body's bytes as they stand; the reference writes the
    # parsed body back: the same JSON, spaced otherwise where the line was spaced.
    assert [
        None if j is None else orjson.loads(j) for j in columnar["response_json"].to_pylist()
    ] == [None if j is None else orjson.loads(j) for j in reference["response_json"].to_pylist()]
    assert rows_by_id(columnar)["huge"]["response_text"] == "é" * (5 * 1024 * 1024)


def test_a_bare_null_line_is_named_not_fed_to_arrow(tmp_path: Path) -> None:
    path = tmp_path / "output.jsonl"
    path.write_bytes(b"null\n" + orjson.dumps(answer("a", chat_body("x"))) + b"\n")
    with pytest.raises(OutcomeFileError, match=r"output.jsonl, line 1: no custom_id"):
        parse_outcomes(path, None, endpoint=CHAT)


def test_a_custom_id_repeated_across_chunks_of_both_paths_keeps_its_best_line(
    tmp_path: Path,
) -> None:
    """Chunks parsed column-wise and line by line hash custom_ids alike, so a repeat across
    them is found."""
    filler = [orjson.dumps(answer(f"n-{i}", chat_body("x" * 200))) for i in range(40)]
    plain_chunk = [orjson.dumps(failure("twice", 500, None, "first try")), *filler[:20]]
    # Content parts send this chunk down the line-by-line path.
    parts = {**chat_body("x"), "choices": [{"message": {"content": [{"t": 1}]}}]}
    odd_chunk = [
        orjson.dumps(answer("parts", parts)),
        orjson.dumps(answer("twice", chat_body("second try"))),
        *filler[20:],
    ]
    path = tmp_path / "output.jsonl"
    path.write_bytes(b"\n".join(plain_chunk) + b"\n" + b"\n".join(odd_chunk) + b"\n")
    chunk_bytes = len(b"\n".join(plain_chunk)) - 10  # the first chunk ends with plain_chunk

    columnar = {}  # the first line of each chunk: whether it was parsed column-wise
    parse_columns = _outcome_columns.parse_chunk

    def recorded(chunk: bytes, *args: Any) -> Any:
        parsed = parse_columns(chunk, *args)
        columnar[bytes(chunk.split(b"\n", 1)[0])] = parsed is not None
        return parsed

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_outcome_columns, "parse_chunk", recorded)
        rows = rows_by_id(parse_outcomes(path, None, endpoint=CHAT, chunk_bytes=chunk_bytes))

    # The repeat's lines lie in the first two chunks (chunks are parsed side by side).
    assert columnar[plain_chunk[0]] is True and columnar[odd_chunk[0]] is False
    assert len(rows) == 42
    assert rows["twice"]["status"] == "succeeded"
    assert rows["twice"]["response_text"] == "second try"


def test_id_hashes_are_equal_for_equal_strings_wherever_they_lie() -> None:
    import pyarrow as pa

    values = pa.array(["", "a", "ab", "ba", "a", "", "long " * 40, "ab"], pa.string())
    hashes = _outcome_rows.id_hashes(values)
    sliced = _outcome_rows.id_hashes(values.slice(2, 4))
    assert hashes[1] == hashes[4] and hashes[0] == hashes[5] and hashes[2] == hashes[7]
    assert len(set(hashes[[0, 1, 2, 3, 6]].tolist())) == 5
    assert sliced.tolist() == hashes[2:6].tolist()
