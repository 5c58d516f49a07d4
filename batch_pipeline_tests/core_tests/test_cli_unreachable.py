"""`batch-pipeline run` against a Batch API that is not there, or goes away for a while."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import openai
import pandas as pd
import pytest
import yaml

from batch_pipeline import cli
from batch_pipeline.local_api.server import run_local_batch_api
from batch_pipeline_tests.conftest import ticket_spec, write_tickets

pytestmark = pytest.mark.slow

DAY = "2026-11-20"
KEY = "sk-unreachable-test-9f8e7d6c5b4a3210"


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound once, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def write_spec(tmp_path: Path, base_url: str, bodies: list[str], **backend: object) -> Path:
    rows = [
        {"ticket_id": f"T{i}", "subject": f"Order {i}", "body": body, "created_at": f"{DAY} 09:00"}
        for i, body in enumerate(bodies)
    ]
    write_tickets(tmp_path / "tickets.parquet", rows)
    spec = ticket_spec(tmp_path, base_url)
    spec["backend"] = {**spec["backend"], "api_key_env": "BP_TEST_KEY", **backend}
    path = tmp_path / "tickets.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.mark.parametrize("no_wait", [False, True], ids=["wait", "no-wait"])
def test_run_against_a_closed_port_exits_with_one_line_naming_the_url(tmp_path, no_wait) -> None:
    url = f"http://127.0.0.1:{closed_port()}/v1"
    spec = write_spec(tmp_path, url, ["hello", "again"])
    command = [sys.executable, "-m", "batch_pipeline.cli", "run", str(spec), "--partition", DAY]
    env = {"BP_TEST_KEY": KEY, "PATH": "/usr/bin:/bin"}
    started = time.monotonic()
    done = subprocess.run(
        [*command, *(["--no-wait"] if no_wait else [])],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    elapsed = time.monotonic() - started

    assert done.returncode == 1, done.stderr
    assert elapsed < 60
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith(f"error: cannot connect to the Batch API at {url}/")
    assert "Connection refused" in line
    assert "submitted" not in done.stdout
    for text in (done.stdout, done.stderr):
        assert KEY not in text and "9f8e7d6c5b4a3210" not in text


class Outage:
    """The local Batch API on a fixed port, stopped and started again on the same state."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.port = closed_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self._service = None

    def start(self) -> None:
        self._service = run_local_batch_api(
            self.state_dir, port=self.port, completion_window_seconds=60
        )
        assert self._service.__enter__() == self.url

    def stop(self) -> None:
        assert self._service is not None
        self._service.__exit__(None, None, None)
        self._service = None

    def wait_for_a_batch_in_progress(self) -> None:
        client = openai.OpenAI(base_url=self.url, api_key="local", max_retries=0)
        deadline = time.monotonic() + 30
        while not [b for b in client.batches.list() if b.status == "in_progress"]:
            assert time.monotonic() < deadline, "no batch went in progress"
            time.sleep(0.05)
        client.close()

    def close(self) -> None:
        if self._service is not None:
            self.stop()

    def is_down(self) -> bool:
        client = openai.OpenAI(base_url=self.url, api_key="local", max_retries=0)
        try:
            client.batches.list()
        except openai.APIConnectionError:
            return True
        finally:
            client.close()
        return False


def run_cli_in_thread(spec: Path, *options: str) -> tuple[threading.Thread, dict[str, int]]:
    outcome: dict[str, int] = {}

    def run() -> None:
        argv = ["run", str(spec), "--partition", DAY, "--poll-interval", "0.2", *options]
        outcome["exit"] = cli.main(argv)

    thread = threading.Thread(target=run, name="cli-run")
    thread.start()
    return thread, outcome


