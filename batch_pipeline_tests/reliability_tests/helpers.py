"""What every reliability scenario shares: the figures it adds to, specs and rows, child
processes, and the checks that hold after each scenario (rows once, batches once, files whole,
no key anywhere)."""

from __future__ import annotations

import io
import os
import re
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path, PurePosixPath
from typing import Any

import openai
import orjson
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import sqlalchemy as sa
import yaml

from batch_pipeline.core.batch_identity import SUBMISSION_METADATA_KEY
from batch_pipeline.core.leases import lease_holder_is_dead
from batch_pipeline.core.pipeline import Pipeline, PipelineError, ResultsSummary
from batch_pipeline.core.spec import PipelineSpec
from batch_pipeline.core.storage import TEMP_PREFIX, LocalStorage
from batch_pipeline.core.tuning import Tuning
from batch_pipeline.local_api import LocalApiSettings, LocalBatchApi
from batch_pipeline_tests.conftest import ticket_spec, write_tickets
from batch_pipeline_tests.reliability_tests.anthropic_checks import anthropic_batches_by_shard

REPO_ROOT = Path(__file__).resolve().parents[2]
LEAK_ENV = "BP_RELIABILITY_API_KEY"
LEDGER_ENV = "BP_RELIABILITY_LEDGER_URL"  # a pipeline on object storage reads its ledger here
ROOT_ENV = "BP_RELIABILITY_STORAGE_ROOT"  # s3://bucket/prefix of the source and the output
API_URL_ENV = "BP_RELIABILITY_API_URL"
DEMO_PER_FILE = 40  # a few shards a day
LEAK_KEY = "sk-reliability-LEAKCHECK-7f3a9c1e5b2d4f60a8e1c3b5d7f9a2c4"
# The object store's secret key, set as AWS_SECRET_ACCESS_KEY wherever storage is used.
STORAGE_SECRET = "LEAKCHECK/storage+secret/9d2e7b41c6a85f03e1d4b7a9c2f6e8"
# Each secret whole, its tail (what "Incorrect API key sk-...2c4"-style echoes keep) and the
# marker both carry.
LEAK_NEEDLES = (LEAK_KEY, LEAK_KEY[-16:], STORAGE_SECRET, STORAGE_SECRET[-16:], "LEAKCHECK")
DAY = "2026-11-20"
OTHER_DAY = "2026-11-21"
POLL_INTERVAL = 0.2
RUN_TIMEOUT = 15.0
CHILD_TIMEOUT = 120.0
SHORT_WINDOW = 2.0
KEY_COLUMN = "ticket_id"
_LEDGER_SIDE_FILES = ("-wal", "-shm", "-journal")
_SHARD_UPLOAD = r"_\d{4}-\d{2}-\d{2}_g\d+_a\d+_s\d{5}-"


# -- the figures ------------------------------------------------------------------------------


