"""Reads that pass through this machine's disk on their way from or to an object store: the
files the results join walks (fetched while the one before is read) and a batch's downloads
(a temporary folder, never uploaded). Against the S3-compatible server."""

from __future__ import annotations

import os
import tempfile

import pytest

from batch_pipeline.core import object_storage
from batch_pipeline.core.staged_reads import StagedReads
from batch_pipeline.core.storage import LocalStorage, scratch_for, storage_for

pytestmark = pytest.mark.slow


def contents(count: int) -> dict[str, bytes]:
    """Files of different sizes, two bigger than one request of a download (see bucket_root)."""
    return {f"group/{index}.bin": os.urandom(1_000 + index * 5_000_000) for index in range(count)}


@pytest.fixture
def bucket_root(s3_bucket, tmp_path, monkeypatch):
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    monkeypatch.setattr(object_storage, "DOWNLOAD_BLOCK_BYTES", 4 * 1024 * 1024)
    return storage_for(f"s3://{s3_bucket}/root")


def test_files_read_in_order_are_the_stored_bytes_and_leave_no_copy(bucket_root, tmp_path):
    files = contents(3)
    for key, data in files.items():
        bucket_root.write_bytes(key, data)

    with StagedReads(bucket_root, list(files)) as reads:
        read = {}
        for key in files:
            with reads.open_read(key) as handle:
                read[key] = handle.read()
        assert reads.exists("group/0.bin")  # the rest of the interface is the store's

    assert read == files
    assert os.listdir(tmp_path / "tmp") == []


def test_a_file_passed_over_or_asked_for_out_of_order_still_reads_whole(bucket_root):
    files = contents(4)
    for key, data in files.items():
        bucket_root.write_bytes(key, data)
    keys = list(files)

    with StagedReads(bucket_root, keys) as reads:
        assert reads.open_read(keys[1]).read() == files[keys[1]]  # the first one passed over
        assert reads.open_read(keys[0]).read() == files[keys[0]]  # no longer ahead: the store
        assert reads.open_read(keys[3]).read() == files[keys[3]]


def test_a_file_that_cannot_be_fetched_fails_where_it_is_read(bucket_root):
    bucket_root.write_bytes("group/0.bin", b"first")

    with StagedReads(bucket_root, ["group/0.bin", "group/missing.bin"]) as reads:
        assert reads.open_read("group/0.bin").read() == b"first"
        with pytest.raises(FileNotFoundError):
            reads.open_read("group/missing.bin")


def test_downloads_for_an_object_store_go_to_a_temporary_folder_removed_after_an_error(
    bucket_root, tmp_path
):
    with pytest.raises(RuntimeError), scratch_for(bucket_root) as scratch:
        with scratch.atomic_write("batches/output.jsonl") as out:
            out.write(b'{"line": 1}\n')
        assert scratch.read_bytes("batches/output.jsonl") == b'{"line": 1}\n'
        raise RuntimeError("the parse failed")

    assert os.listdir(tmp_path / "tmp") == []
    assert bucket_root.list() == []  # nothing of it went to the store


def test_downloads_for_a_local_folder_stay_in_it(tmp_path):
    local = LocalStorage(tmp_path / "out")
    with scratch_for(local) as scratch:
        assert scratch is local
