"""The storage contract, held by every storage root: a local folder and the object stores (the
S3-compatible server, the GCS emulator)."""

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batch_pipeline.core.storage import LocalStorage, StorageRoot, StoredFile, storage_for
from batch_pipeline_tests.conftest import store_server


@pytest.fixture(
    params=[
        "local",
        pytest.param("s3", marks=pytest.mark.slow),
        pytest.param("gs", marks=pytest.mark.slow),
    ]
)
def storage(request, tmp_path, staging):
    if request.param == "local":
        return LocalStorage(tmp_path / "root")
    bucket = store_server(request, request.param).create_bucket()
    return storage_for(f"{request.param}://{bucket}/some/prefix")


@pytest.fixture
def local_storage(tmp_path):
    return LocalStorage(tmp_path / "root")


def test_write_then_read_round_trips_and_creates_folders(storage):
    storage.write_bytes("a/b/c.txt", b"hello")
    assert storage.exists("a/b/c.txt")
    assert storage.read_bytes("a/b/c.txt") == b"hello"
    with storage.open_read("a/b/c.txt") as handle:
        assert handle.read() == b"hello"
    assert storage.uri("a/b/c.txt").endswith("/a/b/c.txt")


def test_local_uri_is_the_files_path(local_storage):
    assert local_storage.uri("a/b/c.txt") == str(local_storage.root / "a" / "b" / "c.txt")


@pytest.mark.parametrize("streamed", [False, True], ids=["staged", "streamed"])
def test_atomic_write_that_raises_leaves_no_file_under_the_final_name(storage, staging, streamed):
    with (
        pytest.raises(RuntimeError),
        storage.atomic_write("out/new.jsonl", streamed=streamed) as handle,
    ):
        handle.write(b"half a line")
        raise RuntimeError("crash while writing")
    assert not storage.exists("out/new.jsonl")
    assert storage.list("out") == []
    assert list(staging.iterdir()) == []  # nothing staged is left behind
    if isinstance(storage, LocalStorage):
        assert list((storage.root / "out").iterdir()) == []  # the temporary file is gone too


@pytest.mark.parametrize("streamed", [False, True], ids=["staged", "streamed"])
def test_atomic_write_leaves_no_temporary_file_once_published(storage, staging, streamed):
    with storage.atomic_write("out/new.jsonl", streamed=streamed) as handle:
        handle.write(b"{}\n")
    assert storage.read_bytes("out/new.jsonl") == b"{}\n"
    assert list(staging.iterdir()) == []


@pytest.mark.parametrize("streamed", [False, True], ids=["staged", "streamed"])
def test_atomic_write_that_raises_keeps_the_old_content(storage, streamed):
    storage.write_bytes("shard.jsonl", b"old\n")
    with (
        pytest.raises(RuntimeError),
        storage.atomic_write("shard.jsonl", streamed=streamed) as handle,
    ):
        handle.write(b"new but unfinished")
        raise RuntimeError("crash while writing")
    assert storage.read_bytes("shard.jsonl") == b"old\n"


@pytest.mark.parametrize("streamed", [False, True], ids=["staged", "streamed"])
def test_atomic_write_replaces_old_content_only_when_done(storage, streamed):
    storage.write_bytes("shard.jsonl", b"old\n")
    with storage.atomic_write("shard.jsonl", streamed=streamed) as handle:
        handle.write(b"new\n")
        assert storage.read_bytes("shard.jsonl") == b"old\n"
    assert storage.read_bytes("shard.jsonl") == b"new\n"


@pytest.mark.parametrize("streamed", [False, True], ids=["staged", "streamed"])
def test_list_is_sorted_relative_and_never_shows_temporary_files(storage, streamed):
    storage.write_bytes("p/b.txt", b"")
    storage.write_bytes("p/a/z.txt", b"")
    storage.write_bytes("q.txt", b"")
    with storage.atomic_write("p/c.txt", streamed=streamed) as handle:
        handle.write(b"pending")
        assert storage.list("p") == ["p/a/z.txt", "p/b.txt"]
    assert storage.list("p") == ["p/a/z.txt", "p/b.txt", "p/c.txt"]
    assert storage.list() == ["p/a/z.txt", "p/b.txt", "p/c.txt", "q.txt"]
    assert storage.list("missing") == []


def test_delete_and_delete_tree_tolerate_missing_paths(storage):
    storage.write_bytes("t/x/1.txt", b"1")
    storage.write_bytes("t/2.txt", b"2")
    storage.delete("t/2.txt")
    storage.delete("t/2.txt")
    assert storage.list("t") == ["t/x/1.txt"]
    storage.delete_tree("t")
    storage.delete_tree("t")
    assert storage.list() == []


def test_paths_cannot_leave_the_root(storage):
    for bad in ("../outside.txt", "a/../../outside.txt", "/etc/passwd"):
        with pytest.raises(ValueError, match="inside the root"):
            storage.write_bytes(bad, b"x")


def test_local_path_serves_parquet_writers(local_storage):
    path = local_storage.local_path("results/part-0.parquet")
    path.parent.mkdir(parents=True)
    pq.write_table(pa.table({"a": [1]}), path)
    assert local_storage.list("results") == ["results/part-0.parquet"]


@pytest.mark.parametrize("streamed", [False, True], ids=["staged", "streamed"])
def test_parquet_can_be_written_through_atomic_write_and_read_through_open_read(storage, streamed):
    with storage.atomic_write("t.parquet", streamed=streamed) as handle:
        pq.write_table(pa.table({"a": [1, 2]}), handle)
    with storage.open_read("t.parquet") as handle:
        assert pq.read_table(handle).column("a").to_pylist() == [1, 2]


def test_storage_for_picks_local_storage_for_paths_and_file_urls(tmp_path):
    for root in (tmp_path, str(tmp_path), f"file://{tmp_path}"):
        storage = storage_for(root)
        assert isinstance(storage, LocalStorage)
        assert isinstance(storage, StorageRoot)
        assert storage.root == tmp_path.resolve()


def test_size_and_stored_files_read_through_the_interface(storage):
    storage.write_bytes("a/b.jsonl", b"one\ntwo\n")
    assert storage.size("a/b.jsonl") == 8
    stored = StoredFile(storage, "a/b.jsonl")
    with stored.open() as handle:
        assert handle.readlines() == [b"one\n", b"two\n"]
    assert str(stored) == storage.uri("a/b.jsonl")
    with pytest.raises(FileNotFoundError):
        storage.size("a/missing.jsonl")


def test_written_files_are_as_readable_as_any_other_file_written_there(local_storage):
    """Not the owner-only mode of a temporary file: readers in other accounts (a notebook
    server, a Dagster code server) read requests and results alike."""
    local_storage.write_bytes("requests/shard.jsonl", b"{}\n")
    plain = local_storage.root / "plain.txt"
    plain.write_text("x")
    path = local_storage.local_path("requests/shard.jsonl")
    assert path.stat().st_mode == plain.stat().st_mode


@pytest.mark.parametrize("streamed", [False, True], ids=["staged", "streamed"])
def test_a_file_of_several_upload_parts_streams_back_line_by_line(storage, streamed):
    line = b"x" * 1023 + b"\n"
    with storage.atomic_write("big/lines.jsonl", streamed=streamed) as handle:
        for _ in range(12 * 1024):  # 12 MB: more than one part of a multipart upload
            handle.write(line)
    assert storage.size("big/lines.jsonl") == 12 * 1024 * 1024
    with storage.open_read("big/lines.jsonl") as handle:
        assert handle.readline() == line
        handle.seek(-1024, 2)
        assert list(handle) == [line]
