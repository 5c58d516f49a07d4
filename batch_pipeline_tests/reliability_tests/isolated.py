"""Processes that share no disk, as containers started by a run launcher do.

Each process gets its own empty working folder, `HOME` and `TMPDIR` (and `DAGSTER_HOME` when
it runs Dagster), all removed once it ends; what it may share with the others is only what
the environment names: the object store, the PostgreSQL ledger and the Batch API. The code
(this repository) is the one thing every process reads, as every container runs one image.
After each process the folders are checked: it left nothing in its TMPDIR, and nothing
anywhere else that it was not expected to (what it left is named in the failure).
"""

from __future__ import annotations

import fnmatch
import json
import os
import shutil
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from batch_pipeline_tests.reliability_tests.helpers import (
    CHILD_TIMEOUT,
    KEY_COLUMN,
    REPO_ROOT,
    Tally,
    finish_child,
    keys_of,
)

# Variables of the test's own process that point at its local folders: a process of its own
# gets its own.
_LOCAL_VARIABLES = ("HOME", "TMPDIR", "TMP", "TEMP", "DAGSTER_HOME", "PWD", "OLDPWD")
_LOCAL_PREFIXES = ("BATCH_PIPELINE_", "XDG_", "PYTEST_")
FOLDERS = ("work", "home", "tmp")


@dataclass
class IsolatedRun:
    """What one process printed, and the files it left in each of its own folders."""

    name: str
    result: subprocess.CompletedProcess[str]
    left: dict[str, list[str]]
    seconds: float

    @property
    def returncode(self) -> int:
        return self.result.returncode

    @property
    def stdout(self) -> str:
        return self.result.stdout


@dataclass
class Isolation:
    """Starts processes that share nothing on disk; `shared` is the environment every one
    gets (the services' addresses and credentials). `dagster_yaml`, when given, is copied
    into a DAGSTER_HOME of each process's own: the instance it describes (PostgreSQL) is
    what Dagster shares, not a folder."""

    root: Path
    tally: Tally
    shared: Mapping[str, str]
    dagster_yaml: Path | None = None
    runs: list[IsolatedRun] = field(default_factory=list)

    def run(
        self,
        name: str,
        command: Sequence[str],
        *,
        timeout: float = CHILD_TIMEOUT,
        may_leave: Sequence[str] = (),
        **env: str,
    ) -> IsolatedRun:
        """Run `command` in folders of its own, wait for it, scan what it printed for
        secrets, and remove its folders. A non-zero exit fails the test; so do files it left
        in its folders (`tmp/...`, `work/...`, `home/...`), except
        those matching a pattern of `may_leave` (`dagster_home/*`: Dagster's own state)."""
        box = self.root / f"{len(self.runs):02d}-{name}"
        folders = {label: box / label for label in FOLDERS}
        if self.dagster_yaml is not None:
            folders["dagster_home"] = box / "dagster_home"
        for folder in folders.values():
            folder.mkdir(parents=True)
        if self.dagster_yaml is not None:
            shutil.copy(self.dagster_yaml, folders["dagster_home"] / "dagster.yaml")
        started = time.monotonic()
        process = subprocess.Popen(
            list(command),
            cwd=folders["work"],
            env=self._environment(folders, env),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            result = finish_child(process, self.tally, timeout=timeout)
            left = {
                label: sorted(
                    str(path.relative_to(folder))
                    for path in folder.rglob("*")
                    if path.is_file() and path.name != "dagster.yaml"
                )
                for label, folder in folders.items()
            }
        finally:
            shutil.rmtree(box, ignore_errors=True)
        run = IsolatedRun(name, result, left, time.monotonic() - started)
        self.runs.append(run)
        assert run.returncode == 0, f"{name} exited {run.returncode}:\n{result.stderr[-4000:]}"
        stray = [
            f"{label}/{file}"
            for label, files in left.items()
            for file in files
            if not any(fnmatch.fnmatch(f"{label}/{file}", pattern) for pattern in may_leave)
        ]
        assert not stray, f"{name} left files behind in its own folders: {stray}"
        return run

    def repeat(
        self,
        name: str,
        command: Sequence[str],
        done: Callable[[IsolatedRun], bool],
        *,
        tries: int,
        pause: float,
        **options: Any,
    ) -> int:
        """Run `command` afresh each time (as a sensor ticks) until `done` says so of a run;
        how many runs it took. `options` go to `run`."""
        for attempt in range(1, tries + 1):
            if done(self.run(f"{name}-{attempt}", command, **options)):
                return attempt
            time.sleep(pause)
        raise AssertionError(f"{name}: not done after {tries} runs")

    def _environment(self, folders: Mapping[str, Path], extra: Mapping[str, str]) -> dict[str, str]:
        env = {
            key: value
            for key, value in os.environ.items()
            if key not in _LOCAL_VARIABLES and not key.startswith(_LOCAL_PREFIXES)
        }
        env.update(self.shared)
        env.update(
            HOME=str(folders["home"]),
            TMPDIR=str(folders["tmp"]),
            PYTHONPATH=str(REPO_ROOT),
            PYTHONDONTWRITEBYTECODE="1",  # the code is read, never written to
            DAGSTER_DISABLE_TELEMETRY="1",
            DO_NOT_TRACK="1",
        )
        if "dagster_home" in folders:
            env["DAGSTER_HOME"] = str(folders["dagster_home"])
        env.update(extra)
        return env


def last_json(run: IsolatedRun) -> Any:
    """The JSON a child printed last (the steps print their answer on one line)."""
    return json.loads(run.stdout.splitlines()[-1])


def check_read_rows(
    read: IsolatedRun, rows: list[dict[str, Any]], days: Sequence[str], tally: Tally
) -> Counter[str]:
    """What a reader process printed (`child --step read`) holds each source row of `days`
    once; the rows per status."""
    results = pd.DataFrame(last_json(read), columns=["day", KEY_COLUMN, "status"])
    for day in days:
        tally.check_rows_once(results[results["day"] == day], keys_of(rows, day))
    return Counter(results["status"])
