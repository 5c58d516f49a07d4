"""Benchmark 2: output + error files of N requests parsed and joined to the source into Parquet,
through the product's own results path (`Pipeline.poll` collecting every finished shard, then
`Pipeline.collect_results`), against `json.loads` per line, a pandas DataFrame, `pandas.merge`
and `to_parquet`.

The provider is a stub over pre-generated files (echo-style chat answers, shuffled, 2% error
lines): it hands each file over by hard link, so neither side pays for a download, which is
not what this benchmark measures.
"""

from __future__ import annotations

import io
import json
import os
import random
import re
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

import orjson
import pandas as pd

from batch_pipeline.core import outcomes as core_outcomes
from batch_pipeline.core.pipeline import load_pipeline
from batch_pipeline.core.types import BatchInfo, BatchStatus, FileInfo, RequestCounts
from batch_pipeline.local_api.echo_generation import chat_completion_body
from batch_pipeline_tests.benchmarks import fixtures
from batch_pipeline_tests.benchmarks.measure import (
    MB,
    Measurement,
    Sample,
    cpu_seconds,
    repeat,
    run_isolated,
)
from batch_pipeline_tests.benchmarks.report import (
    Config,
    Row,
    compared_counts,
    runs_text,
    seconds_text,
)

NAME = "results"
ERROR_SHARE = 0.02
EXPIRED = "This request could not be executed before the completion window expired."
# The product's peak RSS allowed at the full size, against the fair baseline.
FAIR_PEAK_RSS_MB = 700
CHUNK_BYTES: int = getattr(core_outcomes, "CHUNK_BYTES", 32 * MB)


# -- a provider over local files ----------------------------------------------------------------


class FileBackend:
    """A `BatchBackend` whose batches are already completed, answered by files in `folder`:
    `out-{i}.jsonl` and `err-{i}.jsonl` for the shard file `shard-{i}.jsonl`."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def _index(self, some_id: str) -> int:
        return int(some_id.rsplit("-", 1)[-1])

    def _batch(self, index: int, metadata: dict[str, str] | None = None) -> BatchInfo:
        present = {
            kind: (self.folder / f"{kind}-{index:05d}.jsonl").exists() for kind in ("out", "err")
        }
        return BatchInfo(
            id=f"batch-{index:05d}",
            status=BatchStatus.COMPLETED,
            endpoint=fixtures.ENDPOINT,
            input_file_id=f"in-{index:05d}",
            created_at=int(time.time()),
            output_file_id=f"out-{index:05d}" if present["out"] else None,
            error_file_id=f"err-{index:05d}" if present["err"] else None,
            request_counts=RequestCounts(),
            metadata=metadata or {},
        )

    def upload_file(self, content: BinaryIO, filename: str) -> FileInfo:
        index = int(re.search(r"_s(\d+)-", filename).group(1))  # type: ignore[union-attr]
        size = content.seek(0, io.SEEK_END)
        return FileInfo(f"in-{index:05d}", filename, size, "batch", int(time.time()))

    def find_file(self, filename: str, *, created_after: int) -> FileInfo | None:
        return None

    def unreachable(self) -> None:
        return None

    def create_batch(
        self, *, input_file_id: str, endpoint: str, metadata: dict[str, str]
    ) -> BatchInfo:
        return self._batch(self._index(input_file_id), metadata)

    def retrieve_batch(self, batch_id: str) -> BatchInfo:
        return self._batch(self._index(batch_id))

    def iter_batches(
        self, *, created_after: int | None = None, page_size: int = 100
    ) -> Iterator[BatchInfo]:
        for path in sorted(self.folder.glob("out-*.jsonl"), reverse=True):
            yield self._batch(self._index(path.stem))

    def find_batch(
        self, *, metadata_key: str, metadata_value: str, created_after: int
    ) -> BatchInfo | None:
        return None

    def cancel_batch(self, batch_id: str) -> BatchInfo:
        return self.retrieve_batch(batch_id)

    def download_file(self, file_id: str, dest: BinaryIO) -> int:
        """Hand the file over by hard link in place of `dest`'s temporary file (copied if
        `dest` has no path), so no download is timed."""
        source = self.folder / f"{file_id}.jsonl"
        name = getattr(dest, "name", None)
        if isinstance(name, str) and os.path.exists(name):
            linked = f"{name}.link"
            os.link(source, linked)
            os.replace(linked, name)
        else:
            with source.open("rb") as handle:
                shutil.copyfileobj(handle, dest, MB)
        return source.stat().st_size

    def delete_file(self, file_id: str) -> None:
        """Nothing to delete."""

    def close(self) -> None:
        """Nothing to close."""


# -- the files a provider would answer with ---------------------------------------------------


def _chat_body(key: str, text: str) -> dict[str, Any]:
    """A chat completion shaped like the local echo responder's (token counts estimated)."""
    return chat_completion_body(
        completion_id=f"chatcmpl-{key}",
        model=fixtures.MODEL,
        created=1_768_435_200,
        content=text,
        prompt_tokens=(len(text) + len(fixtures.SYSTEM)) // 4 + 11,
        completion_tokens=len(text) // 4,
    )


