"""A Google Cloud Storage emulator for the tests: gcp-storage-emulator on a free loopback port.

The code under test reaches it the way a user reaches an emulator: `STORAGE_EMULATOR_HOST`,
the variable Google's own client libraries read. The emulator runs in a process of its own
(pyarrow's GCS client keeps the GIL through some calls, which would stall a server thread of
the same process) and answers on a threading HTTP server: its own answers one connection at a
time, so a reader that stops partway through a large object, as a ranged reader does, would
hold it for good, as no real GCS does. The tests' own view of a bucket is the JSON API.
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
from typing import Any

import pytest

from batch_pipeline_tests.s3_server import free_port

STARTUP_SECONDS = 30
# The emulator's command line, served by a threading HTTP server.
_LAUNCH = (
    "import sys, http.server as h; h.HTTPServer = h.ThreadingHTTPServer; "
    "from gcp_storage_emulator.__main__ import main; main(sys.argv[1:])"
)


@dataclass(frozen=True)
class GcsServer:
    """A running GCS emulator and what a client needs to reach it."""

    endpoint: str

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


def _wait_until_up(server: subprocess.Popen[bytes], endpoint: str) -> None:
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the GCS emulator exited with {server.returncode}")
        with (
            contextlib.suppress(OSError),
            urllib.request.urlopen(f"{endpoint}/", timeout=1) as answer,
        ):
            answer.read()
            return
        time.sleep(0.1)
    raise RuntimeError(f"the GCS emulator did not answer at {endpoint}")


@contextlib.contextmanager
def running_gcs_server() -> Iterator[GcsServer]:
    """gcp-storage-emulator (in memory) in its own process on a free port, stopped at the end."""
    port = free_port()
    command = [sys.executable, "-c", _LAUNCH, "start", "--quiet", "--in-memory"]
    server = subprocess.Popen(
        [*command, "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        endpoint = f"http://127.0.0.1:{port}"
        _wait_until_up(server, endpoint)
        yield GcsServer(endpoint=endpoint)
    finally:
        server.kill()
        server.wait()


@pytest.fixture(scope="session")
def gcs_server() -> Iterator[GcsServer]:
    """The GCS emulator shared by this test session."""
    with running_gcs_server() as server:
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
