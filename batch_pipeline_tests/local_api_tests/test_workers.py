"""`workers`: the echo answers on several processes exactly as on one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
from openai import OpenAI

from batch_pipeline.local_api import LocalApiSettings
from batch_pipeline.local_api.dispatch import ChunkTask, Dispatcher
from batch_pipeline.local_api.echo import EchoResponder
from batch_pipeline_tests.local_api_tests.conftest import StartApi
from batch_pipeline_tests.local_api_tests.helpers import (
    by_custom_id,
    chat_line,
    jsonl,
    read_lines,
    submit,
    wait_for,
)

ROWS = 300
CHUNK = 40  # many chunks, so both workers answer some of them


def _lines() -> list[Any]:
    """Chat requests of differing texts and lengths, a few answered with faults, one whose
    body the echo refuses."""
    lines: list[Any] = [
        chat_line(f"r{n}", f"Ticket {n}: my parcel is late. " * (1 + n % 7), max_tokens=5 + n % 9)
        for n in range(ROWS)
    ]
    lines[7] = chat_line("r7", "please <<fail:500>>")
    lines[11] = chat_line("r11", "please <<fail:429>>")
    lines[13]["body"]["messages"] = "not a list"
    return lines


def _comparable(line: dict[str, Any]) -> dict[str, Any]:
    """A result line without what differs between any two runs: ids and creation times."""
    line = {key: value for key, value in line.items() if key != "id"}
    response = line.get("response")
    if response:
        body = {k: v for k, v in response["body"].items() if k not in ("id", "created")}
        line["response"] = {**response, "request_id": None, "body": body}
    return line


def _answers(start_api: StartApi, name: str, workers: int) -> tuple[dict[str, Any], Any]:
    url = start_api(state_dir=start_api.default_state_dir / name, workers=workers, chunk_size=CHUNK)
    client = OpenAI(base_url=url, api_key="sk-local-test", max_retries=0)
    batch = wait_for(client, submit(client, _lines()).id, timeout=120.0)
    assert batch.status == "completed"
    lines = read_lines(client, batch.output_file_id) + read_lines(client, batch.error_file_id)
    answers = {key: _comparable(line) for key, line in by_custom_id(lines).items()}
    return answers, batch.request_counts


@pytest.mark.slow
def test_two_workers_answer_every_request_as_one_worker_does(start_api: StartApi) -> None:
    one, one_counts = _answers(start_api, "one", workers=1)
    two, two_counts = _answers(start_api, "two", workers=2)

    assert len(one) == ROWS
    assert two == one
    assert two_counts == one_counts
    assert one_counts.failed == 3  # two faults and the refused body
    assert one["r7"]["response"]["status_code"] == 500
    assert one["r13"]["response"]["status_code"] == 400


def test_workers_must_be_positive_and_default_to_this_process_alone() -> None:
    with pytest.raises(ValueError, match="workers must be positive"):
        LocalApiSettings(workers=0)
    assert LocalApiSettings().workers is None  # a service started from Python: 1 process
    assert LocalApiSettings(workers=2).workers == 2


def _chunk(path: Path, offset: int, done_path: str | None = None) -> Any:
    task = ChunkTask(str(path), offset, 2, "/v1/chat/completions", "ab" * 10, "b:0", done_path)
    return Dispatcher(EchoResponder(), chunk_size=2, triggers_faults=True).answer_chunk(task)


def test_a_chunk_reads_its_lines_from_its_offset_and_tells_where_the_next_starts(
    tmp_path: Path,
) -> None:
    path = tmp_path / "input.jsonl"
    lines = [chat_line(f"r{n}", f"text {n}") for n in range(3)]
    lines[1] = chat_line("r1", "please <<fail:500>>")
    path.write_bytes(jsonl(lines))

    first = _chunk(path, 0)
    second = _chunk(path, first.offset)

    assert not first.eof and second.eof
    output = [orjson.loads(line) for line in first.block.output.splitlines()]
    errors = [orjson.loads(line) for line in first.block.errors.splitlines()]
    assert [line["custom_id"] for line in output] == ["r0"]
    assert [line["custom_id"] for line in errors] == ["r1"]
    assert sorted(first.block.custom_ids) == ["r0", "r1"]
    assert (first.block.completed, first.block.failed) == (1, 1)
    assert first.block.input_tokens > 0 and first.block.output_tokens > 0
    assert second.block.custom_ids == ["r2"]


def test_a_chunk_skips_the_requests_done_before_this_run(tmp_path: Path) -> None:
    path = tmp_path / "input.jsonl"
    path.write_bytes(jsonl([chat_line("r0", "one"), chat_line("r1", "two <<slow:1>>")]))

    done = tmp_path / "done.ids"
    done.write_text('["r0", "r1"]')
    answers = _chunk(path, 0, done_path=str(done))

    assert answers.block.custom_ids == [] and answers.deferred == []
    assert answers.block.output == answers.block.errors == b""
