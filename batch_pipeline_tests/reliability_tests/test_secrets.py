"""The API key and the object store's secret key are never written down: not in a log line, a
ledger row (every table, SQLite and PostgreSQL), a manifest, a request or results file or
object, a status line, an error message, a Dagster event; not even a wrong one that the
service or the store refused.

Every other test of this folder also runs with the key set and is scanned afterwards (see
conftest.py); these add the places only a deliberate look reaches."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest

from batch_pipeline.core.pipeline import Pipeline
from batch_pipeline.core.spec import PipelineSpec
from batch_pipeline.dagster import BatchBackendResource, build_batch_pipeline_defs
from batch_pipeline_tests.reliability_tests.helpers import (
    DAY,
    LEAK_ENV,
    LEAK_KEY,
    STORAGE_SECRET,
    OnStore,
    Tally,
    assert_no_leak,
    child_command,
    cli_command,
    keys_of,
    ledger_records,
    ledger_url_for,
    rows_with_bodies,
    run_child,
    run_partition,
    scan_dagster,
    write_pipeline,
)

pytestmark = [pytest.mark.reliability, pytest.mark.slow]

# The service demands LEAK_KEY; this one differs in its last character, keeps the marker.
WRONG_KEY = LEAK_KEY[:-1] + ("0" if LEAK_KEY[-1] != "0" else "1")
WRONG_STORAGE_SECRET = STORAGE_SECRET[:-1] + ("0" if STORAGE_SECRET[-1] != "0" else "1")
FAULTS = {"OK": "fine", "F401": "<<fail:401>>", "F500": "<<fail:500>>", "HANG": "<<hang>>"}


@pytest.mark.parametrize(
    "ledger", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
)
def test_no_ledger_row_status_or_file_holds_the_key(
    tmp_path: Path,
    keyed_api: str,
    name: str,
    tally: Tally,
    request: pytest.FixtureRequest,
    ledger: str,
) -> None:
    """A run through failures, retries and expiry; then every table of the ledger, the
    status the CLI prints, and the reprs a notebook shows."""
    postgres = request.getfixturevalue("postgres_database") if ledger == "postgresql" else None
    rows = rows_with_bodies(FAULTS)
    spec_path = write_pipeline(
        tmp_path,
        keyed_api,
        name,
        rows,
        retry={"max_attempts": 2},
        ledger=ledger_url_for(ledger, postgres),
    )
    spec = PipelineSpec.from_yaml(spec_path)
    summary, _ = run_partition(spec, tally, keys_of(rows))
    assert summary.counts["succeeded"] == 1 and summary.counts["expired"] == 1
    assert_no_leak(
        tally.scan_records("ledger", ledger_records(spec.ledger_url), counter="ledger_rows")
    )
    with Pipeline(spec) as pipeline:
        shown = [
            repr(pipeline),
            repr(pipeline.ledger),
            repr(pipeline.backend),
            repr(pipeline.status()),
            repr(summary),
            repr(spec),
        ]
    assert_no_leak(tally.scan_text("reprs", "\n".join(shown)))
    status = run_child(cli_command("-v", "status", str(spec_path)), tally)  # scans its output
    assert status.returncode == 0 and "collected" in status.stdout


def test_a_refused_key_is_not_echoed_by_the_cli(
    tmp_path: Path, keyed_api: str, name: str, tally: Tally
) -> None:
    spec_path = write_pipeline(tmp_path, keyed_api, name, rows_with_bodies({"OK": "fine"}))
    refused = run_child(
        cli_command("-v", "run", str(spec_path), "--partition", DAY, "--timeout", "30"),
        tally,
        **{LEAK_ENV: WRONG_KEY},
    )
    assert refused.returncode == 1, refused.stderr[-2000:]
    assert "Traceback" not in refused.stderr
    assert "HTTP 401" in refused.stderr and "invalid_api_key" in refused.stderr


def test_dagster_runs_keep_the_key_out_of_their_events(
    tmp_path: Path, keyed_api: str, name: str, tally: Tally, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A submit run refused for a wrong key fails with a readable error event, then the same
    run with the right key succeeds; no run record nor event holds either key."""
    spec = PipelineSpec.from_yaml(
        write_pipeline(
            tmp_path, keyed_api, name, rows_with_bodies(FAULTS), partitions={"start": "2026-11-01"}
        )
    )
    backend = BatchBackendResource(
        provider="local", base_url=spec.backend.base_url, api_key=dg.EnvVar(LEAK_ENV)
    )
    job = build_batch_pipeline_defs(spec=spec, backend=backend).resolve_job_def(
        f"{name}_submit_job"
    )
    with dg.DagsterInstance.ephemeral() as instance:
        monkeypatch.setenv(LEAK_ENV, WRONG_KEY)
        refused = job.execute_in_process(partition_key=DAY, instance=instance, raise_on_error=False)
        monkeypatch.setenv(LEAK_ENV, LEAK_KEY)
        accepted = job.execute_in_process(partition_key=DAY, instance=instance)
        assert not refused.success and accepted.success
        failure = next(e for e in refused.all_events if e.is_step_failure)
        assert "HTTP 401" in str(failure.event_specific_data)
        assert_no_leak(scan_dagster(instance, tally))


def test_no_log_line_ledger_row_or_object_holds_the_storage_secret(
    on_store: OnStore, tally: Tally
) -> None:
    """A pipeline on object storage through failures, retries and expiry, every log line on
    (the child logs at DEBUG); then every ledger row, the CLI's status, and (when the test
    ends) every object of the bucket: manifests, shards, batch files, outcomes, results."""
    rows = rows_with_bodies(FAULTS)
    spec_path = on_store.write(rows, retry={"max_attempts": 2})
    ran = run_child(child_command(str(spec_path), "--partition", DAY), tally)
    assert ran.returncode == 0, ran.stderr[-2000:]
    records = ledger_records(on_store.ledger_url)
    assert_no_leak(tally.scan_records("ledger", records, counter="ledger_rows"))
    status = run_child(cli_command("-v", "status", str(spec_path)), tally)
    assert status.returncode == 0 and on_store.root in status.stdout
    assert len(on_store.store.keys(on_store.bucket)) > len(rows)  # the scan has objects


def test_a_refused_storage_secret_is_not_echoed(on_store: OnStore, tally: Tally) -> None:
    """The store checks credentials and refuses a wrong secret key: the run stops with one
    line naming the location, which quotes neither key (nor does any DEBUG log line)."""
    spec_path = on_store.write(rows_with_bodies({"OK": "fine"}))
    with on_store.store.checking_credentials():
        refused = run_child(
            cli_command("-v", "run", str(spec_path), "--partition", DAY, "--timeout", "30"),
            tally,
            AWS_SECRET_ACCESS_KEY=WRONG_STORAGE_SECRET,
        )
    assert refused.returncode == 1, refused.stderr[-2000:]
    assert "Traceback" not in refused.stderr
    assert f"{on_store.root}/out" in refused.stderr and "access refused" in refused.stderr
