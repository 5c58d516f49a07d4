"""The demo: a generated support-ticket table, its spec, and a run with Dagster in the loop.

`batch-pipeline demo` (`run_from_args`) runs offline: it starts the local Batch API in this process,
materializes `requests` and `batches` for three days on a temporary Dagster instance, evaluates
the sensor until it asks for the results runs, runs them with their checks, and prints where
the Parquet is with a summary per status. It does the same for the tickets triaged into an
output schema, for the tickets sent to Claude through Anthropic's Message Batches (the
service speaks both dialects), and for a judge pipeline that grades the triage answers, its
rows read from the triage pipeline's results asset. `batch_pipeline/definitions.py` serves
the same four pipelines to the Dagster UI (`dg dev`), against `batch-pipeline serve` running
beside it.
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from batch_pipeline.core import layout
from batch_pipeline.core.spec import PipelineSpec

if TYPE_CHECKING:  # Dagster and pandas are imported only when the demo runs
    from collections.abc import Callable

    import dagster as dg
    import pandas as pd

DEMO_PIPELINE = "ticket_triage"
# The same tickets triaged into typed fields: an output schema makes output_* columns.
TYPED_PIPELINE = "ticket_triage_typed"
TRIAGE_SCHEMA = {
    "title": "ticket_triage",
    "type": "object",
    "properties": {
        "category": {"type": "string", "enum": ["shipping", "billing", "account", "bug", "other"]},
        "urgency": {"type": "integer", "minimum": 1, "maximum": 5},
        "tags": {"type": "array", "items": {"type": "string"}},
        "summary": {"type": "string"},
    },
    "required": ["category", "urgency", "tags", "summary"],
    "additionalProperties": False,
}
JUDGE_PIPELINE = "ticket_triage_judge"
CLAUDE_PIPELINE = "ticket_triage_claude"
CLAUDE_SPEC_FILE = "pipeline_claude.yaml"
# The local service asks no key; the SDK sends this one (not a secret).
LOCAL_ANTHROPIC_KEY = "local-no-key"
DEMO_DAYS = ("2026-11-18", "2026-11-19", "2026-11-20")
DEMO_ROWS_PER_DAY = 100
DEMO_DIR_ENV = "BATCH_PIPELINE_DEMO_DIR"
DEMO_API_URL_ENV = "BATCH_PIPELINE_DEMO_API_URL"
# The ledger of the demo in the Dagster UI (a database URL, PostgreSQL in production); a SQLite
# file in its folder when unset. The spec names the variable, so a password stays out of it.
DEMO_LEDGER_URL_ENV = "BATCH_PIPELINE_DEMO_LEDGER_URL"
SERVE_URL = "http://127.0.0.1:8780/v1"
DEMO_COMPLETION_WINDOW_SECONDS = 4.0
TICK_INTERVAL_SECONDS = 1.0
DEMO_TIMEOUT_SECONDS = 180.0
SOURCE_FILE = "tickets.parquet"
QUIET_RUN_CONFIG = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
SPEC_FILE = "pipeline.yaml"
TYPED_SPEC_FILE = "pipeline_typed.yaml"
JUDGE_SPEC_FILE = "pipeline_judge.yaml"

_TOPICS = {
    "shipping": ("Where is my parcel?", "Order {n} was due on Monday and has not arrived yet."),
    "billing": ("Charged twice", "My card was charged twice for invoice {n}. Please refund one."),
    "account": ("Cannot log in", "The password reset mail for account {n} never arrives."),
    "bug": ("App crashes", "The app closes as soon as I open the orders tab (build {n})."),
    "other": ("Thank you", "Just wanted to say the support on case {n} was great."),
}
# Rows the local Batch API fails on purpose, or that the pipeline rejects, so every status
# shows: <<fail:500>> is retried and then fails, <<fail:400>> fails at once, <<hang>> is never
# answered (it expires at the end of the completion window).
_FAILED_DAY = DEMO_DAYS[2]
_FAILED_DAY_400_ROWS = 8


def demo_rows() -> list[dict[str, Any]]:
    """The sample tickets: a hundred a day, the same every time, with a few bad rows."""
    rng = random.Random(20261118)
    rows: list[dict[str, Any]] = []
    for day_index, day in enumerate(DEMO_DAYS):
        start = datetime.combine(date.fromisoformat(day), datetime.min.time())
        for i in range(DEMO_ROWS_PER_DAY):
            topic = rng.choice(sorted(_TOPICS))
            subject, body = _TOPICS[topic]
            number = day_index * DEMO_ROWS_PER_DAY + i + 1
            rows.append(
                {
                    "ticket_id": f"TCK-{number:05d}",
                    "created_at": start + timedelta(minutes=rng.randrange(24 * 60)),
                    "channel": rng.choice(["email", "chat", "phone"]),
                    "subject": subject,
                    "body": body.format(n=10_000 + number),
                }
            )
    _add_bad_rows(rows)
    return rows


def _add_bad_rows(rows: list[dict[str, Any]]) -> None:
    by_day: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_day.setdefault(row["created_at"].date().isoformat(), []).append(row)
    first, second, third = (by_day[day] for day in DEMO_DAYS)
    first[3]["body"] = None  # rejected: nothing to send
    rows.append({**first[10], "subject": "Re: " + first[10]["subject"]})  # duplicate key
    first[20]["body"] = "<<fail:500>> the service keeps failing on this one"
    second[5]["body"] = "<<fail:400>> the service refuses this one"
    second[30]["body"] = "<<hang>> the service never answers this one"
    for row in third[:_FAILED_DAY_400_ROWS]:  # a bad day: above the failed-share limit
        row["body"] = "<<fail:400>> " + row["body"]


def demo_spec_data(*, base_url: str, start: str = DEMO_DAYS[0]) -> dict[str, Any]:
    """The demo pipeline spec, as it is written to pipeline.yaml."""
    return {
        "name": DEMO_PIPELINE,
        "source": {"path": SOURCE_FILE, "key": "ticket_id", "partition_column": "created_at"},
        "request": {
            "endpoint": "/v1/chat/completions",
            "model": "gpt-4o-mini",
            "system": "You triage customer support tickets. Answer with one label: "
            "shipping, billing, account, bug or other.",
            "prompt": "Channel: {channel}\nSubject: {subject}\n\n{body}",
            "params": {"max_tokens": 20, "temperature": 0},
        },
        "backend": {"provider": "local", "base_url": base_url},
        "retry": {"max_attempts": 3},
        "output": {"dir": "out"},
        "partitions": {"start": start},
        "schedule": {"cron": "0 1 * * *", "timezone": "UTC"},
        "checks": {"max_failed_share": 0.05},
    }


def typed_demo_spec_data(*, base_url: str, start: str = DEMO_DAYS[0]) -> dict[str, Any]:
    """The structured demo pipeline: the same tickets, answered in `TRIAGE_SCHEMA`."""
    data = demo_spec_data(base_url=base_url, start=start)
    data["name"] = TYPED_PIPELINE
    data["request"] = {
        **data["request"],
        "system": "You triage customer support tickets: a category, an urgency from 1 to 5, "
        "a few tags and a one-line summary.",
        "params": {"max_tokens": 200, "temperature": 0},
        "output_schema": TRIAGE_SCHEMA,
    }
    return data


def judge_spec_data(*, base_url: str, start: str = DEMO_DAYS[0]) -> dict[str, Any]:
    """The judge pipeline: a second model grades the triage pipeline's answers, reading the
    rows of its `results` asset, day by day (LLM-as-a-judge)."""
    data = demo_spec_data(base_url=base_url, start=start)
    data["name"] = JUDGE_PIPELINE
    data["source"] = {
        "asset_key": f"{DEMO_PIPELINE}/results",
        "key": "ticket_id",
        "partition_column": "created_at",
    }
    data["request"] = {
        **data["request"],
        "model": "gpt-4o",
        "system": "You check the labels given to customer support tickets. Answer yes if the "
        "label fits the ticket, else no.",
        "prompt": "Subject: {subject}\n\n{body}\n\nLabel given: {response_text}",
        "params": {"max_tokens": 5, "temperature": 0},
    }
    return data


def claude_spec_data(*, base_url: str, start: str = DEMO_DAYS[0]) -> dict[str, Any]:
    """The demo pipeline moved to Claude: another name, the Messages endpoint, a Claude
    model, `provider: anthropic`; the rest as it was."""
    data = demo_spec_data(base_url=base_url, start=start)
    data["name"] = CLAUDE_PIPELINE
    data["request"] = {
        **data["request"],
        "endpoint": "/v1/messages",
        "model": "claude-haiku-4-5",
    }
    data["backend"] = {"provider": "anthropic", "base_url": base_url}
    return data


DEMO_SPECS: tuple[tuple[str, Callable[..., dict[str, Any]]], ...] = (
    (SPEC_FILE, demo_spec_data),
    (TYPED_SPEC_FILE, typed_demo_spec_data),
    (CLAUDE_SPEC_FILE, claude_spec_data),
    (JUDGE_SPEC_FILE, judge_spec_data),
)


def write_demo(folder: str | Path, *, base_url: str) -> PipelineSpec:
    """Write the sample table (if missing) and the pipelines' specs into `folder`
    (pipeline.yaml; pipeline_typed.yaml for the structured one, pipeline_claude.yaml for
    Claude's, pipeline_judge.yaml for the judge of the first one's answers); return the first."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    source = folder / SOURCE_FILE
    if not source.exists():
        import pandas as pd

        temporary = source.with_name(f".tmp-{os.getpid()}-{SOURCE_FILE}")
        pd.DataFrame(demo_rows()).to_parquet(temporary, index=False)
        temporary.replace(source)
    specs = []
    for name, spec_data in DEMO_SPECS:
        spec_path = folder / name
        text = yaml.safe_dump(spec_data(base_url=base_url), sort_keys=False)
        if not spec_path.exists() or spec_path.read_text(encoding="utf-8") != text:
            temporary = spec_path.with_name(f".tmp-{os.getpid()}-{name}")
            temporary.write_text(text, encoding="utf-8")
            temporary.replace(spec_path)
        specs.append(PipelineSpec.from_yaml(spec_path))
    return specs[0]


