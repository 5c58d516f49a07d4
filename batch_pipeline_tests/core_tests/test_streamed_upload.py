"""A large file sent to the object store while it is written (the results file): its bytes
reach the store before the file ends, yet the object appears only once the write ends
normally. A failure, a dead writer or a store that refuses leaves no object, and the old one
stays. Against the S3-compatible server, and the GCS emulator where a store's own behaviour
decides it (pyarrow's GCS stream, like S3's, completes its upload when it is destroyed)."""

from __future__ import annotations

import contextlib
import io
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from batch_pipeline.core.storage import storage_for
from batch_pipeline.core.storage_uri import StorageLocationError
from batch_pipeline.core.streamed_upload import (
    FRAME_BYTES,
    FRAMES_AHEAD,
    _FramedSink,
    _read_into,
)
from batch_pipeline_tests.conftest import store_server

pytestmark = pytest.mark.slow

MB = 1024 * 1024
KEY = "results/partition=2026-01-15/part-0.parquet"
STREAM_PART_FRAMES = 10  # what pyarrow's S3 stream holds (a part, 10 MB) before it sends it


def open_pipes() -> int:
    """How many pipes this process holds open."""
    folder = "/proc/self/fd"
    links = []
    for name in os.listdir(folder):
        try:
            links.append(os.readlink(f"{folder}/{name}"))
        except FileNotFoundError:  # the listing's own descriptor, gone already
            continue
    return sum(link.startswith("pipe:") for link in links)


def wait_for(condition, what: str, seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not seen within {seconds:.0f} s: {what}")
        time.sleep(0.05)


def test_bytes_reach_the_store_while_the_file_is_written_and_appear_only_at_its_end(
    s3, s3_bucket, staging
):
    storage = storage_for(f"s3://{s3_bucket}/pipe")
    content = os.urandom(24 * MB)
    with storage.atomic_write(KEY, streamed=True) as handle:
        for start in range(0, len(content), 100_000):
            handle.write(content[start : start + 100_000])
        # More than one part is written: the multipart upload is under way, and unlisted.
        wait_for(lambda: s3.pending_uploads(s3_bucket) == [f"pipe/{KEY}"], "an upload started")
        assert storage.list("results") == []
        assert list(staging.iterdir()) == []  # no local copy: the file is as large as a day
    assert storage.read_bytes(KEY) == content
    assert s3.pending_uploads(s3_bucket) == []


@pytest.fixture(params=["s3", "gs"])
def store(request):
    """A fresh bucket on the S3-compatible server or the GCS emulator: (scheme, the server's
    own view of its buckets, the bucket's name), with the environment pointed at the server."""
    server = store_server(request, request.param)
    return request.param, server, server.create_bucket()


def unfinished(scheme: str, server, bucket: str) -> int:
    """How much the store holds of uploads not finished, which no listing shows: S3's count
    of the bucket's multipart uploads, the GCS emulator's bytes of resumable uploads."""
    if scheme == "s3":
        return len(server.pending_uploads(bucket))
    return server.unfinished_upload_bytes()


def upload_started(scheme: str, server, bucket: str, before: int) -> None:
    """Wait until the store holds more of unfinished uploads than `before`."""
    wait_for(lambda: unfinished(scheme, server, bucket) > before, "an upload under way")


def test_a_failure_after_parts_were_sent_keeps_the_old_object(store):
    scheme, server, bucket = store
    storage = storage_for(f"{scheme}://{bucket}/pipe")
    storage.write_bytes(KEY, b"the results of the last run")
    pipes, before = open_pipes(), unfinished(scheme, server, bucket)
    with (
        pytest.raises(RuntimeError, match="the join failed"),
        storage.atomic_write(KEY, streamed=True) as handle,
    ):
        handle.write(os.urandom(24 * MB))
        upload_started(scheme, server, bucket, before)
        raise RuntimeError("the join failed")
    assert storage.read_bytes(KEY) == b"the results of the last run"
    assert server.keys(bucket) == [f"pipe/{KEY}"]
    if scheme == "s3":
        assert server.pending_uploads(bucket) == [f"pipe/{KEY}"]  # abandoned, not completed
    assert open_pipes() == pipes  # the pipes to and from the uploading process are closed


WRITER = """
import os, sys, time
from batch_pipeline.core.storage import storage_for
storage = storage_for(sys.argv[1])
with storage.atomic_write(sys.argv[2], streamed=True) as handle:
    handle.write(os.urandom(24 * 1024 * 1024))
    print("written", flush=True)
    time.sleep(600)
"""


def test_a_writer_killed_mid_file_leaves_no_object(store):
    scheme, server, bucket = store
    before = unfinished(scheme, server, bucket)
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, f"{scheme}://{bucket}/pipe", KEY],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert writer.stdout is not None
    try:
        assert writer.stdout.readline() == "written\n"
        upload_started(scheme, server, bucket, before)
    finally:  # killed also when the test fails first: no writer outlives it
        writer.send_signal(signal.SIGKILL)
        writer.wait()
        writer.stdout.close()
    time.sleep(2)  # what the uploading process does once its writer is gone
    assert server.keys(bucket) == []
    if scheme == "s3":
        assert server.pending_uploads(bucket) == [f"pipe/{KEY}"]


def test_a_store_that_refuses_the_upload_is_named_on_one_line(s3, s3_bucket):
    storage = storage_for(f"s3://{s3_bucket}/pipe")
    s3.client().delete_bucket(Bucket=s3_bucket)
    with (
        pytest.raises(StorageLocationError) as raised,
        storage.atomic_write(KEY, streamed=True) as handle,
    ):
        handle.write(os.urandom(12 * MB))
    message = str(raised.value)
    assert message.startswith(f"s3://{s3_bucket}/pipe/{KEY}: ")
    assert "\n" not in message
    assert os.environ["AWS_SECRET_ACCESS_KEY"] not in message


