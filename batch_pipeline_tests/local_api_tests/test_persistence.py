"""Stopping and restarting the service on the same state dir loses no file or batch."""

from __future__ import annotations

import time
from pathlib import Path

import orjson
import pytest
from openai import OpenAI

from batch_pipeline.local_api.partial_results import PartialResults, recovered_ids
from batch_pipeline.local_api.result_lines import answer_result, error_result
from batch_pipeline_tests.local_api_tests.conftest import StartApi
from batch_pipeline_tests.local_api_tests.helpers import (
    by_custom_id,
    chat_line,
    read_lines,
    submit,
    wait_for,
    wait_for_completed,
)


@pytest.mark.slow
def test_restart_mid_batch_loses_nothing(start_api: StartApi, tmp_path: Path) -> None:
    state = tmp_path / "persisted"
    client = OpenAI(base_url=start_api(state_dir=state), api_key="k", max_retries=0)
    notes = client.files.create(file=("notes.txt", b"keep me"), purpose="user_data")
    finished = wait_for(client, submit(client, [chat_line("early", "before")]).id)
    lines = [chat_line(f"r{i}", f"row {i}") for i in range(30)]
    lines += [chat_line("slow-a", "<<slow:1>>"), chat_line("slow-b", "<<slow:1>> b")]
    running = submit(client, lines, metadata={"run": "nightly"})
    wait_for_completed(client, running.id, 30)
    before = client.batches.retrieve(running.id)
    assert before.status == "in_progress"

    client.close()
    start_api.stop_all()  # the service goes down mid-batch

    client = OpenAI(base_url=start_api(state_dir=state), api_key="k", max_retries=0)
    resumed = client.batches.retrieve(running.id)
    assert resumed.status == "in_progress"
    assert resumed.request_counts is not None and resumed.request_counts.completed >= 30
    assert resumed.metadata == {"run": "nightly"}
    assert resumed.created_at == before.created_at and resumed.expires_at == before.expires_at

    done = wait_for(client, running.id)
    assert done.status == "completed"
    assert done.request_counts is not None
    assert (done.request_counts.total, done.request_counts.completed) == (32, 32)
    output = by_custom_id(read_lines(client, done.output_file_id))  # each custom_id once
    assert set(output) == {f"r{i}" for i in range(30)} | {"slow-a", "slow-b"}

    assert client.files.content(notes.id).content == b"keep me"
    listed = {f.id for f in client.files.list()}
    assert {notes.id, finished.input_file_id, finished.output_file_id} <= listed
    assert read_lines(client, finished.output_file_id)[0]["custom_id"] == "early"
    assert client.batches.retrieve(finished.id) == finished
    assert [b.id for b in client.batches.list()] == [running.id, finished.id]


@pytest.mark.slow
def test_batch_expires_across_a_restart(start_api: StartApi, tmp_path: Path) -> None:
    state = tmp_path / "persisted"
    client = OpenAI(
        base_url=start_api(state_dir=state, completion_window_seconds=1.5),
        api_key="k",
        max_retries=0,
    )
    batch = submit(client, [chat_line("done", "hi"), chat_line("stuck", "<<hang>>")])
    wait_for_completed(client, batch.id, 1)
    client.close()
    start_api.stop_all()
    time.sleep(1.6)  # the window passes while nothing runs

    client = OpenAI(
        base_url=start_api(state_dir=state, completion_window_seconds=1.5),
        api_key="k",
        max_retries=0,
    )
    expired = wait_for(client, batch.id, timeout=10)
    assert expired.status == "expired"
    assert expired.expired_at == expired.expires_at  # when the window ended, not the restart
    assert [x["custom_id"] for x in read_lines(client, expired.output_file_id)] == ["done"]
    errors = read_lines(client, expired.error_file_id)
    assert [(x["custom_id"], x["error"]["code"]) for x in errors] == [("stuck", "batch_expired")]


@pytest.mark.slow
def test_a_batch_whose_input_was_deleted_resumes_after_a_restart(
    start_api: StartApi, tmp_path: Path
) -> None:
    state = tmp_path / "persisted"
    client = OpenAI(base_url=start_api(state_dir=state), api_key="k", max_retries=0)
    lines = [chat_line(f"r{i}", f"row {i}") for i in range(10)]
    lines += [chat_line(f"slow-{i}", "<<slow:1>>") for i in range(2)]
    batch = submit(client, lines)
    wait_for_completed(client, batch.id, 10)
    assert client.files.delete(batch.input_file_id).deleted
    client.close()
    start_api.stop_all()

    client = OpenAI(base_url=start_api(state_dir=state), api_key="k", max_retries=0)
    done = wait_for(client, batch.id)
    assert done.status == "completed"
    output = by_custom_id(read_lines(client, done.output_file_id))
    assert set(output) == {line["custom_id"] for line in lines}
    assert not (state / "work" / batch.id).exists()  # its own copy of the input went with it


@pytest.mark.slow
def test_a_second_service_on_the_same_state_dir_is_refused(
    start_api: StartApi, tmp_path: Path
) -> None:
    state = tmp_path / "persisted"
    client = OpenAI(base_url=start_api(state_dir=state), api_key="k", max_retries=0)
    running = submit(client, [chat_line("slow", "<<slow:1>>")])

    with pytest.raises(RuntimeError, match="another local Batch API service is using the state"):
        start_api(state_dir=state)
    assert client.batches.retrieve(running.id).status in ("validating", "in_progress")

    start_api.stop_all()
    client = OpenAI(base_url=start_api(state_dir=state), api_key="k", max_retries=0)
    done = wait_for(client, running.id)
    assert [line["custom_id"] for line in read_lines(client, done.output_file_id)] == ["slow"]


def test_partial_results_recover_and_cut_a_torn_line(tmp_path: Path) -> None:
    partial = PartialResults(tmp_path, sync_interval=1.0)
    chat = {"usage": {"prompt_tokens": 3, "completion_tokens": 2}}
    partial.add(
        [
            answer_result("a", 200, chat, "k1"),
            answer_result("b", 500, {}, "k2"),
            error_result("c", "batch_expired", "late", "k3"),
        ]
    )
    partial.close()
    with open(tmp_path / "output.partial.jsonl", "ab") as f:
        f.write(b'{"id": "batch_req_x", "custom_id": "torn", "respo')  # a crash mid-write

    recovered = PartialResults(tmp_path, sync_interval=1.0)
    assert recovered.done == {"a", "b", "c"}
    assert (recovered.completed, recovered.failed) == (1, 2)
    assert (recovered.input_tokens, recovered.output_tokens) == (3, 2)
    # what a worker process skips: read from a file, not carried with every chunk
    assert partial.recovered_path is None
    assert recovered_ids(recovered.recovered_path) == {"a", "b", "c"}
    recovered.add([answer_result("a", 200, chat, "again"), answer_result("d", 200, chat, "k4")])
    recovered.close()
    lines = (tmp_path / "output.partial.jsonl").read_bytes().splitlines()
    assert [orjson.loads(x)["custom_id"] for x in lines] == ["a", "d"]  # 2xx only
    errors = (tmp_path / "errors.partial.jsonl").read_bytes().splitlines()
    assert [orjson.loads(x)["custom_id"] for x in errors] == ["b", "c"]
