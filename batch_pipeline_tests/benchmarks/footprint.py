"""Benchmark 6: what a settled N-row day leaves in the storage root, with
`output.keep_intermediates_days: 0` (against its results file) and with the default 7 days
(its intermediates against what the release before kept of the same day for good: the JSONL
shards and their ids files, the downloaded output and error files, and the outcome files).

The day goes through the product's own path (build, submit, one poll collecting every shard,
the results), answered by the results benchmark's provider over pre-generated files.
"""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path
from typing import Any

from batch_pipeline.core.layout import RESULTS, intermediate_generation
from batch_pipeline.core.pipeline import load_pipeline
from batch_pipeline.core.storage import StorageRoot
from batch_pipeline_tests.benchmarks import fixtures
from batch_pipeline_tests.benchmarks.measure import run_isolated
from batch_pipeline_tests.benchmarks.report import Config, Row
from batch_pipeline_tests.benchmarks.results import FileBackend, link_tree, setup_case

NAME = "footprint"


def kind_of(key: str) -> str:
    """What a stored file is, for the footprint's breakdown."""
    if key.startswith(f"{RESULTS}/"):
        return "results"
    if intermediate_generation(key) is None:
        return "kept"  # manifests, rejected rows, the ledger
    if key.endswith(".ids.parquet"):
        return "ids"
    if key.endswith("outcomes.parquet"):
        return "outcomes"
    return "shards" if key.startswith("requests/") else "downloads"


def footprint(storage: StorageRoot) -> Counter[str]:
    """Bytes of every kind of file under the storage root."""
    sizes: Counter[str] = Counter()
    for key in storage.list():
        sizes[kind_of(key)] += storage.size(key)
    return sizes


def settle_case(spec_path: Path, files: Path) -> dict[str, Any]:
    """Collect every shard and write the results; what the storage root then holds."""
    with load_pipeline(spec_path, backend=FileBackend(files)) as pipeline:
        report = pipeline.poll(time_budget_seconds=3_600)
        if report.errors:
            raise RuntimeError(f"poll errors: {report.errors}")
        summary = pipeline.collect_results(fixtures.DAY)
        sizes = footprint(pipeline.storage)
    downloaded = sum(path.stat().st_size for path in files.glob("*.jsonl"))
    return {
        "rows": summary.rows,
        "sizes": dict(sizes),
        "downloaded": downloaded,
    }


def _mb(size: float) -> str:
    return f"{size / 1e6:,.1f} MB"


def run(config: Config) -> list[Row]:
    """Both settings on the same prepared day (built and submitted once, untimed)."""
    base = config.workdir / NAME
    source = fixtures.source_path(config.workdir, config.rows)
    template = fixtures.write_spec(
        base / "template.yaml", fixtures.spec_dict(source, base / "template", max_attempts=1)
    )
    run_isolated(setup_case, template, base / "files")
    samples = {}
    # The same day, collected once with each setting (sizes do not vary: one run each).
    for keep in (0, 7):
        spec = fixtures.spec_dict(source, base / "run", max_attempts=1)
        spec["output"]["keep_intermediates_days"] = keep
        link_tree(base / "template", base / "run")
        samples[keep] = run_isolated(
            settle_case, fixtures.write_spec(base / f"keep-{keep}.yaml", spec), base / "files"
        )
    shutil.rmtree(base, ignore_errors=True)
    per_million = 1_000_000 / config.rows
    label = f"footprint of a settled {config.rows:,}-row day"

    bare = Counter(samples[0].info["sizes"])
    left = sum(bare.values())
    bare_ratio = left / bare["results"]

    kept = Counter(samples[7].info["sizes"])
    shards = kept["shards"] + kept["ids"]
    intermediates = shards + kept["outcomes"] + kept["downloads"]
    downloaded = samples[7].info["downloaded"]
    earlier = shards + downloaded + kept["outcomes"]
    kept_ratio = intermediates / earlier
    return [
        Row(
            f"{label}, keep_intermediates_days: 0",
            f"{_mb(left)} left ({_mb(left * per_million)} a million rows): results "
            f"{_mb(bare['results'])}, manifests + rejected + ledger {_mb(bare['kept'])}",
            f"results file {_mb(bare['results'])}",
            bare_ratio,
            "≤ 1.5x the results file",
            bare_ratio <= 1.5,
            samples[0].peak_rss,
            left,
        ),
        Row(
            f"{label}, intermediates kept 7 days (default)",
            f"{_mb(intermediates)} ({_mb(intermediates * per_million)} a million rows): shards "
            f"{_mb(shards)}, outcomes {_mb(kept['outcomes'])}, "
            f"downloads {_mb(kept['downloads'])}",
            f"the release before: at least {_mb(earlier)} (the same and downloads "
            f"{_mb(downloaded)}; its outcome files were larger)",
            kept_ratio,
            "≤ 0.5x the release before",
            kept_ratio <= 0.5,
            samples[7].peak_rss,
            intermediates,
        ),
    ]