def echo_answer(request: dict[str, Any], key: str) -> str:
    """The echo responder's answer: the user text."""
    return request["body"]["messages"][-1]["content"]


def answer_files(
    shard: Path, folder: Path, index: int, answer: Callable[[dict[str, Any], str], str]
) -> None:
    """The output and error files a provider returns for one request shard, lines shuffled;
    `answer` gives the text of a request's answer."""
    rng = random.Random(index)
    output: list[bytes] = []
    errors: list[bytes] = []
    with shard.open("rb") as lines:
        for number, raw in enumerate(lines):
            request = orjson.loads(raw)
            key = f"{index:05d}{number:07d}"
            line: dict[str, Any] = {"id": f"batch_req_{key}", "custom_id": request["custom_id"]}
            if rng.random() < ERROR_SHARE:
                errors.append(
                    orjson.dumps(
                        {
                            **line,
                            "response": None,
                            "error": {"code": "batch_expired", "message": EXPIRED},
                        }
                    )
                )
                continue
            text = answer(request, key)
            output.append(
                orjson.dumps(
                    {
                        **line,
                        "response": {
                            "status_code": 200,
                            "request_id": f"req_{key}",
                            "body": _chat_body(key, text),
                        },
                        "error": None,
                    }
                )
            )
    for kind, found in (("out", output), ("err", errors)):
        rng.shuffle(found)
        (folder / f"{kind}-{index:05d}.jsonl").write_bytes(b"\n".join(found) + b"\n")


def setup_case(
    spec_path: Path,
    files: Path,
    answer: Callable[[dict[str, Any], str], str] = echo_answer,
) -> dict[str, Any]:
    """Build the partition's shards, write the provider's answers, submit (untimed setup)."""
    fixtures.fresh_dir(files)
    with load_pipeline(spec_path, backend=FileBackend(files)) as pipeline:
        pipeline.build_requests(fixtures.DAY)
        for shard in sorted(pipeline.storage.local_path("requests").rglob("shard-*.jsonl")):
            answer_files(shard, files, int(shard.stem.rsplit("-", 1)[-1]), answer)
        pipeline.submit(fixtures.DAY)
    return {}


# -- the cases -----------------------------------------------------------------------------------


def product_case(spec_path: Path, files: Path) -> dict[str, Any]:
    """The product: one poll collects every shard's outcomes, then the results are written."""
    with load_pipeline(spec_path, backend=FileBackend(files)) as pipeline:
        started = time.perf_counter()
        report = pipeline.poll(time_budget_seconds=3_600)
        if report.errors:
            raise RuntimeError(f"poll errors: {report.errors}")
        polled = time.perf_counter()
        summary = pipeline.collect_results(fixtures.DAY)
        done = time.perf_counter()
    return {
        "seconds": done - started,
        "collect_seconds": polled - started,
        "join_seconds": done - polled,
        "rows": summary.rows,
        "succeeded": summary.counts.get("succeeded", 0),
    }


def _raw_body(raw: bytes) -> str:
    """The text of a line's `response.body` as it stands in the line: from `"body":` to the
    close of `response` (the layout every answer line of these files has)."""
    start = raw.index(b'"body":') + len(b'"body":')
    return raw[start : raw.rindex(b',"error":') - 1].decode()


