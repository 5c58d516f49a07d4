"""A child process of the reliability tests: runs partitions of a pipeline end to end and, if
asked, SIGKILLs itself at one point on the way (a real kill: no `finally`, no flush, no atexit).

    python -m batch_pipeline_tests.reliability_tests.child SPEC --partition P [--partition Q]
        [--crash POINT --nth N] [--step STEP]

Points: shard_written (a request shard renamed into place, before the manifest), upload,
create (after the provider call returned), ledger_write (inside the transaction recording the
batch, before its commit), download (half of a results file written), results_write (the
results Parquet partly written). It prints `{partition: rows}` as JSON when it was not killed,
and exits 3 if the crash point was never reached.

A `--step` other than `run` does one step only, as one process among several that share no
disk: `build` the partitions' requests, `poll` once (as a sensor tick does; prints the
report), or `read` the results (prints every row's key and status, as a notebook reads them).
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import signal
import sys
from collections.abc import Callable
from typing import Any, BinaryIO

import sqlalchemy as sa

from batch_pipeline.core.backends.anthropic import AnthropicBackend
from batch_pipeline.core.backends.openai import OpenAIBackend
from batch_pipeline.core.layout import RESULTS
from batch_pipeline.core.parquet_files import AtomicParquetFile
from batch_pipeline.core.pipeline import Pipeline
from batch_pipeline.core.sharding import _FileWorker
from batch_pipeline.core.spec import PipelineSpec

EXIT_NOT_CRASHED = 3


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


class Trigger:
    """Fires on the `nth` qualifying call."""

    def __init__(self, nth: int) -> None:
        self.nth = nth
        self.calls = 0

    def hit(self) -> bool:
        self.calls += 1
        return self.calls == self.nth


def kill_after(
    owner: type, name: str, trigger: Trigger, when: Callable[..., bool] = lambda *_, **__: True
) -> None:
    """Replace `owner.name` by the real call followed by a kill on the trigger's call."""
    real = getattr(owner, name)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        result = real(*args, **kwargs)
        if when(*args, **kwargs) and trigger.hit():
            die()
        return result

    setattr(owner, name, wrapper)


def kill_mid_download(trigger: Trigger) -> None:
    real = OpenAIBackend.download_file

    def half_then_die(self: OpenAIBackend, file_id: str, dest: BinaryIO) -> int:
        buffer = io.BytesIO()
        real(self, file_id, buffer)
        data = buffer.getvalue()
        dest.write(data[: len(data) // 2])
        dest.flush()
        if trigger.hit():
            die()
        dest.write(data[len(data) // 2 :])
        return len(data)

    OpenAIBackend.download_file = half_then_die  # type: ignore[method-assign]


def kill_inside_batch_insert(trigger: Trigger) -> None:
    @sa.event.listens_for(sa.engine.Engine, "after_cursor_execute")
    def _after(_conn: Any, _cursor: Any, statement: str, *_rest: Any) -> None:
        if statement.lstrip().upper().startswith("INSERT INTO BP_BATCHES") and trigger.hit():
            die()


def install(point: str, nth: int) -> Trigger:
    trigger = Trigger(nth)
    if point == "shard_written":
        kill_after(_FileWorker, "_finish", trigger)
    elif point in ("upload", "create"):
        method = f"{point}_file" if point == "upload" else "create_batch"
        for backend in (OpenAIBackend, AnthropicBackend):  # the one the spec uses is called
            kill_after(backend, method, trigger)
    elif point == "ledger_write":
        kill_inside_batch_insert(trigger)
    elif point == "download":
        kill_mid_download(trigger)
    elif point == "results_write":
        kill_after(
            AtomicParquetFile,
            "write",
            trigger,
            when=lambda self, *_: self.key.startswith(f"{RESULTS}/"),
        )
    elif point != "none":
        raise SystemExit(f"unknown crash point {point!r}")
    return trigger


def run(pipeline: Pipeline, args: argparse.Namespace) -> dict[str, int]:
    """Each partition end to end; its rows."""
    rows = {}
    for partition in args.partition:
        summary = pipeline.run(partition, poll_interval=0.2, timeout=args.timeout)
        rows[partition] = summary.rows
    return rows


def build(pipeline: Pipeline, args: argparse.Namespace) -> dict[str, int]:
    """Each partition's requests; the requests built."""
    return {day: pipeline.build_requests(day).requests for day in args.partition}


def poll(pipeline: Pipeline, args: argparse.Namespace) -> dict[str, Any]:
    """One bounded poll pass; what it found and which partitions are settled."""
    report = pipeline.poll(time_budget_seconds=args.timeout)
    settled = [str(s.partition) for s in pipeline.status() if s.state.is_settled]
    return {
        "in_flight": report.in_flight,
        "queued": report.queued,
        "errors": report.errors,
        "settled": settled,
    }


def read(pipeline: Pipeline, args: argparse.Namespace) -> list[list[Any]]:
    """The partitions' results as a reader sees them: [day, key, status] per row."""
    frame = pipeline.read_results()
    frame = frame[frame["partition"].astype(str).isin(args.partition)]
    columns = ["partition", pipeline.spec.source.key, "status"]
    rows = frame[columns].itertuples(index=False)
    return [[str(day), str(key), status] for day, key, status in rows]


STEPS: dict[str, Callable[[Pipeline, argparse.Namespace], Any]] = {
    "run": run,
    "build": build,
    "poll": poll,
    "read": read,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("spec")
    parser.add_argument("--partition", action="append", default=[])
    parser.add_argument("--crash", default="none")
    parser.add_argument("--nth", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=90.0)
    parser.add_argument("--step", choices=sorted(STEPS), default="run")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG, stream=sys.stderr)  # every line is scanned
    trigger = install(args.crash, args.nth)
    with Pipeline(PipelineSpec.from_yaml(args.spec)) as pipeline:
        print(json.dumps(STEPS[args.step](pipeline, args)))
    if args.crash != "none":
        print(f"crash point {args.crash} reached {trigger.calls} times", file=sys.stderr)
        return EXIT_NOT_CRASHED
    return 0


if __name__ == "__main__":
    sys.exit(main())
