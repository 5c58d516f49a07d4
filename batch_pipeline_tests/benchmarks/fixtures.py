"""What the benchmarks share: a deterministic source table, pipeline specs, the local Batch API
in its own process, and an SDK client that counts its HTTP requests."""

from __future__ import annotations

import compileall
import contextlib
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
import numpy as np
import openai
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import yaml

DAY = "2026-01-15"
MODEL = "gpt-4o-mini"
ENDPOINT = "/v1/chat/completions"
SYSTEM = "You label support tickets: billing, delivery, product, account or other."
PROMPT = "Subject: {subject}\n\n{body}"
PARAMS = {"max_tokens": 50, "temperature": 0}
KEY = "ticket_id"
TEXT_COLUMNS = ("subject", "body")
MAX_REQUESTS_PER_FILE = 50_000
API_KEY = "local-no-key"

_POOL = 8_192
_CHUNK_ROWS = 262_144
_VOCABULARY = (
    "order parcel invoice refund delivery late broken screen account login password charge "
    "twice subscription cancel upgrade warranty courier address tracking number missing item "
    "colour size exchange voucher discount receipt payment card declined app crash update "
    'support agent "urgent" café naïve façade Zürich 東京 résumé'
)
_WORDS = _VOCABULARY.split()


def _texts(rng: random.Random, count: int, words: tuple[int, int], newline: float) -> pa.Array:
    """`count` texts of random words; some hold a newline (JSON escapes must happen)."""
    texts = []
    for _ in range(count):
        picked = rng.choices(_WORDS, k=rng.randint(*words))
        if rng.random() < newline:
            picked.insert(len(picked) // 2, "\n")
        texts.append(" ".join(picked).capitalize() + ".")
    return pa.array(texts, pa.string())


def source_path(workdir: Path, rows: int) -> Path:
    """A source table of `rows` support tickets on `DAY` (two text columns, ~300 characters a
    row), written once per size and reused; generated deterministically."""
    path = workdir / "data" / f"tickets-{rows}.parquet"
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = random.Random(20260115)
    subjects = _texts(rng, _POOL, (6, 9), 0.0)
    bodies = _texts(rng, _POOL, (30, 40), 0.2)
    day_start = np.datetime64(DAY, "s")
    schema = pa.schema(
        [
            (KEY, pa.string()),
            ("created_at", pa.timestamp("s")),
            ("subject", pa.string()),
            ("body", pa.string()),
        ]
    )
    tmp = path.with_suffix(".tmp")
    with pq.ParquetWriter(tmp, schema) as writer:
        for start in range(0, rows, _CHUNK_ROWS):
            numbers = np.arange(start, min(start + _CHUNK_ROWS, rows))
            picks = np.random.default_rng(start).integers(0, _POOL, (2, len(numbers)))
            text = pc.cast(pa.array(numbers), pa.string())
            writer.write_table(
                pa.table(
                    [
                        pc.binary_join_element_wise("T", pc.utf8_lpad(text, 9, "0"), ""),
                        pa.array(day_start + (numbers % 86_400), pa.timestamp("s")),
                        subjects.take(pa.array(picks[0])),
                        pc.binary_join_element_wise(
                            "Ticket #", text, ": ", bodies.take(pa.array(picks[1])), ""
                        ),
                    ],
                    schema=schema,
                )
            )
    tmp.rename(path)
    return path


def spec_dict(
    source: Path,
    out_dir: Path,
    *,
    base_url: str | None = None,
    max_attempts: int = 3,
    **limits: Any,
) -> dict[str, Any]:
    """The benchmarks' pipeline: label each ticket, through the local Batch API."""
    return {
        "name": "bench",
        "source": {"path": str(source), "key": KEY, "partition_column": "created_at"},
        "request": {
            "endpoint": ENDPOINT,
            "model": MODEL,
            "system": SYSTEM,
            "prompt": PROMPT,
            "params": PARAMS,
        },
        "backend": {"provider": "local", **({"base_url": base_url} if base_url else {})},
        "limits": {"max_requests_per_file": MAX_REQUESTS_PER_FILE, **limits},
        "retry": {"max_attempts": max_attempts},
        "output": {"dir": str(out_dir)},
    }


def write_spec(path: Path, spec: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def fresh_dir(path: Path) -> Path:
    """`path`, emptied."""
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


# -- the local Batch API in its own process ---------------------------------------------------

_URL_RE = re.compile(r"on (http://\S+/v1)")
START_TIMEOUT_SECONDS = 60.0


@dataclass(frozen=True)
class Service:
    """A running `batch-pipeline serve`."""

    url: str
    pid: int


@contextlib.contextmanager
def local_service(state_dir: Path, *options: str, stop_seconds: float = 60.0) -> Iterator[Service]:
    """`batch-pipeline serve --port 0` in a child process (its output in `state_dir`.log),
    stopped on exit: SIGTERM, then SIGKILL after `stop_seconds` (its state is thrown away)."""
    fresh_dir(state_dir)
    log_path = state_dir.with_suffix(".log")
    command = [sys.executable, "-m", "batch_pipeline.cli", "serve", "--port", "0"]
    command += ["--state-dir", str(state_dir), "--log-level", "warning", *options]
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=command_env())
    try:
        yield Service(_wait_for_url(process, log_path), process.pid)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(stop_seconds)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait_for_url(process: subprocess.Popen[bytes], log_path: Path) -> str:
    """The base URL the server prints once it listens."""
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        match = _URL_RE.search(log_path.read_text(errors="replace"))
        if match is not None:
            return match.group(1)
        if process.poll() is not None:
            break
        time.sleep(0.05)
    raise RuntimeError(f"batch-pipeline serve did not start:\n{log_path.read_text()[-3000:]}")


REPO_ROOT = Path(__file__).resolve().parents[2]


def compile_package() -> None:
    """Write the package's bytecode, as installing it does: the commands timed then start as
    an installed package's do, even where PYTHONDONTWRITEBYTECODE keeps Python from caching
    the bytecode of what it imports (it still reads what is there)."""
    import batch_pipeline

    compileall.compile_dir(Path(batch_pipeline.__file__).parent, quiet=1)


def command_env() -> dict[str, str]:
    """The environment of child commands: this one's, without a real API key, with the repo
    on the path (so `python -m batch_pipeline_tests...` works from any folder)."""
    env = dict(os.environ)
    env.pop("OPENAI_API_KEY", None)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    return env


# -- an SDK client that counts requests --------------------------------------------------------


class CountingTransport(httpx2.HTTPTransport):
    """An HTTP transport that counts the requests it sends, by method and path."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        self.calls.append(f"{request.method} {request.url.path}")
        return super().handle_request(request)


def counting_client(
    base_url: str, *, timeout: float = 120.0
) -> tuple[openai.OpenAI, CountingTransport]:
    """An SDK client for the local service and the transport counting its HTTP requests."""
    transport = CountingTransport()
    client = openai.OpenAI(
        base_url=base_url,
        api_key=API_KEY,
        max_retries=0,
        timeout=timeout,
        http_client=httpx2.Client(transport=transport, timeout=timeout),
    )
    return client, transport


def plain_request(partition: str, row: dict[str, Any]) -> dict[str, Any]:
    """One request line as a hand-written script builds it: the baselines' request."""
    return {
        "custom_id": f"{partition}:{row[KEY]}",
        "method": "POST",
        "url": ENDPOINT,
        "body": {
            "model": MODEL,
            "messages": [
                {"role": "system", "content": SYSTEM},
                {"role": "user", "content": PROMPT.format(**row)},
            ],
            **PARAMS,
        },
    }