def naive_case(source: Path, files: Path, dest: Path, keep_json: bool = False) -> dict[str, Any]:
    """`json.loads` per line into a DataFrame, `pandas.merge` with the source, `to_parquet`;
    with `keep_json`, each answer's raw body text is kept as `response_json` too, as the
    product keeps it."""
    records = []
    for path in sorted(files.glob("*.jsonl")):
        with path.open("rb") as lines:
            for raw in lines:
                line = json.loads(raw)
                response, error = line.get("response"), line.get("error")
                if response:
                    body = response["body"]
                    records.append(
                        {
                            "custom_id": line["custom_id"],
                            "status": "succeeded",
                            "http_status": response["status_code"],
                            "response_text": body["choices"][0]["message"]["content"],
                            "input_tokens": body["usage"]["prompt_tokens"],
                            "output_tokens": body["usage"]["completion_tokens"],
                            "error_code": None,
                            "error_message": None,
                        }
                    )
                    if keep_json:
                        records[-1]["response_json"] = _raw_body(raw)
                else:
                    records.append(
                        {
                            "custom_id": line["custom_id"],
                            "status": "failed",
                            "http_status": None,
                            "response_text": None,
                            "input_tokens": None,
                            "output_tokens": None,
                            "error_code": error["code"],
                            "error_message": error["message"],
                        }
                    )
                    if keep_json:
                        records[-1]["response_json"] = None
    found = pd.DataFrame.from_records(records)
    rows = pd.read_parquet(source)
    rows["custom_id"] = fixtures.DAY + ":" + rows[fixtures.KEY]
    joined = rows.merge(found, on="custom_id", how="left")
    joined.to_parquet(dest, index=False)
    with dest.open("rb+") as handle:
        os.fsync(handle.fileno())
    return {"rows": len(joined), "succeeded": int((joined["status"] == "succeeded").sum())}


# One DuckDB query per file, reading each line's fields typed and its body as JSON text: the
# least a DuckDB parse into outcome columns could cost (it checks no line's shape, which the
# product must, and leaves the status to classify).
DUCKDB_PARSE = """
SELECT custom_id, id, response.status_code, response.body::VARCHAR AS response_json,
    b.choices[1].message.content AS response_text, b.usage.prompt_tokens,
    b.usage.completion_tokens, b.error.code, b.error.message, error.code, error.message
FROM (
    SELECT *, json_transform(response.body, '{body_type}') AS b
    FROM read_json('{path}', format = 'newline_delimited', columns = {{
        id: 'VARCHAR', custom_id: 'VARCHAR', error: 'STRUCT(code VARCHAR, message VARCHAR)',
        response: 'STRUCT(status_code INTEGER, body JSON)'
    }})
)
"""
DUCKDB_BODY_TYPE = json.dumps(
    {
        "choices": [{"message": {"content": "VARCHAR"}}],
        "usage": {"prompt_tokens": "BIGINT", "completion_tokens": "BIGINT"},
        "error": {"code": "VARCHAR", "message": "VARCHAR"},
    }
)


def parse_case(files: Path, engine: str) -> dict[str, Any]:
    """Only the parse of every output and error file into outcome columns, file by file: the
    product's (`parse_outcomes`) or DuckDB's (`DUCKDB_PARSE`); its wall and CPU time."""
    if engine == "duckdb":
        import duckdb  # before the clocks start, as the product's libraries are

    cpu_started, clock = cpu_seconds(), time.perf_counter()
    rows = 0
    for path in sorted(files.glob("out-*.jsonl")):
        errors = path.with_name(path.name.replace("out-", "err-"))
        if engine == "product":
            rows += core_outcomes.parse_outcomes(path, errors, endpoint=fixtures.ENDPOINT).num_rows
            continue
        for one in (path, errors):
            query = DUCKDB_PARSE.format(body_type=DUCKDB_BODY_TYPE, path=one)
            with duckdb.connect() as con:
                rows += con.sql(query).to_arrow_table().num_rows
    return {
        "rows": rows,
        "cpu_seconds": cpu_seconds() - cpu_started,
        "seconds": time.perf_counter() - clock,
    }


# -- the benchmark -----------------------------------------------------------------------------


def link_tree(template: Path, target: Path) -> None:
    """A copy of a pipeline folder: the ledger copied, the (read-only) data files hard-linked."""
    shutil.rmtree(target, ignore_errors=True)

    def copy(source: str, dest: str) -> None:
        if source.endswith((".jsonl", ".parquet")):
            os.link(source, dest)
        else:
            shutil.copy2(source, dest)

    shutil.copytree(template, target, copy_function=copy)


