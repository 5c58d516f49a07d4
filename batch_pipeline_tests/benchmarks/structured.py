"""Benchmark 6: the results path with an output schema (5 properties: a string enum, an
integer, a number, a list of strings, a nested object) against the same path without one, over
the same answer files, in the same run; and its peak RSS at N/4 and N rows.

The answers are what a model gives under the schema; 1 in 200 is not JSON (a sentence before
the object), so the path that names what is wrong runs too, and 2% of the requests are error
lines, as in the results benchmark.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from batch_pipeline_tests.benchmarks import fixtures
from batch_pipeline_tests.benchmarks.measure import MB, Measurement, Sample, repeat, run_isolated
from batch_pipeline_tests.benchmarks.report import Config, Row, runs_text, seconds_text
from batch_pipeline_tests.benchmarks.results import link_tree, product_case, setup_case

NAME = "structured"
TARGET_RATIO = 1.3
CATEGORIES = ["billing", "delivery", "product", "account", "other"]
MOODS = ["calm", "annoyed", "angry"]
TAGS = ["refund", "late", "broken", "login", "invoice", "courier", "warranty"]
SCHEMA = {
    "type": "object",
    "properties": {
        "category": {"type": "string", "enum": CATEGORIES},
        "urgency": {"type": "integer"},
        "confidence": {"type": "number"},
        "tags": {"type": "array", "items": {"type": "string"}},
        "customer": {
            "type": "object",
            "properties": {"mood": {"type": "string"}, "repeat": {"type": "boolean"}},
            "required": ["mood", "repeat"],
        },
    },
    "required": ["category", "urgency", "confidence", "tags", "customer"],
}
NOT_JSON_EVERY = 200


def triage_answer(request: dict[str, Any], key: str) -> str:
    """A model's answer under `SCHEMA`, derived from the line's key."""
    n = int(key)
    answer = (
        f'{{"category":"{CATEGORIES[n % 5]}","urgency":{1 + n % 5},'
        f'"confidence":{(n % 100) / 100},"tags":["{TAGS[n % 7]}","{TAGS[(n // 7) % 7]}"],'
        f'"customer":{{"mood":"{MOODS[n % 3]}","repeat":{"true" if n % 2 else "false"}}}}}'
    )
    return f"Here you are: {answer}" if n % NOT_JSON_EVERY == 0 else answer


def _spec(source: Path, out: Path, structured: bool) -> dict[str, Any]:
    spec = fixtures.spec_dict(source, out, max_attempts=1)
    if structured:
        spec["request"]["output_schema"] = SCHEMA
    return spec


def run(config: Config) -> list[Row]:
    """With vs without the schema at N rows (alternated), and with it at N/4 for memory."""
    root = config.workdir / NAME
    small = max(config.rows // 4, 1)
    cases = {"structured": (config.rows, True), "plain": (config.rows, False)}
    cases["structured-small"] = (small, True)
    specs, files = {}, {}
    for name, (rows, structured) in cases.items():
        base = root / name
        source = fixtures.source_path(config.workdir, rows)
        files[name] = base / "files"
        template = fixtures.write_spec(
            base / "template.yaml", _spec(source, base / "template", structured)
        )
        run_isolated(setup_case, template, files[name], triage_answer)
        specs[name] = fixtures.write_spec(
            base / "run.yaml", _spec(source, base / "run", structured)
        )
    measured = {name: Measurement(name) for name in cases}

    def one(measurement: Measurement, _repetition: int) -> Sample:
        base = root / measurement.name
        link_tree(base / "template", base / "run")
        return run_isolated(product_case, specs[measurement.name], files[measurement.name])

    structured, plain, quarter = measured.values()
    repeat([structured, plain], one, config.repetitions, budget_seconds=config.budget(NAME))
    quarter.add(one(quarter, 0))
    shutil.rmtree(root, ignore_errors=True)

    ratio = structured.seconds / plain.seconds
    flat = structured.peak_rss / quarter.peak_rss
    return [
        Row(
            f"typed output columns, {config.rows:,} rows, 5-property schema vs none",
            f"{seconds_text(structured.seconds)}{runs_text(structured, config)} (collect "
            f"{seconds_text(structured.info('collect_seconds'))} + join "
            f"{seconds_text(structured.info('join_seconds'))})",
            f"same answers, no schema {seconds_text(plain.seconds)}{runs_text(plain, config)}",
            ratio,
            f"≤ {TARGET_RATIO}x",
            ratio <= TARGET_RATIO,
            structured.peak_rss,
            structured.seconds,
        ),
        Row(
            f"typed output columns, peak RSS {config.rows:,} vs {small:,} rows",
            f"{structured.peak_rss / MB:,.0f} MB at {config.rows:,}",
            f"{quarter.peak_rss / MB:,.0f} MB at {small:,} ({seconds_text(quarter.seconds)})",
            flat,
            "≤ 1.2x",
            flat <= 1.2,
            structured.peak_rss,
            structured.peak_rss,
        ),
    ]
