"""The benchmarks at tiny sizes, so they never rot: every benchmark runs once and prints its
rows with positive figures, and where the product is compared with a baseline both gave the
same answer, the source's. Timing targets are not asserted (the full sizes show them)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from batch_pipeline_tests.benchmarks import NAMES
from batch_pipeline_tests.benchmarks.fixtures import REPO_ROOT, command_env

pytestmark = [pytest.mark.benchmark_smoke, pytest.mark.slow]

# The smoke run takes well under a minute; the limit only stops a hung run.
TIMEOUT_SECONDS = 420
# The benchmarks that compare the product's answer with a baseline's.
ANSWERING = ("shards", "results", "end_to_end")


def test_every_benchmark_prints_its_rows_with_positive_figures(tmp_path):
    rows_path = tmp_path / "rows.json"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "batch_pipeline_tests.benchmarks",
            "--smoke",
            "--workdir",
            str(tmp_path / "work"),
            "--json",
            str(rows_path),
        ],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_SECONDS,
        env=command_env(),
        cwd=REPO_ROOT,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]

    rows = json.loads(rows_path.read_text())
    assert {row["group"] for row in rows} == set(NAMES)
    table = done.stdout.splitlines()
    header = next(i for i, line in enumerate(table) if line.startswith("| benchmark"))
    printed = [line for line in table[header + 2 :] if line.startswith("| ")]
    assert len(printed) == len(rows)
    for row, line in zip(rows, printed, strict=True):
        assert line.startswith(f"| {row['benchmark']} "), line
        assert row["value"] > 0, row
        assert row["ratio"] is None or row["ratio"] > 0, row
        assert row["peak_rss"] is None or row["peak_rss"] > 0, row
    compared = [row for row in rows if row["counts"]]
    assert {row["group"] for row in compared} == set(ANSWERING)
    for row in compared:
        counts = row["counts"]
        assert counts["product"] == counts["baseline"], row
        assert counts["product"].items() >= counts["source"].items(), row