def run(config: Config) -> list[Row]:
    """Product vs naive at N rows; the product's peak RSS at N/4 and N rows.

    (Memory is compared at N/4 and N, not N and 4N: a product path that held every row would
    need several GB a million rows, more than a shared machine should be asked for.)
    """
    root = config.workdir / NAME
    small = max(config.rows // 4, 1)
    specs, files = {}, {}
    for rows in (small, config.rows):
        base = root / str(rows)
        source = fixtures.source_path(config.workdir, rows)
        files[rows] = base / "files"
        template = fixtures.write_spec(
            base / "template.yaml", fixtures.spec_dict(source, base / "template", max_attempts=1)
        )
        run_isolated(setup_case, template, files[rows])
        specs[rows] = fixtures.write_spec(
            base / "run.yaml", fixtures.spec_dict(source, base / "run", max_attempts=1)
        )
    product, naive, naive_json, quarter = (
        Measurement(n) for n in ("product", "naive", "naive-json", "product-small")
    )

    def one(measurement: Measurement, _repetition: int) -> Sample:
        rows = small if measurement is quarter else config.rows
        base = root / str(rows)
        if measurement in (naive, naive_json):
            return run_isolated(
                naive_case,
                fixtures.source_path(config.workdir, rows),
                files[rows],
                base / "naive.parquet",
                measurement is naive_json,
            )
        link_tree(base / "template", base / "run")
        return run_isolated(product_case, specs[rows], files[rows])

    repeat(
        [product, naive, naive_json], one, config.repetitions, budget_seconds=config.budget(NAME)
    )
    quarter.add(one(quarter, 0))
    parsed = {engine: Measurement(f"parse-{engine}") for engine in ("product", "duckdb")}
    for engine, measurement in parsed.items():
        measurement.add(run_isolated(parse_case, files[config.rows], engine))
    shutil.rmtree(root, ignore_errors=True)

    label = f"parse + join results, {config.rows:,} rows"
    speedup = naive.seconds / product.seconds
    fair_speedup = naive_json.seconds / product.seconds
    peak_limit = FAIR_PEAK_RSS_MB * MB
    flat = product.peak_rss / quarter.peak_rss
    chunk_share = product.growth / CHUNK_BYTES
    counts = compared_counts({"rows": config.rows}, product, naive, ["rows", "succeeded"])
    fair_counts = compared_counts({"rows": config.rows}, product, naive_json, ["rows", "succeeded"])
    return [
        Row(
            f"{label} vs pandas",
            f"{seconds_text(product.seconds)}{runs_text(product, config)} (collect "
            f"{seconds_text(product.info('collect_seconds'))} + join "
            f"{seconds_text(product.info('join_seconds'))})",
            f"json.loads + merge {seconds_text(naive.seconds)}{runs_text(naive, config)}",
            speedup,
            "≥ 4x faster",
            speedup >= 4,
            product.peak_rss,
            product.seconds,
            counts=counts,
        ),
        Row(
            f"{label} vs pandas + response_json",
            f"{seconds_text(product.seconds)} (CPU {seconds_text(product.info('cpu_seconds'))}), "
            f"peak {product.peak_rss / MB:,.0f} MB",
            f"json.loads + raw body + merge {seconds_text(naive_json.seconds)}"
            f"{runs_text(naive_json, config)} (CPU {seconds_text(naive_json.info('cpu_seconds'))}"
            f"; CPU ratio {naive_json.info('cpu_seconds') / product.info('cpu_seconds'):.2f}x)",
            fair_speedup,
            f"≥ 3x faster, ≤ {FAIR_PEAK_RSS_MB:,} MB",
            fair_speedup >= 3 and product.peak_rss <= peak_limit,
            product.peak_rss,
            product.seconds,
            counts=fair_counts,
        ),
        _parse_row(config, parsed["product"], parsed["duckdb"]),
        Row(
            f"parse + join results, memory at {config.rows:,} rows",
            f"+{product.growth / MB:,.0f} MB over the process's start",
            f"one chunk = {CHUNK_BYTES / MB:,.0f} MB",
            chunk_share,
            "< 2 chunks",
            chunk_share < 2,
            product.peak_rss,
            product.growth,
        ),
        Row(
            f"parse + join results, peak RSS {config.rows:,} vs {small:,} rows",
            f"{product.peak_rss / MB:,.0f} MB at {config.rows:,}",
            f"{quarter.peak_rss / MB:,.0f} MB at {small:,} ({seconds_text(quarter.seconds)})",
            flat,
            "≤ 1.2x",
            flat <= 1.2,
            product.peak_rss,
            product.peak_rss,
        ),
    ]


def _parse_row(config: Config, product: Measurement, duckdb: Measurement) -> Row:
    """The parse alone, the product's against a DuckDB query per file (informational: the
    engine the product would use if it parsed faster)."""
    ratio = duckdb.seconds / product.seconds
    return Row(
        f"parse only, {config.rows:,} rows' output + error files vs DuckDB",
        f"{seconds_text(product.seconds)} (CPU {seconds_text(product.info('cpu_seconds'))})",
        f"DuckDB read_json {seconds_text(duckdb.seconds)} "
        f"(CPU {seconds_text(duckdb.info('cpu_seconds'))})",
        ratio,
        "— (measured)",
        None,
        product.peak_rss,
        product.seconds,
        counts=compared_counts({"rows": config.rows}, product, duckdb, ["rows"]),
    )