def test_a_run_whose_service_goes_away_briefly_retries_and_finishes(
    tmp_path, monkeypatch, capsys
) -> None:
    monkeypatch.setenv("BP_TEST_KEY", KEY)
    outage = Outage(tmp_path / "state")
    # One slow request keeps the batch in flight across the outage; no SDK retries, so the
    # run's own polls meet the refused connections.
    spec = write_spec(tmp_path, outage.url, ["quick", "slow <<slow:2>>"], max_retries=0)
    outage.start()
    thread, outcome = run_cli_in_thread(spec, "--unreachable-after", "30")
    try:
        outage.wait_for_a_batch_in_progress()
        outage.stop()
        assert outage.is_down()
        time.sleep(1.5)  # several polls fail meanwhile
        outage.start()
        thread.join(60)
    finally:
        outage.close()
    assert not thread.is_alive()
    assert outcome["exit"] == 0, capsys.readouterr().err
    results = pd.read_parquet(tmp_path / "out" / "tickets" / "results")
    assert sorted(results["status"]) == ["succeeded", "succeeded"]


def test_a_run_that_gets_no_answer_past_its_bound_exits_naming_the_url(
    tmp_path, monkeypatch, capsys
) -> None:
    monkeypatch.setenv("BP_TEST_KEY", KEY)
    outage = Outage(tmp_path / "state")
    spec = write_spec(tmp_path, outage.url, ["slow <<slow:30>>"], max_retries=0)
    outage.start()
    thread, outcome = run_cli_in_thread(spec, "--unreachable-after", "1")
    try:
        outage.wait_for_a_batch_in_progress()
    finally:
        outage.stop()
    stopped = time.monotonic()
    thread.join(30)
    assert not thread.is_alive()
    assert time.monotonic() - stopped < 15
    assert outcome["exit"] == 1
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith(f"error: no answer from the Batch API at {outage.url}/ for ")
    assert "Connection refused" in last and KEY not in last


def test_no_wait_counts_only_the_requests_that_are_in_batches(
    tmp_path, batch_api, monkeypatch, capsys
) -> None:
    """Two one-request shards under a token budget that lets one through: one is submitted,
    the other waits, and the line says so."""
    monkeypatch.setenv("BP_TEST_KEY", KEY)
    spec = write_spec(tmp_path, batch_api, ["hello", "again"])
    data = yaml.safe_load(spec.read_text())
    data["limits"] = {"max_requests_per_file": 1, "enqueued_tokens": 30}
    spec.write_text(yaml.safe_dump(data))
    assert cli.main(["run", str(spec), "--partition", DAY, "--no-wait"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"{DAY}: 1 of 2 requests submitted in 1 batch(es), 0 rejected; ")
    assert "1 requests in 1 shard(s) not submitted yet" in line


def test_a_waiting_pipeline_run_stops_at_the_specs_own_bound(tmp_path, monkeypatch) -> None:
    """From Python, without the CLI: `backend.unreachable_after_seconds` stops `Pipeline.run`."""
    from batch_pipeline import load_pipeline
    from batch_pipeline.core.backends.base import ServiceUnreachable

    monkeypatch.setenv("BP_TEST_KEY", KEY)
    outage = Outage(tmp_path / "state")
    spec = write_spec(
        tmp_path, outage.url, ["slow <<slow:30>>"], max_retries=0, unreachable_after_seconds=1
    )
    outage.start()
    failure: dict[str, BaseException] = {}

    def run() -> None:
        with load_pipeline(spec) as pipeline:
            try:
                pipeline.run(DAY, poll_interval=0.2)
            except ServiceUnreachable as exc:
                failure["error"] = exc

    thread = threading.Thread(target=run, name="pipeline-run")
    thread.start()
    try:
        outage.wait_for_a_batch_in_progress()
    finally:
        outage.stop()
    thread.join(30)
    assert not thread.is_alive()
    assert str(failure["error"]).startswith(f"no answer from the Batch API at {outage.url}/")


def test_a_collected_day_is_reported_without_the_key(tmp_path, batch_api, monkeypatch, capsys):
    """Reporting a day already collected calls no Batch API, so it needs no key."""
    monkeypatch.setenv("BP_TEST_KEY", KEY)
    spec = write_spec(tmp_path, batch_api, ["hello"])
    assert cli.main(["run", str(spec), "--partition", DAY, "--poll-interval", "0.2"]) == 0
    monkeypatch.delenv("BP_TEST_KEY")
    capsys.readouterr()
    assert cli.main(["run", str(spec), "--partition", DAY]) == 0
    assert "already settled and collected" in capsys.readouterr().out
