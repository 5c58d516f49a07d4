"""Benchmarks of batch_pipeline, each against its naive baseline in the same run.

Run `python -m batch_pipeline_tests.benchmarks` (add `--smoke` for tiny sizes, `--only NAME`
for one benchmark, `--rows N` for the source size). Every measured case runs in a fresh
process (see `measure.py`); the table gives medians of several runs and each process's peak
RSS. The benchmarks:

- shards: request shards from an N-row source vs the naive loop and a bare write
- results: output + error files parsed and joined to the source vs json.loads + pandas.merge
- poll: one sensor tick over 1,000 in-flight batches vs retrieving them one by one
- service: the local service's echo throughput, and a 200 MB upload with bounded memory
- end_to_end: `batch-pipeline run` vs a plain openai-SDK script, on the local service
- object_store: shards built onto an S3-compatible server vs a bare upload of the same bytes,
  and results on S3 vs on local disk
- footprint: what a settled day leaves in storage, with `keep_intermediates_days` 0 and 7
- structured: results with a 5-property output schema vs the same answers without one
- startup: `batch-pipeline --help`, `run` to its first HTTP request, and importing the code
  location against `import dagster`
"""

from __future__ import annotations

from collections.abc import Callable
from importlib import import_module
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from batch_pipeline_tests.benchmarks.report import Config, Row

NAMES = (
    "shards",
    "results",
    "poll",
    "service",
    "end_to_end",
    "object_store",
    "footprint",
    "structured",
    "startup",
)


def _runner(name: str) -> Callable[[Config], list[Row]]:
    def run(config: Config) -> list[Row]:
        return import_module(f"batch_pipeline_tests.benchmarks.{name}").run(config)

    run.__name__ = f"run_{name}"
    return run


BENCHMARKS: dict[str, Callable[[Config], list[Row]]] = {name: _runner(name) for name in NAMES}
