"""`batch-pipeline serve`: flags map onto LocalApiSettings; the command serves until SIGTERM."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest
from openai import OpenAI

from batch_pipeline.cli import build_parser
from batch_pipeline.local_api import LocalApiSettings
from batch_pipeline_tests.local_api_tests.helpers import chat_line, submit, wait_for, wait_until


def test_flags_become_settings(tmp_path: Path) -> None:
    args = build_parser().parse_args(
        [
            "serve",
            "--host",
            "0.0.0.0",
            "--port",
            "9999",
            "--state-dir",
            str(tmp_path),
            "--responder",
            "proxy",
            "--upstream-url",
            "http://127.0.0.1:1",
            "--concurrency",
            "3",
            "--upstream-api-key-env",
            "UP_KEY",
            "--completion-window-seconds",
            "2.5",
            "--api-key-env",
            "MY_KEY",
            "--fault-create-429-every",
            "3",
            "--fault-download-500-every",
            "4",
            "--max-upload-bytes",
            "1000",
        ]
    )
    settings = LocalApiSettings.from_namespace(args)
    assert settings == LocalApiSettings(
        state_dir=tmp_path,
        host="0.0.0.0",
        port=9999,
        responder="proxy",
        upstream_url="http://127.0.0.1:1",
        concurrency=3,
        upstream_api_key_env="UP_KEY",
        completion_window_seconds=2.5,
        api_key_env="MY_KEY",
        fault_create_429_every=3,
        fault_download_500_every=4,
        max_upload_bytes=1000,
    )
    defaults = LocalApiSettings.from_namespace(build_parser().parse_args(["serve"]))
    assert defaults == LocalApiSettings()
    assert (defaults.host, defaults.port, defaults.responder) == ("127.0.0.1", 8780, "echo")
    assert defaults.completion_window_seconds == 86400


def serve_command(state_dir: Path, *options: str) -> list[str]:
    """`batch-pipeline serve` on a free port, as a subprocess's command line."""
    serve = [sys.executable, "-m", "batch_pipeline.cli", "serve", "--port", "0"]
    return [*serve, "--state-dir", str(state_dir), *options]


@contextlib.contextmanager
def serving(state_dir: Path, *options: str) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """`batch-pipeline serve` running as a subprocess, and its base URL from its banner."""
    process = subprocess.Popen(
        serve_command(state_dir, *options),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        banner = process.stdout.readline()
        yield process, next(word for word in banner.split() if word.startswith("http://"))
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest.mark.slow
def test_serve_runs_until_sigterm(tmp_path: Path) -> None:
    with serving(tmp_path / "state", "--log-level", "warning") as (process, url):
        assert url.startswith("http://127.0.0.1:") and url.endswith("/v1")
        client = OpenAI(base_url=url, api_key="k", max_retries=0)
        assert wait_for(client, submit(client, [chat_line("a", "hi")]).id).status == "completed"
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0
    assert (tmp_path / "state" / "batches").is_dir()


@pytest.mark.slow
@pytest.mark.parametrize("repeat", range(3))
def test_serve_stopped_as_soon_as_it_is_announced_exits_cleanly(tmp_path: Path, repeat) -> None:
    """A supervisor may stop the service the moment its banner appears: it must neither
    ignore that SIGTERM nor die of it."""
    with serving(tmp_path / "state", "--log-level", "warning") as (process, _url):
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0


@pytest.mark.slow
def test_serve_refuses_a_missing_key_variable(tmp_path: Path) -> None:
    result = subprocess.run(
        serve_command(tmp_path, "--api-key-env", "SURELY_NOT_SET_BATCH_KEY"),
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 2
    assert "SURELY_NOT_SET_BATCH_KEY" in result.stderr


def test_fault_trigger_flags(tmp_path: Path) -> None:
    def settings(*flags: str) -> LocalApiSettings:
        return LocalApiSettings.from_namespace(build_parser().parse_args(["serve", *flags]))

    proxy = ("--responder", "proxy", "--upstream-url", "http://127.0.0.1:1")
    assert settings().triggers_faults is True  # echo: rehearsals by default
    assert settings(*proxy).triggers_faults is False  # proxy: the text is real
    assert settings(*proxy, "--fault-triggers").triggers_faults is True
    assert settings("--no-fault-triggers").triggers_faults is False


@pytest.mark.slow
def test_serve_refuses_an_open_host_without_a_key(tmp_path: Path) -> None:
    result = subprocess.run(
        serve_command(
            tmp_path,
            "--host",
            "0.0.0.0",
            "--responder",
            "proxy",
            "--upstream-url",
            "http://127.0.0.1:1",
        ),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "--insecure-no-auth" in result.stderr and "--api-key-env" in result.stderr


@pytest.mark.slow
def test_serve_open_to_all_only_when_told_and_then_warns(tmp_path: Path) -> None:
    options = ("--host", "0.0.0.0", "--insecure-no-auth")
    with serving(tmp_path / "state", *options) as (process, url):
        files = url.replace("0.0.0.0", "127.0.0.1") + "/files"
        wait_until(lambda: httpx2.get(files).status_code == 200)  # served, with no key
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=20)
    assert "WARNING" in stderr and "without authentication" in stderr