def ui_demo_folder() -> Path:
    """Where the Dagster UI keeps the demo: $BATCH_PIPELINE_DEMO_DIR or ./demo_output/ui."""
    return Path(os.environ.get(DEMO_DIR_ENV) or Path("demo_output") / "ui").resolve()


def ui_demo_specs() -> list[PipelineSpec]:
    """The demo specs for the Dagster UI, against `batch-pipeline serve` on port 8780 (or
    $BATCH_PIPELINE_DEMO_API_URL), their ledger at $BATCH_PIPELINE_DEMO_LEDGER_URL if set.

    They write nothing: their folder is filled by `write_demo` when a run first needs it.
    The judge pipeline reads the triage pipeline's results asset, downstream of it.
    """
    base_url = os.environ.get(DEMO_API_URL_ENV) or SERVE_URL
    specs = []
    for _, spec_data in DEMO_SPECS:
        data = spec_data(base_url=base_url)
        if os.environ.get(DEMO_LEDGER_URL_ENV):
            data["ledger"] = {"url_env": DEMO_LEDGER_URL_ENV}
        specs.append(PipelineSpec.from_dict(data, base_dir=ui_demo_folder()))
    return specs


def demo_backend_config(spec: PipelineSpec) -> dict[str, Any]:
    """The backend resource's config of a demo pipeline: its provider and URL, and for
    Claude's the key the SDK must send (the local service asks none; not a secret)."""
    config: dict[str, Any] = {"provider": spec.backend.provider, "base_url": spec.backend.base_url}
    if spec.backend.provider == "anthropic":
        config["api_key"] = LOCAL_ANTHROPIC_KEY
    return config


