"""A Google Cloud Storage emulator for the tests: gcp-storage-emulator on a free loopback port.

The code under test reaches it the way a user reaches an emulator: `STORAGE_EMULATOR_HOST`,
the variable Google's own client libraries read. The emulator runs in a process of its own
(pyarrow's GCS client keeps the GIL through some calls, which would stall a server thread of
the same process), as `gcs_emulator_main` runs it. The tests' own view of a bucket is the
JSON API, and the emulator's data folder shows the bytes of uploads not yet finished.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from batch_pipeline_tests.s3_server import free_port

STARTUP_SECONDS = 30
LAUNCHER = Path(__file__).with_name("gcs_emulator_main.py")


@dataclass(frozen=True)
class GcsServer:
    """A running GCS emulator and what a client needs to reach it."""

    endpoint: str
    data_dir: Path

    def env(self) -> dict[str, str]:
        """The environment a process needs to use this emulator as its GCS."""
        return {"STORAGE_EMULATOR_HOST": self.endpoint}

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        request = urllib.request.Request(
            f"{self.endpoint}/storage/v1{path}",
            data=json.dumps(body).encode() if body is not None else None,
            method=method,
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as answer:
            return json.loads(answer.read() or b"{}")

    def create_bucket(self, name: str | None = None) -> str:
        """Create a bucket (a fresh name unless given); returns its name."""
        name = name or f"bucket-{uuid.uuid4().hex[:12]}"
        self._call("POST", "/b?project=test", {"name": name})
        return name

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        """Every object name under `prefix`, as any GCS reader would list them."""
        names: list[str] = []
        token = ""
        while True:
            query = urllib.parse.urlencode({"prefix": prefix, "pageToken": token})
            page = self._call("GET", f"/b/{bucket}/o?{query}")
            names += [item["name"] for item in page.get("items", [])]
            token = page.get("nextPageToken", "")
            if not token:
                return sorted(names)

    def unfinished_upload_bytes(self) -> int:
        """The bytes the emulator holds of resumable uploads not yet finished (which no
        listing shows)."""
        folders = self.data_dir.rglob("_resumable")  # under the emulator's own subfolder
        return sum(file.stat().st_size for f in folders for file in f.rglob("*") if file.is_file())


def _wait_until_up(server: subprocess.Popen[bytes], endpoint: str) -> None:
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the GCS emulator exited with {server.returncode}")
        with (
            contextlib.suppress(OSError, ValueError),
            urllib.request.urlopen(f"{endpoint}/storage/v1/b?project=test", timeout=1) as answer,
        ):
            if json.loads(answer.read()).get("kind") == "storage#buckets":  # not another server
                return
        time.sleep(0.1)
    raise RuntimeError(f"the GCS emulator did not answer at {endpoint}")


@contextlib.contextmanager
def running_gcs_server(data_dir: Path) -> Iterator[GcsServer]:
    """The emulator, keeping its data in `data_dir`, in its own process on a free port; stopped
    at the end (and by itself if this process dies: it exits when its standard input ends)."""
    port = free_port()
    command = [sys.executable, str(LAUNCHER), "--data-dir", str(data_dir), "start", "--quiet"]
    server = subprocess.Popen(
        [*command, "--host", "127.0.0.1", "--port", str(port)],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        endpoint = f"http://127.0.0.1:{port}"
        _wait_until_up(server, endpoint)
        yield GcsServer(endpoint=endpoint, data_dir=data_dir)
    finally:
        server.kill()
        server.wait()
        server.stdin.close()  # type: ignore[union-attr]


@pytest.fixture(scope="session")
def gcs_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GcsServer]:
    """The GCS emulator shared by this test session."""
    with running_gcs_server(tmp_path_factory.mktemp("gcs")) as server:
        yield server


@pytest.fixture
def gcs(gcs_server: GcsServer, monkeypatch: pytest.MonkeyPatch) -> GcsServer:
    """The GCS emulator, with this test's environment pointed at it as a user's would be."""
    for name, value in gcs_server.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
    return gcs_server


@pytest.fixture
def gcs_bucket(gcs: GcsServer) -> str:
    """A fresh, empty bucket on the GCS emulator (environment set as in `gcs`); its name."""
    return gcs.create_bucket()
