"""Benchmark 6: the pipeline's storage on an S3-compatible server (moto's, on loopback).

- Shards built onto S3 vs uploading the same bytes (same sizes, same object count) with the
  same library, pyarrow's S3 filesystem: what the product adds to the upload itself. And the
  build's peak RSS at N and 4N rows: staging through a bounded temporary file keeps it flat.
- Results (poll, collect the outcome files, join, write Parquet) with the pipeline's root on S3
  vs on local disk, both with a PostgreSQL ledger, alternated in the same run. The server runs
  in this process on the same cores as the case, so its CPU time is reported beside it: a
  cloud store's work costs the pipeline's machine nothing.

Every case runs in a fresh process that reaches the server through the standard AWS
environment variables, as a deployment would.
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

from batch_pipeline.core.pipeline import load_pipeline
from batch_pipeline.core.sharding import build_partition_requests
from batch_pipeline.core.spec import PipelineSpec
from batch_pipeline.core.storage import storage_for
from batch_pipeline_tests.benchmarks import fixtures
from batch_pipeline_tests.benchmarks import results as results_benchmark
from batch_pipeline_tests.benchmarks.measure import MB, Measurement, Sample, repeat, run_isolated
from batch_pipeline_tests.benchmarks.report import Config, Row, runs_text, seconds_text
from batch_pipeline_tests.conftest import _new_postgres_database
from batch_pipeline_tests.s3_server import running_s3_server

NAME = "object_store"
WRITE_BLOCK = 4 * MB
# The build never opens the ledger; a remote root still needs a PostgreSQL one named.
UNOPENED_LEDGER = "postgresql+psycopg2://127.0.0.1:1/never_opened"


def with_env(env: Mapping[str, str], case: Callable[..., Any], *args: Any) -> Any:
    """`case(*args)` with `env` in this (fresh) process's environment."""
    os.environ.update(env)
    return case(*args)


# -- shards --------------------------------------------------------------------------------------


def build_case(spec_path: Path) -> dict[str, Any]:
    """The product: read, validate, estimate tokens, write the shards and manifest to S3."""
    spec = PipelineSpec.from_yaml(spec_path)
    storage = storage_for(spec.pipeline_root)
    manifest = build_partition_requests(spec, fixtures.DAY, storage, generation=1)
    # The shards' sizes from the manifest: asking the store for them is not the build's work.
    return {"bytes": manifest.bytes, "sizes": [shard.bytes for shard in manifest.shards]}


def upload_case(bucket: str, prefix: str, sizes: list[int]) -> dict[str, Any]:
    """The same number of objects of the same sizes, written from one buffer through pyarrow's
    S3 filesystem (the store's and the library's limit)."""
    import pyarrow.fs

    from batch_pipeline.core.storage_uri import RemoteLocation, filesystem_for

    filesystem: pyarrow.fs.S3FileSystem = filesystem_for(RemoteLocation.parse(f"s3://{bucket}"))
    block = memoryview(b"x" * WRITE_BLOCK)
    for index, size in enumerate(sizes):
        with filesystem.open_output_stream(f"{bucket}/{prefix}/shard-{index:05d}.jsonl") as out:
            for start in range(0, size, WRITE_BLOCK):
                out.write(block[: min(WRITE_BLOCK, size - start)])
    return {"bytes": sum(sizes)}


def _shard_rows(config: Config, env: dict[str, str], bucket: str) -> list[Row]:
    root = config.workdir / NAME
    specs = {
        rows: fixtures.write_spec(
            root / f"build-{rows}.yaml",
            {
                **fixtures.spec_dict(fixtures.source_path(config.workdir, rows), Path("unused")),
                "output": {"dir": f"s3://{bucket}/build-{rows}"},
                "ledger": {"url": UNOPENED_LEDGER},
            },
        )
        for rows in (config.rows, config.large_rows)
    }
    build, upload, large = (Measurement(n) for n in ("build", "upload", "build-large"))
    client_prefix = "upload"

    def one(measurement: Measurement, _repetition: int) -> Sample:
        if measurement is upload:
            sizes = build.info("sizes")
            return run_isolated(with_env, env, upload_case, bucket, client_prefix, sizes)
        rows = config.large_rows if measurement is large else config.rows
        return run_isolated(with_env, env, build_case, specs[rows])

    def clear(*_: Any) -> None:
        storage = storage_for(f"s3://{bucket}")
        for prefix in (client_prefix, *(f"build-{rows}" for rows in specs)):
            storage.delete_tree(prefix)

    repeat([build, upload], one, config.repetitions, budget_seconds=config.budget(NAME))
    clear()
    large.add(one(large, 0))
    clear()
    ratio = build.seconds / upload.seconds
    flat = large.peak_rss / build.peak_rss
    megabytes = build.info("bytes") / MB
    return [
        Row(
            f"build shards onto S3, {config.rows:,} rows vs upload",
            f"{seconds_text(build.seconds)}{runs_text(build, config)} "
            f"({megabytes / build.seconds:,.0f} MB/s)",
            f"pyarrow upload of the same bytes {seconds_text(upload.seconds)}"
            f"{runs_text(upload, config)}",
            ratio,
            "≤ 1.5x the upload",
            ratio <= 1.5,
            build.peak_rss,
            build.seconds,
        ),
        Row(
            f"build shards onto S3, peak RSS {config.large_rows:,} vs {config.rows:,} rows",
            f"{large.peak_rss / MB:,.0f} MB at {config.large_rows:,}",
            f"{build.peak_rss / MB:,.0f} MB at {config.rows:,}",
            flat,
            "≤ 1.2x",
            flat <= 1.2,
            large.peak_rss,
            large.peak_rss,
        ),
    ]