def test_the_uploading_process_imports_what_the_writer_imports_not_the_working_folder(
    s3, s3_bucket, tmp_path, monkeypatch
):
    """A run started in a folder that holds another checkout of the package (or a module
    named like a library) still uploads with the code the run itself imported."""
    other = tmp_path / "batch_pipeline"
    other.mkdir()
    (other / "__init__.py").write_text("raise ImportError('another checkout')\n")
    monkeypatch.chdir(tmp_path)
    storage = storage_for(f"s3://{s3_bucket}/pipe")
    with storage.atomic_write(KEY, streamed=True) as handle:
        handle.write(b"results")
    assert storage.read_bytes(KEY) == b"results"


@pytest.mark.timeout(120)
def test_a_store_client_that_logs_a_lot_does_not_stall_the_upload(gcs, gcs_bucket, monkeypatch):
    """Google's documented tracing variables make its client log every request to the error
    stream: far more than a pipe holds, which the uploading process must never wait on."""
    monkeypatch.setenv("CLOUD_STORAGE_ENABLE_TRACING", "http")
    monkeypatch.setenv("GOOGLE_CLOUD_CPP_ENABLE_CLOG", "yes")
    storage = storage_for(f"gs://{gcs_bucket}/pipe")
    content = os.urandom(64 * MB)
    with storage.atomic_write(KEY, streamed=True) as handle:
        for start in range(0, len(content), MB):
            handle.write(content[start : start + MB])
    assert storage.read_bytes(KEY) == content


@pytest.mark.timeout(120)
def test_the_writer_runs_ahead_of_a_store_that_has_not_answered_yet_but_only_so_far(
    s3, s3_bucket, monkeypatch
):
    """While the store takes its time (here: it accepts the connection and never answers), the
    uploading process keeps reading what the writer sends, so the join goes on producing; it
    stops reading `FRAMES_AHEAD` frames on, so neither side holds more than that (and the part
    the store's stream holds)."""
    storage = storage_for(f"s3://{s3_bucket}/pipe")  # the store is reached and checked
    silent = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    threading.Thread(target=lambda: held.append(silent.accept()[0]), daemon=True).start()
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{silent.getsockname()[1]}")
    frame = os.urandom(FRAME_BYTES)
    written: list[int] = []

    def write_all(handle) -> None:
        with contextlib.suppress(StorageLocationError):  # the pipe, once the upload is stopped
            for _ in range(4 * FRAMES_AHEAD):
                handle.write(frame)
                written.append(1)

    with (
        pytest.raises(RuntimeError, match="stop"),
        storage.atomic_write(KEY, streamed=True) as handle,
    ):
        writer = threading.Thread(target=write_all, args=(handle,), daemon=True)
        writer.start()
        wait_for(lambda: held, "the uploading process reached the store")
        wait_for(lambda: len(written) >= FRAMES_AHEAD, "the writer ran ahead")
        seen: list[int] = []  # a second (20 looks) without progress: it is held
        wait_for(
            lambda: seen.append(len(written)) or seen[-20:] == [len(written)] * 20,
            "the writer stopped advancing",
        )
        assert FRAMES_AHEAD <= len(written) <= FRAMES_AHEAD + STREAM_PART_FRAMES + 4
        assert writer.is_alive()
        raise RuntimeError("stop")
    writer.join(timeout=20)
    assert not writer.is_alive()
    silent.close()
    for connection in held:
        connection.close()


def test_a_small_file_abandoned_leaves_not_even_an_unfinished_upload(s3, s3_bucket):
    """A day's results smaller than a part go up in one request at the end: a failure before
    then leaves the store untouched, with nothing for a lifecycle rule to clean up."""
    storage = storage_for(f"s3://{s3_bucket}/pipe")
    with (
        pytest.raises(RuntimeError, match="the join failed"),
        storage.atomic_write(KEY, streamed=True) as handle,
    ):
        handle.write(os.urandom(MB))
        time.sleep(3)  # time enough for an upload opened at once to reach the store
        raise RuntimeError("the join failed")
    assert s3.keys(s3_bucket) == []
    assert s3.pending_uploads(s3_bucket) == []
    with storage.atomic_write(KEY, streamed=True) as handle:
        handle.write(b"small results")
    assert storage.read_bytes(KEY) == b"small results"
    assert s3.pending_uploads(s3_bucket) == []


def test_one_large_write_goes_to_the_uploading_process_in_frames_of_bounded_size():
    """The uploading process reads a number of frames ahead: a frame never holds more than
    `FRAME_BYTES`, whatever the size of the write, so that number bounds its memory."""
    pipe = KeptPipe()
    sink = _FramedSink(pipe, lambda: AssertionError("the pipe broke"))
    content = os.urandom(5 * FRAME_BYTES + 12_345)
    sink.write(b"head")
    sink.write(content)
    sink.commit()
    frames, total = read_frames(pipe.kept)
    assert max(len(frame) for frame in frames) <= FRAME_BYTES
    assert b"".join(frames) == b"head" + content
    assert total == 4 + len(content)


class KeptPipe(io.BytesIO):
    """A pipe's writing end whose content stays readable after the sink closes it."""

    kept = b""

    def close(self) -> None:
        self.kept = self.getvalue()
        super().close()


def read_frames(data: bytes) -> tuple[list[bytes], int]:
    """The frames on the pipe, and the total length its commit carries, as the uploading
    process reads them."""
    queued: queue.Queue[bytes | int | None] = queue.Queue()
    _read_into(io.BytesIO(data), queued)
    *frames, total = [queued.get() for _ in range(queued.qsize())]
    return frames, total
