"""Benchmark 4: the local Batch API (`batch-pipeline serve`, echo responder, its own process):
requests processed a second over 200 batches of 1,000 requests (validation, answers with
exact token counts and the output files included), and a 200 MB upload accepted while the
server's memory stays bounded; and the echo's throughput with 2 worker processes against the
same server's with 1, in the same run. With 1 (`--workers 1`) the service's own process
answers, by the same chunk code that a worker runs, with no process to hand chunks to. Each
round gets fresh servers; a server's peak RSS is the kernel's record for that process (VmHWM),
restarted before the upload."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson

from batch_pipeline_tests.benchmarks import fixtures
from batch_pipeline_tests.benchmarks.measure import (
    MB,
    Measurement,
    Sample,
    process_peak_rss,
    repeat,
    reset_peak_rss,
    run_isolated,
)
from batch_pipeline_tests.benchmarks.report import Config, Row, runs_text, seconds_text

NAME = "service"
TERMINAL = ("completed", "failed", "expired", "cancelled")
THROUGHPUT_TARGET = 20_000
UPLOAD_GROWTH_LIMIT = 64 * MB
SCALING_TARGET = 1.7  # 2 workers against 1
WARM_UP_SECONDS = 30.0  # for the worker processes to load the tokenizer
POLL_SECONDS = 0.05


TICKET = (
    "Subject: Parcel {n} is late\n\nTicket #{n}: my order {order} was due on Monday and the "
    "tracking page has said 'in transit' for four days. The courier's line is busy and I need "
    "the item for a birthday on Saturday. Can you send it again or refund me?"
)


def request_line(tag: str, number: int) -> bytes:
    """A chat request like the pipeline's: a system text and a ~300-character ticket."""
    messages = [
        {"role": "system", "content": fixtures.SYSTEM},
        {"role": "user", "content": TICKET.format(n=number, order=number * 7919)},
    ]
    return (
        orjson.dumps(
            {
                "custom_id": f"{tag}-{number}",
                "method": "POST",
                "url": fixtures.ENDPOINT,
                "body": {"model": fixtures.MODEL, "messages": messages, **fixtures.PARAMS},
            }
        )
        + b"\n"
    )


def listed_batches(client: Any) -> list[dict[str, Any]]:
    """Every batch, page by page, as plain JSON: the SDK's objects cost the client some 25 ms
    of CPU for 200 batches, every poll, taken from the two cores the server is measured on."""
    listed: list[dict[str, Any]] = []
    after: dict[str, str] = {}
    while True:
        page = orjson.loads(client.batches.with_raw_response.list(limit=100, **after).content)
        listed += page["data"]
        if not page["has_more"]:
            return listed
        after = {"after": page["last_id"]}


def throughput_case(url: str, batches: int, per_batch: int) -> dict[str, Any]:
    """Upload the inputs (untimed), then time from the first create to the last batch done."""
    client, _ = fixtures.counting_client(url)
    files = []
    for b in range(batches):  # every ticket text differs, as in real data (no cache helps)
        lines = b"".join(request_line(f"b{b}", b * per_batch + i) for i in range(per_batch))
        files.append(client.files.create(file=(f"in-{b}.jsonl", lines), purpose="batch").id)
    started = time.perf_counter()
    for file_id in files:
        client.batches.create(
            input_file_id=file_id, endpoint=fixtures.ENDPOINT, completion_window="24h"
        )
    while True:
        listed = listed_batches(client)
        if len(listed) == batches and all(b["status"] in TERMINAL for b in listed):
            break
        time.sleep(POLL_SECONDS)
    seconds = time.perf_counter() - started
    bad = [
        b["id"]
        for b in listed
        if b["status"] != "completed" or b["request_counts"]["completed"] != per_batch
    ]
    if bad:
        raise RuntimeError(f"batches not completed in full: {bad[:5]}")
    return {"seconds": seconds, "requests": batches * per_batch}