# -- results -------------------------------------------------------------------------------------


def submit_case(spec_path: Path) -> dict[str, Any]:
    """Build and submit the partition (untimed setup; the answers are already on disk)."""
    with load_pipeline(
        spec_path, backend=results_benchmark.FileBackend(spec_path.parent / "files")
    ) as pipeline:
        pipeline.build_requests(fixtures.DAY)
        pipeline.submit(fixtures.DAY)
    return {}


@contextmanager
def _fresh_spec(path: Path, source: Path, out: str, database: str) -> Iterator[Path]:
    spec = fixtures.spec_dict(source, Path("unused"), max_attempts=1)
    spec["output"] = {"dir": out}
    spec["ledger"] = {"url": database}
    yield fixtures.write_spec(path, spec)


def _results_rows(config: Config, env: dict[str, str], bucket: str) -> list[Row]:
    root = config.workdir / NAME / "results"
    source = fixtures.source_path(config.workdir, config.rows)
    files = fixtures.fresh_dir(root / "files")
    with _new_postgres_database() as database:  # the provider's answers, written once
        spec = fixtures.write_spec(
            root / "answers.yaml",
            {
                **fixtures.spec_dict(source, root / "answers", max_attempts=1),
                "ledger": {"url": database},
            },
        )
        run_isolated(results_benchmark.setup_case, spec, files)
    shutil.rmtree(root / "answers", ignore_errors=True)
    local, remote = Measurement("local"), Measurement("s3")

    def one(measurement: Measurement, repetition: int) -> Sample:
        run_id = f"{measurement.name}-{repetition}-{uuid.uuid4().hex[:6]}"
        out = (
            f"s3://{bucket}/results/{run_id}"
            if measurement is remote
            else str(fixtures.fresh_dir(root / run_id))
        )
        with ExitStack() as stack:
            database = stack.enter_context(_new_postgres_database())
            spec = stack.enter_context(_fresh_spec(root / "run.yaml", source, out, database))
            run_isolated(with_env, env, submit_case, spec)
            server_started = time.process_time()  # the server runs in this process, alone
            sample = run_isolated(with_env, env, results_benchmark.product_case, spec, files)
            server = time.process_time() - server_started
        sample = replace(sample, info={**sample.info, "server_cpu_seconds": server})
        if measurement is remote:
            storage_for(f"s3://{bucket}").delete_tree(f"results/{run_id}")
        else:
            shutil.rmtree(out, ignore_errors=True)
        return sample

    repeat([local, remote], one, config.repetitions, budget_seconds=config.budget(NAME))
    shutil.rmtree(root, ignore_errors=True)
    ratio = remote.seconds / local.seconds
    return [
        Row(
            f"results on S3 vs local disk, {config.rows:,} rows",
            f"{seconds_text(remote.seconds)}{runs_text(remote, config)} (collect "
            f"{seconds_text(remote.info('collect_seconds'))} + join "
            f"{seconds_text(remote.info('join_seconds'))}; CPU "
            f"{seconds_text(remote.info('cpu_seconds'))}, and the S3 server's own CPU "
            f"{seconds_text(remote.info('server_cpu_seconds'))} on the same cores)",
            f"local disk {seconds_text(local.seconds)}{runs_text(local, config)} (CPU "
            f"{seconds_text(local.info('cpu_seconds'))})",
            ratio,
            "≤ 1.5x local",
            ratio <= 1.5,
            remote.peak_rss,
            remote.seconds,
        )
    ]


def run(config: Config) -> list[Row]:
    """Both comparisons against one S3-compatible server started for this benchmark."""
    with running_s3_server() as server:
        env = server.env()
        os.environ.update(env)  # this process, too, clears what the cases leave
        bucket = server.create_bucket()
        return _shard_rows(config, env, bucket) + _results_rows(config, env, bucket)