# -- the demo run ----------------------------------------------------------------------------


@dataclass(frozen=True)
class DemoResult:
    """What the demo produced: the results folder, a summary row per day, and whether every
    results run succeeded with its blocking check passed."""

    results_dir: Path
    summary: pd.DataFrame
    checks_passed: bool


def run_demo(
    folder: str | Path = Path("demo_output") / "cli",
    *,
    completion_window_seconds: float = DEMO_COMPLETION_WINDOW_SECONDS,
    timeout_seconds: float = DEMO_TIMEOUT_SECONDS,
    echo: bool = True,
    dagster_home: str | Path | None = None,
) -> DemoResult:
    """Run the demo end to end, offline, with Dagster in the loop (see the module docstring).

    The pipeline's earlier output in `folder` is removed first, so every run starts afresh.
    Its runs are recorded in a temporary Dagster instance, or in the one at `dagster_home`
    (a folder, as $DAGSTER_HOME), which the Dagster UI then shows.
    """
    import dagster as dg

    from batch_pipeline.dagster import BatchBackendResource
    from batch_pipeline.local_api.server import run_local_batch_api

    say = print if echo else _silent
    folder = Path(folder).resolve()
    shutil.rmtree(folder / "out", ignore_errors=True)
    shutil.rmtree(folder / "batch_api", ignore_errors=True)
    with (
        _quiet_dagster(),
        run_local_batch_api(
            folder / "batch_api", port=0, completion_window_seconds=completion_window_seconds
        ) as base_url,
    ):
        write_demo(folder, base_url=base_url)
        spec, typed, claude, judge = (
            PipelineSpec.from_yaml(folder / name) for name, _ in DEMO_SPECS
        )
        say(f"Local Batch API at {base_url}; the pipeline specs are in {folder}")
        with _demo_instance(dagster_home) as instance:
            runs = [
                _run_pipeline(
                    one,
                    instance,
                    timeout_seconds,
                    say,
                    backend=BatchBackendResource(**demo_backend_config(one)),
                )
                for one in (spec, typed, claude)
            ]
            runs.append(  # one day: enough to show the chain, and the demo stays quick
                _run_pipeline(
                    judge,
                    instance,
                    timeout_seconds,
                    say,
                    backend=BatchBackendResource(**demo_backend_config(judge)),
                    upstream=spec,
                    days=DEMO_DAYS[:1],
                )
            )
    results = [result for found, _ in runs for result in found]
    checks = [e for _, found in runs for e in found]
    summary = _summary_table(spec, runs[0][1])
    result = DemoResult(
        results_dir=spec.pipeline_dir / layout.results_dir(),
        summary=summary,
        checks_passed=all(r.success for r in results)
        and all(e.passed for e in checks if e.severity is dg.AssetCheckSeverity.ERROR),
    )
    say("")
    say(summary.to_string())
    say("")
    say(f"Results (Parquet, one folder per day): {result.results_dir}")
    say(f"Read them with: pandas.read_parquet({str(result.results_dir)!r})")
    say("")
    say(f"{typed.name}: the same tickets answered in a schema, as typed output_* columns:")
    say(_summary_table(typed, runs[1][1]).to_string())
    say(_typed_preview(typed).to_string(index=False))
    say(f"Results: {typed.pipeline_dir / layout.results_dir()}")
    say("")
    say(f"{claude.name}: the same tickets through Anthropic's Message Batches:")
    say(_summary_table(claude, runs[2][1]).to_string())
    say(f"Results: {claude.pipeline_dir / layout.results_dir()}")
    say("")
    say(f"{judge.name}: a second model grades {spec.name}'s answers of {DEMO_DAYS[0]}, read from")
    say("its results asset (rows whose answer failed are rejected: nothing to grade):")
    say(_summary_table(judge, runs[3][1]).to_string())
    say(f"Results: {judge.pipeline_dir / layout.results_dir()}")
    return result