@dataclass
class Tally:
    """The suite's figures, added to as scenarios run and printed at the end of the session."""

    scenarios: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    crashes: int = 0
    rows_checked: int = 0
    duplicate_rows: int = 0
    duplicate_batches: int = 0
    rows_lost: int = 0
    rows_undelivered: int = 0
    keys_leaked: int = 0
    log_lines: int = 0
    files_scanned: int = 0
    ledger_rows: int = 0
    dagster_events: int = 0
    files_checked: int = 0
    in_known_bugs: Counter[str] = field(default_factory=Counter)  # from xfailed scenarios

    @property
    def duplicates(self) -> int:
        return self.duplicate_rows + self.duplicate_batches

    def losses(self) -> Counter[str]:
        """The counters that must stay at zero, as they stand."""
        return Counter(
            duplicates=self.duplicates,
            rows_lost=self.rows_lost,
            rows_undelivered=self.rows_undelivered,
            keys_leaked=self.keys_leaked,
        )

    def blame_known_bug(self, before: Counter[str]) -> None:
        """An xfailed scenario (a known product bug) made the losses since `before`."""
        self.in_known_bugs.update(self.losses() - before)

    def summary(self) -> str:
        outcomes = ", ".join(f"{n} {name}" for name, n in sorted(self.outcomes.items()))
        return (
            f"reliability: {self.scenarios} scenarios tried ({outcomes}); "
            f"{self.crashes} crashes injected; {self.rows_checked} rows checked; "
            f"{self.duplicates} duplicates found ({self.duplicate_rows} rows, "
            f"{self.duplicate_batches} paid batches); {self.rows_lost} rows lost"
            + (
                f" ({self.rows_undelivered} more not delivered in time)"
                if self.rows_undelivered
                else ""
            )
            + f"; {self.keys_leaked} keys leaked (scanned {self.log_lines} log/output lines, "
            f"{self.files_scanned} files, {self.ledger_rows} ledger rows, "
            f"{self.dagster_events} Dagster event records)"
            + (
                "; of these, the xfailed scenarios (known product bugs) account for "
                + ", ".join(
                    f"{n} {what.replace('_', ' ')}"
                    for what, n in sorted(self.in_known_bugs.items())
                )
                if self.in_known_bugs
                else ""
            )
        )

    # -- secrets --------------------------------------------------------------------------------

    def scan_text(self, where: str, text: str) -> list[str]:
        """Places in `text` where the key (or a piece of it) appears; counts the lines."""
        self.log_lines += text.count("\n") + (1 if text else 0)
        hits = [f"{where}: {needle!r}" for needle in LEAK_NEEDLES if needle in text]
        self.keys_leaked += len(hits)
        return hits

    def scan_records(self, where: str, records: Iterable[Any], *, counter: str) -> list[str]:
        """Scan the text of each record (ledger rows, Dagster events)."""
        hits: list[str] = []
        for record in records:
            setattr(self, counter, getattr(self, counter) + 1)
            text = str(record)
            hits += [f"{where}: {needle!r}" for needle in LEAK_NEEDLES if needle in text]
        self.keys_leaked += len(hits)
        return hits

    def scan_tree(self, root: Path) -> list[str]:
        """Every file under `root` (ledger, manifests, shards, Parquet, service state)."""
        if not root.exists():
            return []
        files = sorted(p for p in root.rglob("*") if p.is_file())
        return self.scan_files((str(path), path.read_bytes) for path in files)

    def scan_files(self, files: Iterable[tuple[str, Callable[[], bytes]]]) -> list[str]:
        """Files (or objects) given as a name and a way to read them."""
        hits: list[str] = []
        for where, read in files:
            self.files_scanned += 1
            data = read()
            hits += [f"{where}: {needle!r}" for needle in LEAK_NEEDLES if needle.encode() in data]
        self.keys_leaked += len(hits)
        return hits

    # -- rows ----------------------------------------------------------------------------------

    def check_rows_once(
        self, results: pd.DataFrame, expected_keys: Sequence[Any], *, key: str = KEY_COLUMN
    ) -> None:
        """Every expected key as often in the results as in the source, nothing else."""
        got = Counter(_key_text(value) for value in results[key])
        want = Counter(_key_text(value) for value in expected_keys)
        extra, missing = got - want, want - got
        self.rows_checked += sum(want.values())
        self.duplicate_rows += sum(extra.values())
        self.rows_lost += sum(missing.values())
        assert not extra and not missing, (
            f"duplicated rows {dict(extra)}, lost rows {dict(missing)}"
        )

    def undelivered(self, rows: int) -> None:
        self.rows_undelivered += rows


def _key_text(value: Any) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "<null>"
    return str(value)


def assert_no_leak(hits: list[str]) -> None:
    assert not hits, "the API key was found in: " + "; ".join(hits[:10])


# -- rows and specs ---------------------------------------------------------------------------


def at(day: str = DAY, hour: int = 10) -> datetime:
    return datetime.combine(date.fromisoformat(day), datetime.min.time()) + timedelta(hours=hour)


def ticket_rows(
    count: int, *, prefix: str = "R", day: str = DAY, body: Callable[[int], str] | None = None
) -> list[dict[str, Any]]:
    """`count` support tickets of `day`, keys `{prefix}{i}`."""
    return [
        {
            KEY_COLUMN: f"{prefix}{i}",
            "subject": f"Order {i}",
            "body": body(i) if body else f"My parcel {i} is late.",
            "created_at": at(day, 8 + i % 12),
        }
        for i in range(count)
    ]


def rows_with_bodies(bodies: dict[str, str], *, day: str = DAY) -> list[dict[str, Any]]:
    """One ticket per key, with the given body text (fault triggers go there)."""
    return [
        {KEY_COLUMN: key, "subject": f"About {key}", "body": body, "created_at": at(day)}
        for key, body in bodies.items()
    ]


def keys_of(rows: Iterable[dict[str, Any]], day: str = DAY) -> list[Any]:
    """The keys of the rows that fall on `day`: what that partition's results must hold."""
    return [row[KEY_COLUMN] for row in rows if row["created_at"].date().isoformat() == day]


