"""Fixtures of the reliability suite, the leak scan after every test, and the figures line.

Every test here runs with the leak-check key in the environment (`LEAK_ENV`) and against
services that demand it, and one that uses object storage with the leak-check secret as its
storage credential; after each test its logs, every file under its tmp_path and every object
of its bucket are scanned for both. The figures are printed at the end of a session that ran
these tests.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections import Counter
from collections.abc import Generator, Iterator
from pathlib import Path

import pytest

from batch_pipeline.local_api.server import run_local_batch_api
from batch_pipeline_tests.reliability_tests.helpers import (
    LEAK_ENV,
    LEAK_KEY,
    LEDGER_ENV,
    SHORT_WINDOW,
    STORAGE_SECRET,
    OnStore,
    Services,
    Tally,
    assert_no_leak,
    scan_bucket,
)
from batch_pipeline_tests.s3_server import S3Server

_TALLY = Tally()
_LOSSES_BEFORE = pytest.StashKey[Counter[str]]()
QUIET_LOGGERS = ("httpcore", "httpcore2", "hpack")
LOG_FORMAT = logging.Formatter("%(levelname)s %(name)s: %(message)s")


@pytest.fixture(scope="session")
def tally() -> Tally:
    """The session's figures (scenarios, crashes, rows, duplicates, losses, leaks)."""
    return _TALLY


@pytest.fixture(scope="session")
def keyed_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A local Batch API that demands the leak-check key, with a short completion window."""
    state = tmp_path_factory.mktemp("keyed_api_state")
    with run_local_batch_api(
        state,
        port=0,
        completion_window_seconds=SHORT_WINDOW,
        api_key=LEAK_KEY,
        progress_interval_seconds=0.2,
    ) as url:
        yield url
    assert_no_leak(_TALLY.scan_tree(state))


@pytest.fixture
def services(tmp_path: Path) -> Iterator[Services]:
    """Start dedicated local Batch APIs (own faults, limits, windows); stopped afterwards."""
    started = Services(tmp_path / "services")
    yield started
    started.stop_all()


@pytest.fixture
def bucket(s3: S3Server, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A fresh bucket on the S3 server, reached with the leak-check secret key (the server
    takes any); afterwards no object in it may hold a secret."""
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", STORAGE_SECRET)
    created = s3.create_bucket()
    yield created
    assert_no_leak(scan_bucket(s3, created, _TALLY))


@pytest.fixture
def on_store(
    tmp_path: Path,
    s3: S3Server,
    bucket: str,
    keyed_api: str,
    own_postgres_database: str,
    name: str,
    monkeypatch: pytest.MonkeyPatch,
) -> OnStore:
    """A pipeline's place on the bucket, with a fresh PostgreSQL ledger (its URL also in this
    process's `LEDGER_ENV`, for the checks the test makes itself)."""
    monkeypatch.setenv(LEDGER_ENV, own_postgres_database)
    return OnStore(tmp_path / "code", s3, bucket, keyed_api, name, own_postgres_database)


@pytest.fixture
def name(request: pytest.FixtureRequest) -> str:
    """A pipeline name unique to the test (pipelines share the session's service and PG)."""
    text = re.sub(r"[^a-z0-9_]+", "_", request.node.name.lower().removeprefix("test_"))
    digest = hashlib.sha1(request.node.nodeid.encode()).hexdigest()[:6]
    return f"r_{text[:40].strip('_')}_{digest}"


@pytest.fixture(autouse=True)
def _leak_scan(
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> Iterator[None]:
    """The key is set for the test (and its children); afterwards no log line and no file
    under its tmp_path may contain it."""
    request.node.stash[_LOSSES_BEFORE] = _TALLY.losses()
    monkeypatch.setenv(LEAK_ENV, LEAK_KEY)
    for transport in QUIET_LOGGERS:  # fixed strings about sockets, never a payload
        caplog.set_level(logging.INFO, logger=transport)
    caplog.set_level(logging.DEBUG)  # last: it also sets the capturing handler's level
    tmp = request.getfixturevalue("tmp_path") if "tmp_path" in request.fixturenames else None
    yield
    records = [*caplog.get_records("setup"), *caplog.get_records("call")]
    hits = _TALLY.scan_text(
        f"logs of {request.node.name}", "\n".join(LOG_FORMAT.format(r) for r in records)
    )
    if tmp is not None:
        hits += _TALLY.scan_tree(tmp)
    assert_no_leak(hits)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Losses made by a scenario that xfails (a known bug) are told apart in the figures."""
    report = yield
    if call.when == "call" and hasattr(report, "wasxfail") and _LOSSES_BEFORE in item.stash:
        _TALLY.blame_known_bug(item.stash[_LOSSES_BEFORE])
    return report


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if "reliability" not in report.keywords:
        return
    if report.when == "call":
        _TALLY.scenarios += 1
        _TALLY.outcomes["xfailed" if hasattr(report, "wasxfail") else report.outcome] += 1
    elif report.outcome == "skipped":
        _TALLY.outcomes["skipped"] += 1
    elif report.outcome == "failed":
        _TALLY.outcomes[f"errors in {report.when}"] += 1


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _TALLY.scenarios:
        terminalreporter.write_sep("-", "reliability figures")
        terminalreporter.write_line(_TALLY.summary())
