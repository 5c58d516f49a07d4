"""A PostgreSQL server of a test's own, which the test may stop and start again.

The shared server on 127.0.0.1:5432 serves every other test at the same time, so a test that
takes its database away (a failover, a restart) gets this one instead: a new cluster in a
temporary folder, on a free loopback port, trust authentication, made with the machine's own
PostgreSQL binaries (`initdb`, `pg_ctl`). PostgreSQL refuses to run as root; under root the
cluster belongs to, and runs as, the `postgres` system user.

Use the `throwaway_postgres` fixture (registered by the root conftest), or the class directly.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

BIN_ENV = "BATCH_PIPELINE_TEST_POSTGRES_BIN"  # a folder holding initdb and pg_ctl
SERVER_USER = "postgres"  # who runs the server when the tests run as root
START_TIMEOUT_SECONDS = 60


def postgres_bin_dir() -> Path | None:
    """The folder of `initdb` and `pg_ctl`: $BATCH_PIPELINE_TEST_POSTGRES_BIN, the PATH, or
    the newest version in the Debian/Ubuntu layout; None when there is none."""
    if os.environ.get(BIN_ENV):
        return Path(os.environ[BIN_ENV])
    on_path = shutil.which("pg_ctl")
    if on_path and shutil.which("initdb"):
        return Path(on_path).parent
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"),
        key=lambda path: int(Path(path).parts[-3]) if Path(path).parts[-3].isdigit() else 0,
    )
    return Path(found[-1]).parent if found else None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class ThrowawayPostgres:
    """One PostgreSQL cluster in a temporary folder; `stop()` and `start()` at will."""

    def __init__(self, bin_dir: Path) -> None:
        self.bin_dir = bin_dir
        self.port = _free_port()
        self.folder = Path(tempfile.mkdtemp(prefix="bp-throwaway-pg-"))
        self.data_dir = self.folder / "data"
        self._as_user: list[str] = []
        if os.geteuid() == 0:
            entry = pwd.getpwnam(SERVER_USER)
            os.chown(self.folder, entry.pw_uid, entry.pw_gid)
            self._as_user = ["runuser", "-u", SERVER_USER, "--"]
        self._run("initdb", "-D", str(self.data_dir), "-U", "postgres", "-A", "trust", "-N")

    def url(self, database: str = "postgres", *, password: str | None = None) -> str:
        """A SQLAlchemy URL of a database on this server (trust: any password is accepted)."""
        secret = f":{password}" if password else ""
        return f"postgresql+psycopg2://postgres{secret}@127.0.0.1:{self.port}/{database}"

    def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -c fsync=off "
            f"-c unix_socket_directories={self.folder}"
        )
        self._run(
            "pg_ctl", "start", "-D", str(self.data_dir), "-w", "-t", str(START_TIMEOUT_SECONDS),
            "-l", str(self.folder / "server.log"), "-o", options,
        )  # fmt: skip

    def stop(self) -> None:
        """Stop the server as a failover does: sessions are ended, new ones refused."""
        self._run("pg_ctl", "stop", "-D", str(self.data_dir), "-m", "fast", "-w")

    def remove(self) -> None:
        """Stop the server if it runs, and delete its folder."""
        subprocess.run(
            [*self._as_user, str(self.bin_dir / "pg_ctl"), "stop", "-D", str(self.data_dir),
             "-m", "immediate", "-w"],
            capture_output=True,
            check=False,
        )  # fmt: skip
        shutil.rmtree(self.folder, ignore_errors=True)

    def log(self) -> str:
        """The server's own log, for failure messages."""
        path = self.folder / "server.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def _run(self, program: str, *args: str) -> None:
        done = subprocess.run(
            [*self._as_user, str(self.bin_dir / program), *args],
            capture_output=True,
            text=True,
            cwd=self.folder,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(
                f"{program} failed ({done.returncode}): {done.stderr.strip()}\n{self.log()}"
            )


@pytest.fixture
def throwaway_postgres() -> Iterator[ThrowawayPostgres]:
    """A running PostgreSQL server of the test's own (see the module); removed afterwards."""
    bin_dir = postgres_bin_dir()
    if bin_dir is None:
        pytest.fail(f"PostgreSQL's initdb and pg_ctl are needed: set {BIN_ENV} to their folder")
    server = ThrowawayPostgres(bin_dir)
    try:
        server.start()
        yield server
    finally:
        server.remove()