def spec_data(base_url: str, name: str, tmp_path: Path, **overrides: Any) -> dict[str, Any]:
    """The shared ticket spec, named, with its key read from the leak-check variable. The
    provider's files are kept: the checks count the uploads on the service."""
    backend = {"api_key_env": LEAK_ENV, **overrides.pop("backend", {})}
    output = {"keep_provider_files": True, **overrides.pop("output", {})}
    data = ticket_spec(tmp_path, base_url, backend=backend, output=output, **overrides)
    data["name"] = name
    return data


def write_pipeline(
    tmp_path: Path, base_url: str, name: str, rows: list[dict[str, Any]], **overrides: Any
) -> Path:
    """Write `tickets.parquet` and `pipeline.yaml` into tmp_path; returns the spec's path."""
    write_tickets(tmp_path / "tickets.parquet", rows)
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(spec_data(base_url, name, tmp_path, **overrides)))
    return path


def put_table(store: Any, uri: str, rows: list[dict[str, Any]]) -> None:
    """Upload `rows` as one Parquet object at `s3://bucket/key`, through the test's own client
    of the S3 server `store`."""
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    buffer = io.BytesIO()
    pd.DataFrame(rows).to_parquet(buffer, index=False)
    store.client().put_object(Bucket=bucket, Key=key, Body=buffer.getvalue())


@dataclass(frozen=True)
class OnStore:
    """Where a test puts a pipeline on object storage: a bucket of the S3 server `store`, the
    Batch API at `base_url`, a PostgreSQL ledger; the spec goes to `code`, as the image every
    process runs ships it."""

    code: Path
    store: Any
    bucket: str
    base_url: str
    name: str
    ledger_url: str

    @property
    def root(self) -> str:
        return f"s3://{self.bucket}/{self.name}"

    def write(self, rows: list[dict[str, Any]], **overrides: Any) -> Path:
        """The shared ticket spec with its source table (uploaded) and its output in the
        bucket and its ledger's URL read from `LEDGER_ENV`; returns the spec's path."""
        put_table(self.store, f"{self.root}/tickets.parquet", rows)
        data = spec_data(
            self.base_url,
            self.name,
            self.code,
            source={"path": f"{self.root}/tickets.parquet"},
            output={"dir": f"{self.root}/out"},
            ledger={"url_env": LEDGER_ENV},
            **overrides,
        )
        return self.write_spec(data)

    def write_spec(self, data: dict[str, Any]) -> Path:
        self.code.mkdir(parents=True, exist_ok=True)
        path = self.code / "pipeline.yaml"
        path.write_text(yaml.safe_dump(data))
        return path

    def environment(self) -> dict[str, str]:
        """All another process is given: the store's endpoint and credentials as this test
        holds them (the leak-check secret), the ledger's URL and the Batch API's key."""
        storage = {variable: os.environ[variable] for variable in self.store.env()}
        return {**storage, LEDGER_ENV: self.ledger_url, LEAK_ENV: LEAK_KEY}


def demo_on_store(root: str, base_url: str) -> dict[str, Any]:
    """The demo's spec with its source at `{root}/tickets.parquet`, its output under
    `{root}/out` and its ledger's URL in `LEDGER_ENV`."""
    from batch_pipeline.demo import SOURCE_FILE, demo_spec_data

    data = demo_spec_data(base_url=base_url)
    data["source"]["path"] = f"{root}/{SOURCE_FILE}"
    data["output"] = {"dir": f"{root}/out"}
    data["ledger"] = {"url_env": LEDGER_ENV}
    data["backend"]["api_key_env"] = LEAK_ENV
    data["limits"] = {"max_requests_per_file": DEMO_PER_FILE}
    return data


def ledger_url_for(kind: str, postgres_url: str | None) -> dict[str, Any]:
    """The `ledger:` override for a parametrised ledger kind."""
    return {"url": postgres_url} if kind == "postgresql" else {}


# -- running a partition ----------------------------------------------------------------------


def describe_shards(pipeline: Pipeline, partition: str | None = None) -> str:
    """The ledger's shards, for failure messages: state, lease holder, batch, last error."""
    lines = []
    for shard in pipeline.ledger.shards(pipeline.spec.name, partition=partition):
        holder = shard.lease_owner or "-"
        if shard.lease_owner and lease_holder_is_dead(shard.lease_owner):
            holder += " (DEAD)"
        lines.append(
            f"{shard.shard_id} {shard.state.value} lease={holder} "
            f"batch={shard.batch_id}/{shard.batch_status} last_error={shard.last_error}"
        )
    return "\n  ".join(lines)


