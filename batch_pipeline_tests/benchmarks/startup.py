"""Benchmark 9: start-up. `batch-pipeline --help`; `batch-pipeline run` from its launch to
its first HTTP request (a small day against a socket that only notes when it is reached);
and importing the code location `workspace.yaml` loads against `import dagster` alone, which
Dagster pays in every run's process. Each is a fresh command, timed whole."""

from __future__ import annotations

import resource
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from batch_pipeline_tests.benchmarks import fixtures
from batch_pipeline_tests.benchmarks.end_to_end import cli_command
from batch_pipeline_tests.benchmarks.report import Config, Row, seconds_text

NAME = "startup"
HELP_TARGET = 0.15
FIRST_REQUEST_TARGET = 0.8
CODE_LOCATION_EXTRA_TARGET = 0.5
RUN_ROWS = 100
CODE_LOCATION = "batch_pipeline.definitions"  # what workspace.yaml loads
# What `run` imports before its first request: the SDK, Arrow's Parquet, dataset and compute
# modules (`pyarrow.dataset` imports pandas as it loads: it converts a Python value then, and
# pyarrow imports pandas the first time it converts one), SQLAlchemy for the ledger, and
# pydantic and YAML for the spec.
# Their import alone is the floor of the run's start-up, whatever the machine's load.
RUN_LIBRARIES = (
    "openai, pyarrow.parquet, pyarrow.dataset, pyarrow.compute, sqlalchemy, pydantic, yaml"
)
FIRST_REQUEST_TIMEOUT_SECONDS = 60.0


def children_cpu_seconds() -> float:
    """CPU time (user + system) of this process's finished children so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed_command(command: Sequence[str]) -> float:
    """Wall seconds of a command run to its end (it must succeed)."""
    started = time.perf_counter()
    subprocess.run(list(command), check=True, capture_output=True, env=fixtures.command_env())
    return time.perf_counter() - started


def first_request_seconds(workdir: Path, source: Path, attempt: int) -> float:
    """Seconds from launching `batch-pipeline run` to its first connection to the Batch API."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(FIRST_REQUEST_TIMEOUT_SECONDS)
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/v1"
        out = fixtures.fresh_dir(workdir / f"run-{attempt}")
        spec = fixtures.write_spec(
            out / "spec.yaml", fixtures.spec_dict(source, out / "out", base_url=url)
        )
        command = [*cli_command(), "run", str(spec), "--partition", fixtures.DAY]
        started = time.perf_counter()
        process = subprocess.Popen(
            command,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=fixtures.command_env(),
        )
        try:
            connection, _ = listener.accept()
            seconds = time.perf_counter() - started
            connection.close()
        finally:
            process.kill()
            process.wait()
    return seconds


def run(config: Config) -> list[Row]:
    """Fresh processes, every case once a round (so load drift hits all alike); medians of at
    least 5 rounds (1 in smoke)."""
    repetitions = config.repetitions if config.smoke else max(config.repetitions, 5)
    fixtures.compile_package()
    python = sys.executable
    source = fixtures.source_path(config.workdir, RUN_ROWS)
    root = fixtures.fresh_dir(config.workdir / NAME)
    cases: dict[str, Callable[[int], float]] = {
        "interpreter": lambda _: timed_command([python, "-c", "pass"]),
        "help": lambda _: timed_command([*cli_command(), "--help"]),
        "libraries": lambda _: timed_command([python, "-c", f"import {RUN_LIBRARIES}"]),
        "first request": lambda attempt: first_request_seconds(root, source, attempt),
        "dagster": lambda _: timed_command([python, "-c", "import dagster"]),
        "location": lambda _: timed_command([python, "-c", f"import {CODE_LOCATION}"]),
    }
    samples: dict[str, list[float]] = {name: [] for name in cases}
    cpu_samples: dict[str, list[float]] = {name: [] for name in cases}  # a load stretches less
    for attempt in range(repetitions):
        for name, measure in cases.items():
            cpu_started = children_cpu_seconds()
            samples[name].append(measure(attempt))
            cpu_samples[name].append(children_cpu_seconds() - cpu_started)
    interpreter, help_seconds, libraries, first, dagster, location = (
        statistics.median(samples[name]) for name in cases
    )
    cpu = {name: f" (CPU {seconds_text(statistics.median(cpu_samples[name]))})" for name in cases}
    extra = location - dagster
    return [
        Row(
            "start-up, batch-pipeline --help",
            seconds_text(help_seconds),
            f"python -c pass {seconds_text(interpreter)}",
            help_seconds / interpreter,
            f"≤ {HELP_TARGET} s",
            help_seconds <= HELP_TARGET,
            None,
            help_seconds,
        ),
        Row(
            f"start-up, batch-pipeline run to its first HTTP request ({RUN_ROWS} rows)",
            seconds_text(first) + cpu["first request"],
            f"import of its libraries alone {seconds_text(libraries)}{cpu['libraries']}",
            first / libraries,
            f"≤ {FIRST_REQUEST_TARGET} s",
            first <= FIRST_REQUEST_TARGET,
            None,
            first,
        ),
        Row(
            f"start-up, import of the code location ({CODE_LOCATION})",
            f"{seconds_text(location)} (+{seconds_text(extra)})",
            f"import dagster {seconds_text(dagster)}",
            location / dagster,
            f"≤ import dagster + {CODE_LOCATION_EXTRA_TARGET} s",
            extra <= CODE_LOCATION_EXTRA_TARGET,
            None,
            location,
        ),
    ]
