"""Benchmark 5: one partition end to end on the local Batch API, `batch-pipeline run` against
a plain openai-SDK script doing upload, create, poll, download and join for the same rows
(`plain_script.py`), at 100,000 rows and at 20,000 (where start-up weighs more). Both are
timed as whole commands, with the same poll interval, against the same server, alternating."""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pandas as pd

from batch_pipeline.core.spec import PipelineSpec
from batch_pipeline_tests.benchmarks import fixtures
from batch_pipeline_tests.benchmarks.measure import Measurement, Sample, repeat, run_command
from batch_pipeline_tests.benchmarks.report import (
    Config,
    Row,
    compared_counts,
    runs_text,
    seconds_text,
)
from batch_pipeline_tests.benchmarks.service import wait_for_workers

NAME = "end_to_end"
# Rows of a day -> the most `batch-pipeline run` may take, in times the plain script's.
TARGET_RATIOS = {20_000: 1.3, 100_000: 1.2}


def cli_command() -> list[str]:
    """The installed `batch-pipeline` console script (or the module, if it is not there)."""
    script = Path(sys.executable).with_name("batch-pipeline")
    return [str(script)] if script.exists() else [sys.executable, "-m", "batch_pipeline.cli"]


def result_counts(results: Path) -> dict[str, Any]:
    """The rows of a results Parquet (a file or a partition folder), and how many succeeded."""
    table = pd.read_parquet(results, columns=["status"])
    return {"rows": len(table), "succeeded": int((table["status"] == "succeeded").sum())}


def cpu_text(measurement: Measurement) -> str:
    """The median CPU time of a command's runs, which a loaded machine stretches far less than
    their wall time."""
    return f" (CPU {seconds_text(measurement.info('cpu_seconds'))})"


def run(config: Config) -> list[Row]:
    """Each size on its own server; `config.e2e_rows` is the larger size (smaller in smoke)."""
    large = config.e2e_rows
    fixtures.compile_package()
    small = min(min(TARGET_RATIOS), large // 5)
    return [
        compare(config, rows, TARGET_RATIOS.get(rows, max(TARGET_RATIOS.values())))
        for rows in (small, large)
    ]


def compare(config: Config, rows: int, target: float) -> Row:
    """`batch-pipeline run` and the plain script on one day of `rows` rows."""
    root = fixtures.fresh_dir(config.workdir / NAME / str(rows))
    source = fixtures.source_path(config.workdir, rows)
    interval = str(config.poll_interval)
    product, plain = Measurement("batch-pipeline run"), Measurement("plain script")
    env = fixtures.command_env()
    with fixtures.local_service(root / "service") as service:
        # Its worker processes (one a core) load the tokenizer as it starts. Waited for
        # untimed: else the first case timed, always the product, pays for that start-up.
        if (workers := os.cpu_count() or 1) > 1:
            wait_for_workers(service.pid, workers)

        def one(measurement: Measurement, repetition: int) -> Sample:
            out = fixtures.fresh_dir(root / f"{measurement is product}-{repetition}")
            if measurement is product:
                spec = fixtures.write_spec(
                    out / "spec.yaml", fixtures.spec_dict(source, out / "out", base_url=service.url)
                )
                results = PipelineSpec.from_yaml(spec).pipeline_dir / "results"
                results /= f"partition={fixtures.DAY}"
                command = [
                    *cli_command(),
                    "run",
                    str(spec),
                    "--partition",
                    fixtures.DAY,
                    "--poll-interval",
                    interval,
                ]
            else:
                results = out / "results.parquet"
                command = [
                    sys.executable,
                    "-m",
                    "batch_pipeline_tests.benchmarks.plain_script",
                    str(source),
                    str(out),
                    "--base-url",
                    service.url,
                    "--poll-interval",
                    interval,
                ]
            sample = run_command(command, log_path=root / f"{out.name}.log", env=env)
            sample = replace(sample, info={**sample.info, **result_counts(results)})
            shutil.rmtree(out, ignore_errors=True)
            return sample

        budget = config.budget(NAME)
        # Each size gets its share of the budget by its rows (the keys are the sizes).
        share = None if budget is None else budget * rows / sum(TARGET_RATIOS)
        repeat([product, plain], one, config.repetitions, budget_seconds=share)
    ratio = product.seconds / plain.seconds
    counts = compared_counts({"rows": rows}, product, plain, ["rows", "succeeded"])
    return Row(
        f"end to end, {rows:,} rows, poll every {interval} s",
        f"batch-pipeline run {seconds_text(product.seconds)}{runs_text(product, config)}"
        f"{cpu_text(product)}",
        f"plain SDK script {seconds_text(plain.seconds)}{runs_text(plain, config)}"
        f"{cpu_text(plain)}",
        ratio,
        f"≤ {target}x the script",
        ratio <= target,
        product.peak_rss,
        product.seconds,
        counts=counts,
    )