def run_partition(
    spec: PipelineSpec,
    tally: Tally,
    expected_keys: Sequence[Any],
    partition: str = DAY,
    *,
    timeout: float = RUN_TIMEOUT,
    tuning: Tuning | None = None,
    **options: Any,
) -> tuple[ResultsSummary, pd.DataFrame]:
    """Run the partition to its results in this process and check every row is there once."""
    with Pipeline(spec, tuning=tuning) as pipeline:
        try:
            summary = pipeline.run(
                partition, poll_interval=POLL_INTERVAL, timeout=timeout, **options
            )
        except Exception as exc:
            tally.undelivered(len(expected_keys))
            if isinstance(exc, PipelineError):  # say where it is stuck
                raise AssertionError(f"{exc}\n  {describe_shards(pipeline, partition)}") from None
            raise
    assert isinstance(summary, ResultsSummary)
    results = pd.read_parquet(summary.path)
    tally.check_rows_once(results, expected_keys)
    assert summary.rows == len(results)
    return summary, results


def by_key(results: pd.DataFrame) -> pd.DataFrame:
    return results.set_index(KEY_COLUMN)


def wait_until(condition: Callable[[], Any], what: str, timeout: float = 30.0) -> Any:
    """Poll `condition()` until it returns something truthy (bounded: a hang is a failure)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


# -- child processes --------------------------------------------------------------------------


def child_env(**extra: str) -> dict[str, str]:
    env = {**os.environ, **extra}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    return env


def child_command(*args: str) -> list[str]:
    """The reliability child (`child.py`): runs partitions, maybe crashing on the way."""
    return [sys.executable, "-m", "batch_pipeline_tests.reliability_tests.child", *args]


def cli_command(*args: str) -> list[str]:
    """`batch-pipeline ...`, the installed console script."""
    script = Path(sys.executable).with_name("batch-pipeline")
    if script.exists():
        return [str(script), *args]
    return [sys.executable, "-m", "batch_pipeline.cli", *args]


def start_child(
    command: list[str], *, own_group: bool = False, **env: str
) -> subprocess.Popen[str]:
    """The command in a child process; `own_group`: leading a process group of its own, which
    a kill of the group ends with every process the child started."""
    return subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO_ROOT,
        env=child_env(**env),
        start_new_session=own_group,
    )


def finish_child(
    process: subprocess.Popen[str], tally: Tally, *, timeout: float = CHILD_TIMEOUT
) -> subprocess.CompletedProcess[str]:
    """Wait (bounded: a hang is a failure, not a stuck suite) and scan what it printed."""
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        out, err = process.communicate()
        raise AssertionError(
            f"{process.args} did not finish in {timeout} s:\n{err[-3000:]}"
        ) from None
    assert_no_leak(tally.scan_text(f"stdout of {process.args}", out))
    assert_no_leak(tally.scan_text(f"stderr of {process.args}", err))
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


def run_child(
    command: list[str], tally: Tally, *, timeout: float = CHILD_TIMEOUT, **env: str
) -> subprocess.CompletedProcess[str]:
    return finish_child(start_child(command, **env), tally, timeout=timeout)


# -- the service, through the official SDK ----------------------------------------------------


def sdk(base_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=base_url, api_key=LEAK_KEY, max_retries=2)


def service_batches(base_url: str, pipeline: str) -> list[Any]:
    """The pipeline's batches on the service (their metadata names the pipeline)."""
    return [
        batch
        for batch in sdk(base_url).batches.list(limit=100)
        if (batch.metadata or {}).get("batch_pipeline_pipeline") == pipeline
    ]


def service_uploads(base_url: str, pipeline: str) -> list[Any]:
    """The request files the pipeline uploaded (named after their shard)."""
    pattern = re.compile(re.escape(pipeline) + _SHARD_UPLOAD)
    return [
        file for file in sdk(base_url).files.list(purpose="batch") if pattern.match(file.filename)
    ]


