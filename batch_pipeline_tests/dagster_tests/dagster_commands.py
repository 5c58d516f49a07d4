"""The Dagster commands of this environment, as the tests that start them in a subprocess
call them."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

BIN = Path(sys.executable).parent


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def webserver_command(port: int, workspace: str = "workspace.yaml") -> list[str]:
    """`dagster-webserver` serving `workspace` (relative to its working folder) on `port`."""
    return [
        str(BIN / "dagster-webserver"),
        "-w",
        workspace,
        "-h",
        "127.0.0.1",
        "-p",
        str(port),
    ]
