"""Timing and memory of benchmark cases: each run in a fresh process, medians over repetitions.

A case is a module-level function. `run_isolated` runs it in a new process forked from a
forkserver that has only imported the libraries (so no case pays their 4-5 s of import time,
and no case sees another's memory; `use_start_method("spawn")` gives each a new interpreter
instead); the case's own process reads its wall time and its peak RSS
(`getrusage(RUSAGE_SELF).ru_maxrss`) and sends them back. `run_command` does the same for
a command line (the CLI, the plain baseline script), reading the child's peak RSS from
`os.wait4`. `Measurement` keeps the samples of one case: median seconds and median peak RSS.
"""

from __future__ import annotations

import multiprocessing
import os
import resource
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

MB = 1024 * 1024
# Imported once by the forkserver: every case starts from this state, as a fresh process would.
PRELOAD = (
    "numpy",
    "orjson",
    "pandas",
    "pyarrow",
    "pyarrow.parquet",
    "pyarrow.dataset",
    "openai",
    "httpx2",
    "batch_pipeline.core.pipeline",
    "batch_pipeline.core.backends.openai",
)
_CONTEXT: Any = None


@dataclass(frozen=True)
class Sample:
    """One run of a case: wall seconds, peak RSS of its process, its RSS when the case began."""

    seconds: float
    peak_rss: int
    start_rss: int = 0
    info: Mapping[str, Any] = field(default_factory=dict)

    @property
    def growth(self) -> int:
        """Peak RSS above what the process held when the case began (libraries, data setup)."""
        return max(self.peak_rss - self.start_rss, 0)


@dataclass
class Measurement:
    """The samples of one case."""

    name: str
    samples: list[Sample] = field(default_factory=list)

    def add(self, sample: Sample) -> Sample:
        self.samples.append(sample)
        return sample

    @property
    def seconds(self) -> float:
        return statistics.median(s.seconds for s in self.samples)

    @property
    def peak_rss(self) -> int:
        return int(statistics.median(s.peak_rss for s in self.samples))

    @property
    def growth(self) -> int:
        return int(statistics.median(s.growth for s in self.samples))

    def info(self, key: str) -> Any:
        """A value the case reported (the median when numeric, else the last one)."""
        values = [s.info[key] for s in self.samples if key in s.info]
        if values and all(isinstance(v, int | float) for v in values):
            return statistics.median(values)
        return values[-1] if values else None


def peak_rss_bytes() -> int:
    """This process's peak resident set size so far."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def cpu_seconds() -> float:
    """CPU time this process has used so far, all its threads (user + system): a machine
    shared with other work stretches wall times far more than this."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def current_rss_bytes() -> int:
    """This process's resident set size now."""
    import psutil

    return int(psutil.Process().memory_info().rss)


def process_peak_rss(pid: int) -> int:
    """Another process's peak RSS as the kernel records it (VmHWM; Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmHWM for process {pid}")


def reset_peak_rss(pid: int) -> None:
    """Start another process's peak RSS afresh from its current RSS (Linux)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def use_start_method(method: str) -> None:
    """Run cases in processes started this way: "forkserver" (the default: forked from a
    server that has only imported the libraries) or "spawn" (a new interpreter each)."""
    global _CONTEXT
    _CONTEXT = multiprocessing.get_context(method)
    if method == "forkserver":
        _CONTEXT.set_forkserver_preload(list(PRELOAD))


def _context() -> Any:
    if _CONTEXT is None:
        methods = multiprocessing.get_all_start_methods()
        use_start_method("forkserver" if "forkserver" in methods else "spawn")
    return _CONTEXT


def _child(conn: Connection, case: Callable[..., Any], args: tuple[Any, ...]) -> None:
    try:
        start_rss = current_rss_bytes()
        started, cpu_started = time.perf_counter(), cpu_seconds()
        info = case(*args) or {}
        seconds = time.perf_counter() - started
        info = {"cpu_seconds": cpu_seconds() - cpu_started, **info}
        seconds = float(info.pop("seconds", seconds))
        conn.send(("ok", Sample(seconds, peak_rss_bytes(), start_rss, info)))
    except BaseException:
        conn.send(("error", traceback.format_exc()))
    finally:
        conn.close()


def run_isolated(case: Callable[..., Mapping[str, Any] | None], *args: Any) -> Sample:
    """Run `case(*args)` in a fresh process; its wall time, peak RSS and the dict it returns.

    A case may return `seconds` to report the time of its timed part only (its setup then
    runs before the clock starts, in the same process).
    """
    context = _context()
    receiver, sender = context.Pipe(duplex=False)
    process = context.Process(target=_child, args=(sender, case, args))
    process.start()
    sender.close()
    try:
        status, payload = receiver.recv()
    except EOFError:
        process.join()
        raise RuntimeError(f"{case.__name__} died (exit code {process.exitcode})") from None
    finally:
        receiver.close()
    process.join()
    if status != "ok":
        raise RuntimeError(f"{case.__name__} failed:\n{payload}")
    return payload


def run_command(
    command: Sequence[str],
    *,
    log_path: Path,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> Sample:
    """Run a command to its end: wall seconds, the child's own peak RSS and CPU seconds (user +
    system, info `cpu_seconds`; from wait4).

    Its output goes to `log_path`; a non-zero exit raises with the log's tail.
    """
    with log_path.open("wb") as log:
        started = time.perf_counter()
        process = subprocess.Popen(
            list(command), stdout=log, stderr=subprocess.STDOUT, env=env, cwd=cwd
        )
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        tail = log_path.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"{' '.join(command)} exited with {process.returncode}:\n{tail}")
    peak = usage.ru_maxrss if sys.platform == "darwin" else usage.ru_maxrss * 1024
    return Sample(seconds, peak, info={"cpu_seconds": usage.ru_utime + usage.ru_stime})


def repeat(
    measurements: Sequence[Measurement],
    run_one: Callable[[Measurement, int], Sample],
    repetitions: int,
    *,
    budget_seconds: float | None = None,
    after: Callable[[Measurement, int], None] | None = None,
) -> None:
    """Run every case `repetitions` times, interleaved (A B A B ...) so drift hits all alike.

    With `budget_seconds`, no further round starts once it would likely end past the budget
    (the first round always runs; the table then says how many runs a median is of).
    """
    started = time.perf_counter()
    for repetition in range(repetitions):
        elapsed = time.perf_counter() - started
        if (
            repetition
            and budget_seconds
            and elapsed * (repetition + 1) / repetition > budget_seconds
        ):
            return
        for measurement in measurements:
            measurement.add(run_one(measurement, repetition))
            if after is not None:
                after(measurement, repetition)
