"""Benchmark 1: JSONL request shards from an N-row source, validation and token estimates
included (`build_partition_requests`), against the naive loop and a bare write of as many
bytes (the disk's limit). Every case reads the same Parquet source and fsyncs what it wrote."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from batch_pipeline.core.sharding import build_partition_requests
from batch_pipeline.core.spec import PipelineSpec
from batch_pipeline.core.storage import storage_for
from batch_pipeline_tests.benchmarks import fixtures
from batch_pipeline_tests.benchmarks.measure import MB, Measurement, Sample, repeat, run_isolated
from batch_pipeline_tests.benchmarks.report import (
    Config,
    Row,
    compared_counts,
    runs_text,
    seconds_text,
)

NAME = "shards"
WRITE_BLOCK = 4 * MB


def product_case(spec_path: Path, partition: str) -> dict[str, Any]:
    """The product: read, validate, estimate tokens, write shards and the manifest."""
    spec = PipelineSpec.from_yaml(spec_path)
    manifest = build_partition_requests(
        spec, partition, storage_for(spec.pipeline_dir), generation=1
    )
    return {"bytes": manifest.bytes, "requests": manifest.requests, "shards": len(manifest.shards)}


def naive_case(source: Path, out_dir: Path, partition: str) -> dict[str, Any]:
    """The naive way: a Python loop, `json.dumps` per row, `file.write`; no validation."""
    written = lines = 0
    handle = None
    for batch in pq.ParquetFile(source).iter_batches(
        columns=[fixtures.KEY, *fixtures.TEXT_COLUMNS]
    ):
        for row in batch.to_pylist():
            if lines % fixtures.MAX_REQUESTS_PER_FILE == 0:
                handle = _next_file(handle, out_dir, lines // fixtures.MAX_REQUESTS_PER_FILE)
            request = fixtures.plain_request(partition, row)
            written += handle.write(json.dumps(request) + "\n")  # type: ignore[union-attr]
            lines += 1
    _next_file(handle, out_dir, None)
    return {"bytes": written, "requests": lines}


def _next_file(handle: Any, out_dir: Path, index: int | None) -> Any:
    """Close (with fsync) the open shard file and open shard `index`, if any."""
    if handle is not None:
        handle.flush()
        os.fsync(handle.fileno())
        handle.close()
    if index is None:
        return None
    return (out_dir / f"shard-{index:05d}.jsonl").open("w", encoding="utf-8")


def bare_case(out_dir: Path, sizes: list[int]) -> dict[str, Any]:
    """The disk's limit: write files of the given sizes from one buffer, and fsync them."""
    block = memoryview(b"x" * WRITE_BLOCK)
    for index, size in enumerate(sizes):
        with (out_dir / f"shard-{index:05d}.jsonl").open("wb") as handle:
            for start in range(0, size, WRITE_BLOCK):
                handle.write(block[: min(WRITE_BLOCK, size - start)])
            handle.flush()
            os.fsync(handle.fileno())
    return {"bytes": sum(sizes)}


def _shard_sizes(total: int, count: int) -> list[int]:
    return [total // count + (1 if i < total % count else 0) for i in range(count)]


def run(config: Config) -> list[Row]:
    """Product vs naive vs bare write at N rows; the product's peak RSS at N and 4N rows."""
    root = config.workdir / NAME
    out = root / "out"
    sources = {
        rows: fixtures.source_path(config.workdir, rows)
        for rows in (config.rows, config.large_rows)
    }
    specs = {
        rows: fixtures.write_spec(
            root / f"spec-{rows}.yaml", fixtures.spec_dict(source, fixtures.fresh_dir(out))
        )
        for rows, source in sources.items()
    }
    product, naive, bare = (Measurement(n) for n in ("product", "naive", "bare"))
    large = Measurement("product-large")

    cases: dict[str, Callable[[], Sample]] = {
        "product": lambda: run_isolated(product_case, specs[config.rows], fixtures.DAY),
        "naive": lambda: run_isolated(naive_case, sources[config.rows], out, fixtures.DAY),
        "bare": lambda: run_isolated(
            bare_case, out, _shard_sizes(int(product.info("bytes")), int(product.info("shards")))
        ),
        "product-large": lambda: run_isolated(product_case, specs[config.large_rows], fixtures.DAY),
    }

    def one(measurement: Measurement, _repetition: int) -> Sample:
        fixtures.fresh_dir(out)
        return cases[measurement.name]()

    repeat(
        [product, naive, bare],
        one,
        config.repetitions,
        budget_seconds=config.budget(NAME),
        after=lambda *_: shutil.rmtree(out, ignore_errors=True),
    )
    large.add(one(large, 0))
    shutil.rmtree(out, ignore_errors=True)

    megabytes = product.info("bytes") / MB
    label = f"build shards, {config.rows:,} rows"
    flat = large.peak_rss / product.peak_rss
    counts = compared_counts({"requests": config.rows}, product, naive, ["requests"])
    return [
        Row(
            f"{label} vs naive",
            f"{seconds_text(product.seconds)}{runs_text(product, config)} "
            f"({megabytes / product.seconds:,.0f} MB/s)",
            f"naive loop {seconds_text(naive.seconds)}{runs_text(naive, config)} "
            f"({naive.info('bytes') / MB / naive.seconds:,.0f} MB/s)",
            naive.seconds / product.seconds,
            "≥ 3x faster",
            naive.seconds / product.seconds >= 3,
            product.peak_rss,
            product.seconds,
            counts=counts,
        ),
        Row(
            f"{label} vs bare write",
            f"{seconds_text(product.seconds)}",
            f"bare write {seconds_text(bare.seconds)}{runs_text(bare, config)} "
            f"({megabytes / bare.seconds:,.0f} MB/s)",
            product.seconds / bare.seconds,
            "≤ 2x the bare write",
            product.seconds / bare.seconds <= 2,
            product.peak_rss,
            bare.seconds,
        ),
        Row(
            f"build shards, peak RSS {config.large_rows:,} vs {config.rows:,} rows",
            f"{large.peak_rss / MB:,.0f} MB at {config.large_rows:,} "
            f"({seconds_text(large.seconds)})",
            f"{product.peak_rss / MB:,.0f} MB at {config.rows:,}",
            flat,
            "≤ 1.2x",
            flat <= 1.2,
            large.peak_rss,
            large.peak_rss,
        ),
    ]
