"""`python -m batch_pipeline_tests.benchmarks [--rows N] [--only NAME] [--smoke]`."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from batch_pipeline_tests.benchmarks import BENCHMARKS
from batch_pipeline_tests.benchmarks.measure import use_start_method
from batch_pipeline_tests.benchmarks.report import (
    FULL_ROWS,
    LEGEND,
    Config,
    Row,
    format_table,
    write_json,
)

SMOKE_ROWS = 2_000


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m batch_pipeline_tests.benchmarks",
        description="Benchmarks of batch_pipeline against naive baselines, in one table.",
    )
    parser.add_argument(
        "--rows",
        type=int,
        default=None,
        help=f"Source rows N of the shards and results benchmarks (default {FULL_ROWS:,}); "
        "memory is compared at N and 4N (shards), N/4 and N (results); end to end uses "
        "min(N, 100,000).",
    )
    parser.add_argument(
        "--only",
        action="append",
        choices=sorted(BENCHMARKS),
        metavar="NAME",
        help=f"Run only this benchmark (repeatable): {', '.join(BENCHMARKS)}.",
    )
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="Tiny sizes, one repetition: checks every benchmark still runs.",
    )
    parser.add_argument(
        "--repetitions",
        type=int,
        default=None,
        help="Runs of each case; the table shows medians (default 3, smoke 1).",
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="Where data and outputs go (default: a temporary folder, removed).",
    )
    parser.add_argument("--json", type=Path, default=None, help="Also write the rows as JSON.")
    parser.add_argument(
        "--start-method",
        choices=("forkserver", "spawn"),
        default="forkserver",
        help="How each measured case's fresh process starts (default forkserver: forked from a "
        "process that has only imported the libraries; spawn: a new interpreter each).",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    use_start_method(args.start_method)
    rows = args.rows or (SMOKE_ROWS if args.smoke else FULL_ROWS)
    repetitions = args.repetitions or (1 if args.smoke else 3)
    names = args.only or list(BENCHMARKS)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bp-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    config = Config(rows=rows, workdir=workdir, repetitions=repetitions, smoke=args.smoke)
    started = time.perf_counter()
    table: list[Row] = []
    try:
        for name in names:
            print(f"running {name} ...", file=sys.stderr, flush=True)
            begun = time.perf_counter()
            table.extend(replace(row, group=name) for row in BENCHMARKS[name](config))
            print(
                f"  {name} done in {time.perf_counter() - begun:.1f} s", file=sys.stderr, flush=True
            )
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    print(format_table(table))
    print(f"\n{LEGEND}")
    load = ", ".join(f"{value:.1f}" for value in os.getloadavg())
    print(
        f"\n{rows:,} rows; medians of {repetitions} run{'s' if repetitions > 1 else ''}; "
        f"load average {load}; "
        f"{time.perf_counter() - started:.0f} s in all"
    )
    if args.json is not None:
        write_json(table, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
