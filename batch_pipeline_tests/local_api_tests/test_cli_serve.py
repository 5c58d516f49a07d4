"""`batch-pipeline serve`: flags map onto LocalApiSettings; the command serves until SIGTERM."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

from openai import OpenAI

from batch_pipeline.cli import build_parser
from batch_pipeline.local_api import LocalApiSettings
from batch_pipeline_tests.local_api_tests.helpers import chat_line, submit, wait_for


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


def test_serve_runs_until_sigterm(tmp_path: Path) -> None:
    process = subprocess.Popen(
        serve_command(tmp_path / "state", "--log-level", "warning"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        banner = process.stdout.readline()
        url = next(word for word in banner.split() if word.startswith("http://"))
        assert url.startswith("http://127.0.0.1:") and url.endswith("/v1")
        client = OpenAI(base_url=url, api_key="k", max_retries=0)
        assert wait_for(client, submit(client, [chat_line("a", "hi")]).id).status == "completed"
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert (tmp_path / "state" / "batches").is_dir()


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
