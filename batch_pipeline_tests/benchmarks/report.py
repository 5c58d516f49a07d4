"""The benchmarks' settings, their result rows, and the table they print."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from batch_pipeline_tests.benchmarks.measure import MB, Measurement

FULL_ROWS = 1_000_000
E2E_ROWS = 100_000
# Time for the repetitions of each benchmark, so the full run stays within 15 minutes even when
# a case is slow: past it, medians are of fewer runs (and the table says so).
BUDGET_SECONDS = {
    "shards": 120.0,
    "results": 240.0,
    "poll": 45.0,
    "service": 120.0,
    "end_to_end": 150.0,
    "object_store": 300.0,
    "structured": 480.0,
}


@dataclass(frozen=True)
class Config:
    """Sizes and repetitions of one benchmark run; `smoke` shrinks everything to seconds."""

    rows: int
    workdir: Path
    repetitions: int = 3
    smoke: bool = False

    @property
    def large_rows(self) -> int:
        """The size memory is compared at, to show it stays flat as rows grow."""
        return 4 * self.rows

    @property
    def e2e_rows(self) -> int:
        return min(E2E_ROWS, self.rows)

    @property
    def poll_batches(self) -> int:
        return 40 if self.smoke else 1_000

    @property
    def service_batches(self) -> tuple[int, int]:
        """(batches, requests per batch) of the throughput run."""
        return (4, 250) if self.smoke else (200, 1_000)

    @property
    def upload_bytes(self) -> int:
        return 8 * MB if self.smoke else 200 * 1_000_000

    def budget(self, benchmark: str) -> float | None:
        """Seconds a benchmark's repetitions may take at full size (none when smoke)."""
        return None if self.smoke else BUDGET_SECONDS.get(benchmark)

    @property
    def poll_interval(self) -> float:
        return 0.2 if self.smoke else 0.5


@dataclass(frozen=True)
class Row:
    """One line of the table: a figure against its baseline, and whether the target is met."""

    benchmark: str
    figure: str
    baseline: str
    ratio: float | None
    target: str
    met: bool | None
    peak_rss: int | None
    value: float  # the headline number behind `figure` (seconds, requests/s, calls, bytes)
    group: str = ""  # the benchmark module that made the row
    # What the source, the product and the baseline each hold ("source" -> "rows" -> N), on
    # the rows that compare the product with a baseline: a fast wrong answer must not pass.
    counts: dict[str, dict[str, int]] | None = None


def compared_counts(
    source: Mapping[str, int], product: Measurement, baseline: Measurement, keys: Sequence[str]
) -> dict[str, dict[str, int]]:
    """A row's `counts`: what the source holds, and what each case reported under `keys`."""
    return {
        "source": dict(source),
        "product": {key: int(product.info(key)) for key in keys},
        "baseline": {key: int(baseline.info(key)) for key in keys},
    }


def runs_text(measurement: Measurement, config: Config) -> str:
    """How many runs a median is of, when fewer than asked for (the budget ran out)."""
    runs = len(measurement.samples)
    return "" if runs >= config.repetitions else f" [{runs} run{'s' if runs > 1 else ''}]"


def ratio_text(ratio: float | None) -> str:
    return "—" if ratio is None else f"{ratio:.2f}x"


def rss_text(size: int | None) -> str:
    return "—" if size is None else f"{size / MB:,.0f} MB"


def seconds_text(seconds: float) -> str:
    return f"{seconds:.3f} s" if seconds < 10 else f"{seconds:.1f} s"


HEADER = ("benchmark", "figure", "baseline", "ratio", "target", "met?", "peak RSS")


def format_table(rows: Sequence[Row]) -> str:
    """A Markdown table (the README's Performance section reproduces it)."""
    cells = [
        (
            row.benchmark,
            row.figure,
            row.baseline,
            ratio_text(row.ratio),
            row.target,
            {True: "yes", False: "**no**", None: "—"}[row.met],
            rss_text(row.peak_rss),
        )
        for row in rows
    ]
    widths = [max(len(line[i]) for line in [HEADER, *cells]) for i in range(len(HEADER))]

    def line(values: Sequence[str]) -> str:
        return "| " + " | ".join(v.ljust(w) for v, w in zip(values, widths, strict=True)) + " |"

    separator = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(HEADER), separator, *(line(values) for values in cells)])


LEGEND = (
    "ratio: the speed-up over the baseline where the target says 'faster', else the figure "
    "divided by the baseline.\npeak RSS: the measured process's own peak (ru_maxrss), the "
    "server's (VmHWM) on the local-service rows; each case runs in a fresh process."
)


def write_json(rows: Sequence[Row], path: Path) -> None:
    path.write_text(json.dumps([asdict(row) for row in rows], indent=2) + "\n")
