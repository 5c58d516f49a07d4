"""A TCP proxy in front of the S3 server that SIGKILLs a process in the middle of an upload.

The process reaches the store through the proxy (its `AWS_ENDPOINT_URL`); the proxy passes
every byte through until a PUT or POST whose request line matches a pattern: it forwards that
request's headers and the first half of its body, kills the process, and drops the
connection. The store has then received part of an object and never its end, whatever the
client library does: a real kill in the middle of a real upload.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

_CHUNK = 65536
_CONTENT_LENGTH = re.compile(rb"^content-length:\s*(\d+)\s*$", re.IGNORECASE | re.MULTILINE)
_CHUNKED = re.compile(rb"^transfer-encoding:.*chunked", re.IGNORECASE | re.MULTILINE)


@dataclass
class UploadCutter:
    """Kills `victim` (a pid, set once the process started; with its process group if it
    leads one) during the first upload whose request line (`PUT /bucket/key?...`) matches
    `pattern`; `cut` names what it cut."""

    upstream: tuple[str, int]
    pattern: re.Pattern[bytes]
    victim: int | None = None
    cut: str | None = None
    _listener: socket.socket = field(init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False)

    def __post_init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self._listener.getsockname()[1]}"

    def close(self) -> None:
        self._listener.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        with contextlib.ExitStack() as stack:
            stack.enter_context(client)
            server = stack.enter_context(socket.create_connection(self.upstream))
            threading.Thread(target=_pump, args=(server, client), daemon=True).start()
            _Requests(self, client, server).forward()

    def fire(self, request_line: bytes) -> bool:
        """Kill the victim, once; whether this call did."""
        with self._lock:
            if self.cut is not None or self.victim is None:
                return False
            self.cut = request_line.decode(errors="replace")
            # The whole process group when the victim leads one: the process and the children
            # it uploads through die together, as when a container or a machine goes.
            if os.getpgid(self.victim) == self.victim:
                os.killpg(self.victim, signal.SIGKILL)
            else:
                os.kill(self.victim, signal.SIGKILL)
            return True


class _Requests:
    """The client-to-server byte stream of one connection, request by request."""

    def __init__(self, cutter: UploadCutter, client: socket.socket, server: socket.socket):
        self.cutter, self.client, self.server = cutter, client, server
        self.pending = b""

    def forward(self) -> None:
        while True:
            head = self._read_head()
            if head is None:
                return
            self.server.sendall(head)
            if _CHUNKED.search(head):  # no length to count by: pass the rest through
                self._pass_through(head)
                return
            match = _CONTENT_LENGTH.search(head)
            length = int(match.group(1)) if match else 0
            request_line = head.split(b"\r\n", 1)[0]
            upload = request_line.startswith((b"PUT ", b"POST ")) and length > 1
            if upload and self.cutter.pattern.search(request_line):
                if not self._send_body(length // 2):
                    return
                if self.cutter.fire(request_line):
                    return  # the connection drops with half an object sent
                length -= length // 2
            if not self._send_body(length):
                return

    def _pass_through(self, head: bytes) -> None:
        """Forward everything from here on; a matching upload is cut in the middle of the
        first bytes of its body that arrive (a small body arrives whole: half of it is sent)."""
        request_line = head.split(b"\r\n", 1)[0]
        cut = request_line.startswith((b"PUT ", b"POST ")) and self.cutter.pattern.search(
            request_line
        )
        data, self.pending = self.pending, b""
        while data or (data := self.client.recv(_CHUNK)):
            half = len(data) // 2 if cut else len(data)
            self.server.sendall(data[:half])
            if cut and self.cutter.fire(request_line):
                return  # the connection drops with part of the body sent
            self.server.sendall(data[half:])
            data = b""

    def _read_head(self) -> bytes | None:
        while b"\r\n\r\n" not in self.pending:
            data = self.client.recv(_CHUNK)
            if not data:
                return None
            self.pending += data
        head, _, self.pending = self.pending.partition(b"\r\n\r\n")
        return head + b"\r\n\r\n"

    def _send_body(self, count: int) -> bool:
        while count > 0:
            if not self.pending:
                self.pending = self.client.recv(_CHUNK)
                if not self.pending:
                    return False
            part, self.pending = self.pending[:count], self.pending[count:]
            self.server.sendall(part)
            count -= len(part)
        return True


def _pump(source: socket.socket, sink: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while data := source.recv(_CHUNK):
            sink.sendall(data)
    with contextlib.suppress(OSError):
        sink.shutdown(socket.SHUT_WR)


@contextlib.contextmanager
def cutting_uploads(endpoint: str, key_pattern: str) -> Iterator[UploadCutter]:
    """A cutter in front of the store at `endpoint`, for uploads of keys matching the regular
    expression `key_pattern`; closed at the end."""
    host, _, port = endpoint.removeprefix("http://").partition(":")
    cutter = UploadCutter((host, int(port)), re.compile(key_pattern.encode()))
    try:
        yield cutter
    finally:
        cutter.close()