def check_paid_once(
    base_url: str, pipeline: Pipeline, tally: Tally, *, one_per_shard: bool = True
) -> list[Any]:
    """No submission identity (or, by default, no shard) has two batches on the service, every
    batch there is known to the ledger, and each shard was uploaded once."""
    name = pipeline.spec.name
    if pipeline.spec.backend.provider == "anthropic":
        return _check_anthropic_paid_once(base_url, pipeline, tally)
    batches = service_batches(base_url, name)
    identities = Counter(b.metadata[SUBMISSION_METADATA_KEY] for b in batches)
    owners = Counter(
        identity.rsplit("#", 1)[0] if one_per_shard else identity for identity in identities
    )
    extra = {owner: n for owner, n in owners.items() if n > 1}
    tally.duplicate_batches += sum(n - 1 for n in extra.values())
    assert not extra, f"paid twice: {extra}"
    ledger_ids = {b["batch_id"] for b in pipeline.ledger.batches(name)}
    assert {b.id for b in batches} == ledger_ids, "a batch on the service the ledger does not know"
    with_batch = {s.shard_id for s in pipeline.ledger.shards(name) if s.batch_id}
    assert {owner.split("#")[0] for owner in owners} == with_batch
    if one_per_shard:
        uploads = Counter(f.filename.rsplit("-", 2)[0] for f in service_uploads(base_url, name))
        assert all(n == 1 for n in uploads.values()), f"uploaded twice: {uploads}"
        assert {shard.replace(":", "_") for shard in with_batch} <= set(uploads)
    return batches


def _check_anthropic_paid_once(base_url: str, pipeline: Pipeline, tally: Tally) -> list[Any]:
    """`check_paid_once` for Anthropic's batches: no shard has two, and every batch of the
    pipeline on the service is known to the ledger (there is no upload to count)."""
    per_shard, ids = anthropic_batches_by_shard(base_url, LEAK_KEY, pipeline)
    extra = {shard: n for shard, n in per_shard.items() if n > 1}
    tally.duplicate_batches += sum(n - 1 for n in extra.values())
    assert not extra, f"paid twice: {extra}"
    name = pipeline.spec.name
    assert ids == {b["batch_id"] for b in pipeline.ledger.batches(name)}, "unknown batch"
    assert set(per_shard) == {s.shard_id for s in pipeline.ledger.shards(name) if s.batch_id}
    return sorted(ids)


# -- files ------------------------------------------------------------------------------------


def unreadable(path: Path) -> str | None:
    """Why a file the pipeline shows under a final name cannot be read, or None."""
    if path.name.endswith(_LEDGER_SIDE_FILES):
        return None
    if path.suffix == ".sqlite":
        try:
            with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
                (verdict,) = conn.execute("PRAGMA integrity_check").fetchone()
        except sqlite3.Error as exc:
            return f"does not open: {exc}"
        return None if verdict == "ok" else f"sqlite integrity: {verdict}"
    return unparsable(path.name, path.read_bytes)


def unparsable(name: str, read: Callable[[], bytes]) -> str | None:
    """Why a file (or object) named `name` that the pipeline writes does not parse whole, or
    None; `read` gives its bytes."""
    suffix = PurePosixPath(name).suffix
    try:
        if suffix == ".parquet":
            pq.read_table(pa.BufferReader(read()))
            return None
        if suffix == ".jsonl":
            for line in read().splitlines():
                orjson.loads(line)
            return None
        if suffix == ".json":
            orjson.loads(read())
            return None
    except Exception as exc:
        return f"does not parse: {type(exc).__name__}: {exc}"
    return "not a file the pipeline writes (a temporary left under a visible name?)"


def broken_files(pipeline_dir: Path, tally: Tally) -> list[str]:
    """Files the pipeline's storage lists (all but `.tmp-` temporaries) that do not read whole."""
    storage = LocalStorage(pipeline_dir)
    listed = storage.list() if pipeline_dir.exists() else []
    tally.files_checked += len(listed)
    return [f"{rel}: {why}" for rel in listed if (why := unreadable(storage.local_path(rel)))]


def check_files_whole(pipeline_dir: Path, tally: Tally) -> None:
    broken = broken_files(pipeline_dir, tally)
    assert not broken, "half-written or stray files visible:\n  " + "\n  ".join(broken)


def broken_objects(store: Any, bucket: str, tally: Tally) -> list[str]:
    """Every object of the bucket, listed as any S3 reader lists them, that does not read
    whole (`store` is the test's S3 server, read through its own client)."""
    client = store.client()
    # A key ending in "/" is a folder marker (pyarrow keeps one where a folder empties): readers
    # list it as a folder, never as a file.
    keys = [key for key in store.keys(bucket) if not key.endswith("/")]
    tally.files_checked += len(keys)
    return [
        f"s3://{bucket}/{key}: {why}"
        for key in keys
        if (why := unparsable(key, lambda key=key: _object_bytes(client, bucket, key)))
    ]


