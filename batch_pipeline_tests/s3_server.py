"""A real S3-compatible server for the tests: moto's standalone server on a free loopback port.

The code under test reaches it the way a user's deployment reaches S3: through the standard
environment variables (`AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
`AWS_REGION`), never through a test-only hook. boto3 (which moto brings) is the tests' own
independent view of the bucket: it creates buckets and lists what a reader would see.
"""

from __future__ import annotations

import contextlib
import io
import logging
import socket
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from unittest import mock

import pytest

ACCESS_KEY = "test-access-key"
SECRET_KEY = "test-secret-key-not-a-real-one"
REGION = "us-east-1"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass(frozen=True)
class S3Server:
    """A running S3-compatible server and what a client needs to reach it."""

    endpoint: str

    def env(self) -> dict[str, str]:
        """The environment a process needs to use this server as its S3."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_REGION": REGION,
        }

    def client(self) -> Any:
        """A boto3 S3 client on this server (the tests' independent view of the buckets)."""
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            region_name=REGION,
        )

    def create_bucket(self, name: str | None = None) -> str:
        """Create a bucket (a fresh name unless given); returns its name."""
        name = name or f"bucket-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        """Every object key under `prefix`, as any S3 reader would list them."""
        paginator = self.client().get_paginator("list_objects_v2")
        return sorted(
            item["Key"]
            for page in paginator.paginate(Bucket=bucket, Prefix=prefix)
            for item in page.get("Contents", [])
        )

    def pending_uploads(self, bucket: str) -> list[str]:
        """Keys of multipart uploads started and neither completed nor aborted."""
        answer = self.client().list_multipart_uploads(Bucket=bucket)
        return sorted(upload["Key"] for upload in answer.get("Uploads", []))

    @contextlib.contextmanager
    def checking_credentials(self) -> Iterator[None]:
        """Within the block the server checks credentials (moto serves anyone by default):
        a request signed with keys it never issued is refused, as by a real S3."""
        self._set_auth("0")
        try:
            yield
        finally:
            self._set_auth("inf")

    def _set_auth(self, count: str) -> None:
        request = urllib.request.Request(
            f"{self.endpoint}/moto-api/reset-auth",
            data=count.encode(),
            method="POST",
            headers={"Content-Type": "text/plain"},  # a form body would be parsed away
        )
        with urllib.request.urlopen(request, timeout=10) as answer:
            answer.read()


def _decoded_body(self: Any, body: Any) -> bytes:
    """An aws-chunked request body without its chunk framing (the checksum trailer dropped),
    as moto decodes it, in linear time: moto 5.2 appends each chunk to a bytes object, which
    copies everything before it, so a 10 MB part sent in 64 KB chunks cost it some 800 MB of
    copying, about half of its CPU in the benchmarks."""
    if not body:
        return b""
    if isinstance(body, bytes):
        body = io.BytesIO(body)
    chunks = []
    size = int(body.readline().strip(), 16)  # each chunk: "{size in hex}\r\n{data}\r\n"
    while size > 0:
        chunks.append(body.read(size))
        body.readline()
        size = int(body.readline().strip(), 16)
    return b"".join(chunks)


@contextlib.contextmanager
def running_s3_server() -> Iterator[S3Server]:
    """moto's ThreadedMotoServer on a free loopback port, stopped at the end; its decoding
    of aws-chunked request bodies (how the AWS SDKs send uploads by default) takes linear
    time while it runs (`_decoded_body`)."""
    from moto.s3.responses import S3Response
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    with mock.patch.object(S3Response, "_handle_encoded_body", _decoded_body):
        port = free_port()
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        server.start()
        try:
            yield S3Server(endpoint=f"http://127.0.0.1:{port}")
        finally:
            server.stop()


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """The S3-compatible server shared by this test session."""
    with running_s3_server() as server:
        yield server


@pytest.fixture
def s3(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> S3Server:
    """The S3 server, with this test's environment pointed at it as a user's would be."""
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    for name in ("AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(name, raising=False)
    return s3_server


@pytest.fixture
def s3_bucket(s3: S3Server) -> str:
    """A fresh, empty bucket on the S3 server (environment set as in `s3`); its name."""
    return s3.create_bucket()