def _run_pipeline(
    spec: PipelineSpec,
    instance: dg.DagsterInstance,
    timeout_seconds: float,
    say: Callable[..., object],
    *,
    backend: Any = None,
    upstream: PipelineSpec | None = None,
    days: Sequence[str] = DEMO_DAYS,
) -> tuple[list[dg.ExecuteInProcessResult], list[dg.AssetCheckEvaluation]]:
    """Submit the demo `days` of one pipeline, then run the results runs its sensor asks for;
    the results runs and their check evaluations. `upstream`: the pipeline whose results
    asset the rows come from, in the same Definitions."""
    import dagster as dg

    from batch_pipeline.dagster import build_batch_pipeline_defs

    defs = build_batch_pipeline_defs(spec=spec, backend=backend)
    if upstream is not None:
        defs = dg.Definitions.merge(defs, build_batch_pipeline_defs(spec=upstream))
    for day in days:
        submit_job = defs.resolve_job_def(f"{spec.name}_submit_job")
        submit_job.execute_in_process(
            partition_key=day, instance=instance, run_config=QUIET_RUN_CONFIG
        )
        say(f"{spec.name} {day}: requests built and batches submitted")
    results = []
    for request in sensor_run_requests(
        defs,
        spec,
        instance,
        expected=len(days),
        timeout_seconds=timeout_seconds,
        on_skip=lambda reason: say(f"{spec.name} sensor: {reason}"),
        log_level=logging.WARNING,
    ):
        say(f"{spec.name} sensor: results run requested for {request.partition_key}")
        results.append(execute_run_request(defs, request, instance))
    return results, [e for r in results for e in r.get_asset_check_evaluations()]