def check_objects_whole(store: Any, bucket: str, tally: Tally) -> None:
    broken = broken_objects(store, bucket, tally)
    assert not broken, "half-written or stray objects visible:\n  " + "\n  ".join(broken)


def scan_bucket(store: Any, bucket: str, tally: Tally) -> list[str]:
    """Every object of the bucket, scanned for the secrets."""
    client = store.client()
    return tally.scan_files(
        (f"s3://{bucket}/{key}", lambda key=key: _object_bytes(client, bucket, key))
        for key in store.keys(bucket)
    )


def _object_bytes(client: Any, bucket: str, key: str) -> bytes:
    return client.get_object(Bucket=bucket, Key=key)["Body"].read()


def leftover_temporaries(pipeline_dir: Path) -> list[Path]:
    return [p for p in pipeline_dir.rglob(f"{TEMP_PREFIX}*") if p.is_file()]


# -- ledgers ----------------------------------------------------------------------------------


def ledger_records(url: str) -> list[str]:
    """Every row of every table of a ledger database, as text."""
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg2://" + url.removeprefix("postgresql://")
    engine = sa.create_engine(url)
    try:
        tables = sa.MetaData()
        tables.reflect(engine)
        with engine.connect() as conn:
            return [
                f"{table.name}: {dict(row._mapping)}"
                for table in tables.sorted_tables
                for row in conn.execute(sa.select(table))
            ]
    finally:
        engine.dispose()


# -- dedicated services -----------------------------------------------------------------------


@dataclass
class RunningService:
    """A started local Batch API and its base URL."""

    api: LocalBatchApi
    url: str

    def restart(self, pause: float = 0.5) -> None:
        """Stop it (work in progress is kept on disk) and start it on the same port."""
        self.api.stop()
        time.sleep(pause)
        assert self.api.start() == self.url


class Services:
    """Local Batch APIs a test starts with its own settings (faults, limits, windows)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.started: list[RunningService] = []

    def start(self, **options: Any) -> RunningService:
        """A running service that demands the leak-check key."""
        options.setdefault("state_dir", self.root / f"state-{len(self.started)}")
        options.setdefault("port", 0)
        options.setdefault("api_key", LEAK_KEY)
        options.setdefault("completion_window_seconds", SHORT_WINDOW)
        options.setdefault("progress_interval_seconds", 0.2)
        api = LocalBatchApi(LocalApiSettings(**options))
        service = RunningService(api, api.start())
        self.started.append(service)
        return service

    def stop_all(self) -> None:
        for service in self.started:
            service.api.stop()


# -- Dagster ----------------------------------------------------------------------------------


def dagster_backfill(
    spec: PipelineSpec, days: Sequence[str], instance: Any, *, timeout: float
) -> list[Any]:
    """What a backfill of `days` does: each day's submit run, then sensor ticks (each one a
    bounded poll that also submits queued shards) launching the results runs they ask for,
    until every day is collected, by these runs or anyone else. Returns the runs' results."""
    import dagster as dg

    from batch_pipeline.core.ledger import Ledger
    from batch_pipeline.dagster import build_batch_pipeline_defs
    from batch_pipeline.demo import execute_run_request

    defs = build_batch_pipeline_defs(spec=spec)
    job = defs.resolve_job_def(f"{spec.name}_submit_job")
    runs = [
        job.execute_in_process(partition_key=day, instance=instance, raise_on_error=False)
        for day in days
    ]
    sensor = defs.resolve_sensor_def(f"{spec.name}_batch_sensor")
    ledger = Ledger(spec.ledger_url)
    deadline = time.monotonic() + timeout
    try:
        while not all(
            (record := ledger.get_partition(spec.name, day)) and record.collected_at for day in days
        ):
            assert time.monotonic() < deadline, f"the backfill did not end in {timeout} s"
            context = dg.build_sensor_context(instance=instance, definitions=defs)
            for run_request in sensor(context).run_requests or []:
                runs.append(execute_run_request(defs, run_request, instance))
            time.sleep(POLL_INTERVAL)
    finally:
        ledger.close()
    return runs


def scan_dagster(instance: Any, tally: Tally) -> list[str]:
    """Every run (its config and tags) and every event record of a Dagster instance."""
    hits: list[str] = []
    for run in instance.get_runs():
        hits += tally.scan_records(
            f"Dagster run {run.run_id}",
            [run, *instance.all_logs(run.run_id)],
            counter="dagster_events",
        )
    return hits
