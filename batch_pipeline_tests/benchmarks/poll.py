"""Benchmark 3: one sensor tick (`Pipeline.poll`) over 1,000 in-flight batches recorded in the
ledger, on the local Batch API, against retrieving each batch one by one with the SDK; HTTP
requests counted by the SDK client's transport.

The batches stay in flight: each holds one `<<hang>>` request, which the local service never
answers (the completion window is a day).
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import pandas as pd

from batch_pipeline.core.backends.openai import OpenAIBackend
from batch_pipeline.core.ledger import Ledger
from batch_pipeline.core.pipeline import load_pipeline
from batch_pipeline.core.spec import PipelineSpec
from batch_pipeline.core.types import ShardState
from batch_pipeline_tests.benchmarks import fixtures
from batch_pipeline_tests.benchmarks.measure import Measurement, repeat, run_isolated
from batch_pipeline_tests.benchmarks.report import Config, Row, runs_text, seconds_text

NAME = "poll"
PAGE_SIZE = 100  # the most batches the Batch API lists a page
TICK_TARGET_SECONDS = 5.0
SETTLE_TIMEOUT_SECONDS = 300.0


def hanging_source(path: Path, batches: int) -> Path:
    """A source of `batches` rows whose requests the local service never answers."""
    pd.DataFrame(
        {
            fixtures.KEY: [f"H{i:06d}" for i in range(batches)],
            "created_at": pd.Timestamp(fixtures.DAY),
            "subject": "Stuck",
            "body": [f"<<hang>> request {i}" for i in range(batches)],
        }
    ).to_parquet(path, index=False)
    return path


def _backend(url: str) -> tuple[OpenAIBackend, fixtures.CountingTransport]:
    client, transport = fixtures.counting_client(url)
    return OpenAIBackend(client), transport


def setup_case(spec_path: Path, url: str, batches: int) -> dict[str, Any]:
    """One shard (one batch) a row: build, submit, wait until every batch runs, poll once."""
    backend, _ = _backend(url)
    with load_pipeline(spec_path, backend=backend) as pipeline:
        pipeline.build_requests(fixtures.DAY)
        started = time.perf_counter()
        pipeline.submit(fixtures.DAY)
        submitted = time.perf_counter() - started
        client = backend.client
        deadline = time.monotonic() + SETTLE_TIMEOUT_SECONDS
        while (
            sum(b.status == "in_progress" for b in client.batches.list(limit=PAGE_SIZE)) < batches
        ):
            if time.monotonic() > deadline:
                raise RuntimeError("the batches did not all start in time")
            time.sleep(0.2)
        report = pipeline.poll()
        if report.in_flight != batches:
            raise RuntimeError(f"{report.in_flight} batches in flight, not {batches}")
    return {"submit_seconds": submitted}


def tick_case(spec_path: Path, url: str) -> dict[str, Any]:
    """One sensor tick: refresh every in-flight batch, collect none, submit none."""
    backend, transport = _backend(url)
    with load_pipeline(spec_path, backend=backend) as pipeline:
        started = time.perf_counter()
        report = pipeline.poll()
        seconds = time.perf_counter() - started
    return {"seconds": seconds, "calls": len(transport.calls), "in_flight": report.in_flight}


def one_by_one_case(spec_path: Path, url: str) -> dict[str, Any]:
    """The baseline: `client.batches.retrieve` for every in-flight batch of the ledger."""
    spec = PipelineSpec.from_yaml(spec_path)
    ledger = Ledger(spec.ledger_url)
    batch_ids = [s.batch_id for s in ledger.shards(spec.name, states=[ShardState.SUBMITTED])]
    ledger.close()
    client, transport = fixtures.counting_client(url)
    started = time.perf_counter()
    statuses = [client.batches.retrieve(batch_id).status for batch_id in batch_ids]
    seconds = time.perf_counter() - started
    client.close()
    return {"seconds": seconds, "calls": len(transport.calls), "in_flight": len(statuses)}


def run(config: Config) -> list[Row]:
    batches = config.poll_batches
    root = fixtures.fresh_dir(config.workdir / NAME)
    source = hanging_source(root / "hanging.parquet", batches)
    # Stopping waits for unfinished batches; these never finish and their state is thrown away.
    with fixtures.local_service(root / "service", stop_seconds=3) as service:
        spec_path = fixtures.write_spec(
            root / "spec.yaml",
            fixtures.spec_dict(source, root / "out", base_url=service.url, max_requests_per_file=1),
        )
        setup = run_isolated(setup_case, spec_path, service.url, batches)
        tick, baseline = Measurement("tick"), Measurement("one-by-one")
        cases = {"tick": tick_case, "one-by-one": one_by_one_case}
        repeat(
            [tick, baseline],
            lambda m, _: run_isolated(cases[m.name], spec_path, service.url),
            config.repetitions,
            budget_seconds=config.budget(NAME),
        )
    pages = math.ceil(batches / PAGE_SIZE)
    calls, baseline_calls = int(tick.info("calls")), int(baseline.info("calls"))
    label = f"sensor tick, {batches:,} in-flight batches"
    return [
        Row(
            label,
            f"{seconds_text(tick.seconds)}{runs_text(tick, config)}",
            f"one by one {seconds_text(baseline.seconds)}{runs_text(baseline, config)} "
            f"(setup: {setup.info['submit_seconds']:.0f} s to submit)",
            tick.seconds / baseline.seconds,
            f"≤ {TICK_TARGET_SECONDS:.0f} s",
            tick.seconds <= TICK_TARGET_SECONDS,
            tick.peak_rss,
            tick.seconds,
        ),
        Row(
            f"{label}: HTTP calls",
            f"{calls:,} calls ({pages:,} page(s) of {PAGE_SIZE})",
            f"one by one {baseline_calls:,} calls",
            calls / baseline_calls,
            "≤ pages + 2",
            calls <= pages + 2,
            baseline.peak_rss,
            calls,
        ),
    ]