def _typed_preview(spec: PipelineSpec, rows: int = 5) -> pd.DataFrame:
    """The first succeeded rows' key and typed output columns."""
    from batch_pipeline.core.pipeline import read_results

    results = read_results(spec)
    columns = ["ticket_id", *spec.output_schema.column_names] if spec.output_schema else []
    return results[results["status"] == "succeeded"][columns].head(rows)


def sensor_run_requests(
    defs: dg.Definitions,
    spec: PipelineSpec,
    instance: dg.DagsterInstance,
    *,
    expected: int,
    timeout_seconds: float,
    on_skip: Callable[[str], object] | None = None,
    log_level: int = logging.INFO,
) -> Iterator[dg.RunRequest]:
    """Evaluate the pipeline's sensor, tick after tick, until it has asked for `expected`
    results runs; yields each run request as it comes (a run key once only, as the daemon
    launches it: the sensor asks again for a day until its run exists)."""
    import dagster as dg

    sensor = defs.resolve_sensor_def(f"{spec.name}_batch_sensor")
    cursor = None
    requested = 0
    seen: set[str | None] = set()
    deadline = time.monotonic() + timeout_seconds
    last_skip = None
    while requested < expected:
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"the sensor asked for {requested} of {expected} results runs "
                f"within {timeout_seconds:.0f} s"
            )
        context = dg.build_sensor_context(instance=instance, cursor=cursor, definitions=defs)
        context.log.setLevel(log_level)
        result = sensor(context)
        cursor = result.cursor
        for request in result.run_requests or []:
            if request.run_key in seen:
                continue
            seen.add(request.run_key)
            requested += 1
            yield request
        if result.skip_reason and result.skip_reason.skip_message != last_skip:
            last_skip = result.skip_reason.skip_message
            if on_skip:
                on_skip(last_skip)
        if requested < expected:
            time.sleep(TICK_INTERVAL_SECONDS)


def execute_run_request(
    defs: dg.Definitions, request: dg.RunRequest, instance: dg.DagsterInstance
) -> dg.ExecuteInProcessResult:
    """Run a sensor's asset run request in this process, as the daemon would launch it."""
    job = defs.resolve_implicit_global_asset_job_def()
    return job.execute_in_process(
        instance=instance,
        partition_key=request.partition_key,
        asset_selection=list(request.asset_selection),
        tags=dict(request.tags),
        run_config=QUIET_RUN_CONFIG,
        raise_on_error=False,
    )


def _summary_table(spec: PipelineSpec, checks: Sequence[dg.AssetCheckEvaluation]) -> pd.DataFrame:
    """Rows per day and status, and each check's outcome per day."""
    from batch_pipeline.core.pipeline import read_results
    from batch_pipeline.core.types import RowStatus

    results = read_results(spec)
    import pandas as pd

    table = pd.crosstab(results["partition"], results["status"]).reindex(
        columns=[status.value for status in RowStatus], fill_value=0
    )
    table["rows"] = table.sum(axis=1)
    for evaluation in checks:
        outcome = "passed" if evaluation.passed else evaluation.severity.value
        table.loc[evaluation.partition, evaluation.check_name] = outcome
    table.index.name = "day"
    table.columns.name = None
    return table


@contextmanager
def _demo_instance(home: str | Path | None) -> Iterator[dg.DagsterInstance]:
    """The Dagster instance at `home`, or a temporary one removed afterwards."""
    import dagster as dg

    with (
        tempfile.TemporaryDirectory(prefix="batch_pipeline_demo_") as temporary,
        dg.DagsterInstance.local_temp(str(home or temporary)) as instance,
    ):
        yield instance


@contextmanager
def _quiet_dagster() -> Iterator[None]:
    """Keep the demo's output to what it prints: Dagster's own logs and warnings go quiet."""
    logger = logging.getLogger("dagster")
    level = logger.level
    logger.setLevel(logging.WARNING)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            yield
        finally:
            logger.setLevel(level)


def _silent(*_: object) -> None:
    return None


def run_from_args(args: argparse.Namespace) -> int:
    """Run the demo as the command line asked; 0 when every row is accounted for."""
    window = args.completion_window_seconds or DEMO_COMPLETION_WINDOW_SECONDS
    try:
        result = run_demo(args.dir, completion_window_seconds=window)
    except TimeoutError as exc:
        print(f"demo did not finish: {exc}", file=sys.stderr)
        return 1
    return 0 if result.checks_passed else 1