def wait_for_workers(pid: int, workers: int) -> None:
    """Wait (untimed) until the server's worker processes have loaded the tokenizer: all of
    them started, and none using CPU any more."""
    import psutil

    def cpu_seconds() -> list[float] | None:
        found = [
            child.cpu_times()
            for child in psutil.Process(pid).children()
            if "spawn_main" in " ".join(child.cmdline())
        ]
        return [t.user + t.system for t in found] if len(found) >= workers else None

    deadline = time.monotonic() + WARM_UP_SECONDS
    before = cpu_seconds()
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = cpu_seconds()
        if before is not None and now == before:
            return
        before = now
    raise RuntimeError(f"the server's {workers} worker processes did not settle in time")


def upload_case(url: str, path: Path, size: int) -> dict[str, Any]:
    """Upload a file of `size` bytes, streamed from disk (written first, untimed)."""
    line = request_line("u", 0)
    with path.open("wb") as handle:
        block = line * (MB // len(line))
        while handle.tell() + len(block) <= size:
            handle.write(block)
        handle.write(line * ((size - handle.tell()) // len(line)))
    client, _ = fixtures.counting_client(url)
    started = time.perf_counter()
    with path.open("rb") as handle:
        uploaded = client.files.create(file=(path.name, handle), purpose="batch")
    seconds = time.perf_counter() - started
    if uploaded.bytes != path.stat().st_size:
        raise RuntimeError(f"uploaded {uploaded.bytes} bytes of {path.stat().st_size}")
    path.unlink()
    return {"seconds": seconds, "bytes": uploaded.bytes}


def run(config: Config) -> list[Row]:
    """Each round: a fresh server, the throughput run, then (its peak RSS reset) the upload."""
    root = config.workdir / NAME
    batches, per_batch = config.service_batches
    throughput, upload = Measurement("throughput"), Measurement("upload")
    single = Measurement("1 worker")

    def one(measurement: Measurement, _repetition: int) -> Sample:
        with fixtures.local_service(root / "single", "--workers", "1") as service:
            single.add(run_isolated(throughput_case, service.url, batches, per_batch))
        with fixtures.local_service(root / "state", "--workers", "2") as service:
            wait_for_workers(service.pid, 2)
            sample = run_isolated(throughput_case, service.url, batches, per_batch)
            throughput.add(
                replace(sample, info={**sample.info, "server_peak": process_peak_rss(service.pid)})
            )
            reset_peak_rss(service.pid)
            before = process_peak_rss(service.pid)
            sample = run_isolated(
                upload_case, service.url, root / "upload.jsonl", config.upload_bytes
            )
            after = process_peak_rss(service.pid)
        return replace(
            sample, info={**sample.info, "server_peak": after, "server_growth": after - before}
        )

    repeat([upload], one, config.repetitions, budget_seconds=config.budget(NAME))
    rate = throughput.info("requests") / throughput.seconds
    single_rate = single.info("requests") / single.seconds
    scaling = rate / single_rate
    growth = upload.info("server_growth")
    megabytes = upload.info("bytes") / 1e6
    return [
        Row(
            f"local service, {batches} batches x {per_batch:,} requests, echo",
            f"{rate:,.0f} requests/s ({seconds_text(throughput.seconds)}"
            f"{runs_text(throughput, config)})",
            "—",
            None,
            f">= {THROUGHPUT_TARGET:,} requests/s",
            rate >= THROUGHPUT_TARGET,
            int(throughput.info("server_peak")),
            rate,
        ),
        Row(
            "local service, echo throughput with 2 workers against 1 (--workers)",
            f"{rate:,.0f} requests/s with 2 workers",
            f"{single_rate:,.0f} requests/s with 1 ({seconds_text(single.seconds)}"
            f"{runs_text(single, config)})",
            scaling,
            f"≥ {SCALING_TARGET}x its 1-worker throughput",
            scaling >= SCALING_TARGET,
            int(throughput.info("server_peak")),
            scaling,
        ),
        Row(
            f"local service, {megabytes:,.0f} MB upload",
            f"server peak RSS +{growth / MB:,.1f} MB ({seconds_text(upload.seconds)}, "
            f"{megabytes / upload.seconds:,.0f} MB/s)",
            "—",
            None,
            f"server RSS grows < {UPLOAD_GROWTH_LIMIT / MB:.0f} MB",
            growth < UPLOAD_GROWTH_LIMIT,
            int(upload.info("server_peak")),
            upload.seconds,
        ),
    ]
