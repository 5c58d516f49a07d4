"""One layout names every stored file, and every read and write goes through the storage
interface: a storage root that is no local folder stands behind a whole pipeline."""

from __future__ import annotations

import ast
import contextlib
import io
import re
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pandas as pd

from batch_pipeline import PipelineSpec
from batch_pipeline.core import layout
from batch_pipeline.core.storage import StorageRoot
from batch_pipeline_tests.batch_apis import BatchApi, on_both_apis
from batch_pipeline_tests.conftest import ticket_spec, write_tickets

DAY = "2026-11-20"
PACKAGE = Path(layout.__file__).parent
# How a key of the layout is spelled: its top folders, or the Hive partition folder.
STORED_KEY = re.compile(r"(^|/)(requests|batches|results)/|partition=")


class MemoryStorage:
    """A storage root held in a dict: nothing in it has a local path."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.reads: list[str] = []

    def uri(self, rel: str) -> str:
        return f"memory://{rel}"

    def exists(self, rel: str) -> bool:
        return rel in self.files

    def size(self, rel: str) -> int:
        return len(self._get(rel))

    def open_read(self, rel: str) -> io.BytesIO:
        self.reads.append(rel)
        return io.BytesIO(self._get(rel))

    @contextlib.contextmanager
    def atomic_write(
        self, rel: str, *, durable: bool = True, streamed: bool = False
    ) -> Iterator[io.BytesIO]:
        buffer = io.BytesIO()
        yield buffer
        self.files[rel] = buffer.getvalue()  # whole, and only once the block ended normally

    def write_bytes(self, rel: str, data: bytes) -> None:
        self.files[rel] = bytes(data)

    def read_bytes(self, rel: str) -> bytes:
        return self._get(rel)

    def list(self, prefix: str = "") -> list[str]:
        folder = f"{prefix.rstrip('/')}/" if prefix else ""
        return sorted(key for key in self.files if key.startswith(folder))

    def delete(self, rel: str) -> None:
        self.files.pop(rel, None)

    def delete_tree(self, prefix: str) -> None:
        for key in self.list(prefix):
            del self.files[key]

    def _get(self, rel: str) -> bytes:
        try:
            return self.files[rel]
        except KeyError:
            raise FileNotFoundError(rel) from None


def test_a_dict_backed_storage_is_a_storage_root() -> None:
    assert isinstance(MemoryStorage(), StorageRoot)


def test_every_kind_of_stored_file_has_one_key() -> None:
    shard = layout.shard_path(DAY, 2, 3, 7)
    folder = layout.batch_dir(DAY, 2, 3, 7)
    assert shard == f"requests/partition={DAY}/gen=2/attempt=3/shard-00007.jsonl"
    assert layout.shard_ids_path(shard) == shard.removesuffix(".jsonl") + ".ids.parquet"
    assert (
        layout.manifest_path(DAY, 2, 1) == f"requests/partition={DAY}/gen=2/attempt=1/manifest.json"
    )
    assert layout.manifest_path(DAY, 2, 3, 7).endswith("/attempt=3/manifest-s00007.json")
    assert layout.rejected_path(DAY, 2) == f"requests/partition={DAY}/gen=2/rejected.parquet"
    assert folder == f"batches/partition={DAY}/gen=2/attempt=3/shard-00007"
    assert layout.batch_file_path(folder, "output") == f"{folder}/output.jsonl"
    assert layout.batch_file_path(folder, "errors") == f"{folder}/errors.jsonl"
    assert layout.outcomes_path(folder) == f"{folder}/outcomes.parquet"
    assert layout.results_path(DAY) == f"results/partition={DAY}/part-0.parquet"


def test_results_keys_give_their_partition_and_hidden_files_are_not_results() -> None:
    assert layout.results_partition(f"partition={DAY}/part-0.parquet") == DAY
    for other in (
        f"partition={DAY}/.part-0.parquet.x1.tmp",
        f"partition={DAY}/_SUCCESS.parquet",
        f"partition={DAY}/notes.txt",
        "part-0.parquet",
        f"day={DAY}/part-0.parquet",
        f"a/partition={DAY}/part-0.parquet",
    ):
        assert layout.results_partition(other) is None, other


def _docstrings(tree: ast.AST) -> set[int]:
    """The ids of the docstring nodes of a module, its classes and its functions."""
    owners = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
    return {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, owners) and node.body and isinstance(node.body[0], ast.Expr)
    }


def _key_spellings(path: Path) -> list[str]:
    """The string pieces of a module's code that spell a stored key, and its local_path calls."""
    tree = ast.parse(path.read_text())
    docstrings = _docstrings(tree)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            if id(node) not in docstrings and STORED_KEY.search(node.value):
                found.append(f"{path.name}:{node.lineno}: {node.value!r}")
        elif isinstance(node, ast.Attribute) and node.attr == "local_path":
            found.append(f"{path.name}:{node.lineno}: .local_path")
    return found


def test_no_other_library_module_spells_a_stored_key_or_asks_for_a_local_path() -> None:
    modules = [
        path
        for path in PACKAGE.parent.rglob("*.py")
        if path.name not in ("layout.py", "storage.py") and "local_api" not in path.parts
    ]
    assert len(modules) > 30
    assert [found for path in modules for found in _key_spellings(path)] == []


@on_both_apis
def test_a_whole_pipeline_runs_on_a_storage_that_is_no_local_folder(
    tmp_path: Path, api: BatchApi
) -> None:
    """Build, submit, poll, retry, collect and read the results with every file in a dict:
    had any step bypassed the storage interface, it would find no file on disk."""
    at = datetime(2026, 11, 20, 9)
    rows = [
        {"ticket_id": f"T{i}", "subject": f"Order {i}", "body": f"Parcel {i}", "created_at": at}
        for i in range(5)
    ]
    rows += [
        {"ticket_id": "EMPTY", "subject": "x", "body": None, "created_at": at},
        {"ticket_id": "F500", "subject": "Flaky", "body": "<<fail:500>>", "created_at": at},
    ]
    write_tickets(tmp_path / "tickets.parquet", rows)
    spec = PipelineSpec.from_dict(
        ticket_spec(tmp_path, api.base_url, retry={"max_attempts": 2}), base_dir=tmp_path
    )
    storage = MemoryStorage()
    with api.pipeline(spec, storage=storage) as pipeline:
        summary = pipeline.run(DAY, poll_interval=0.1, timeout=60)
        frame = pipeline.read_results(DAY).set_index("ticket_id")

    assert summary.path == f"memory://results/partition={DAY}/part-0.parquet"
    assert summary.counts["succeeded"] == 5 and summary.counts["rejected"] == 1
    assert frame.loc["F500", ["status", "attempts"]].tolist() == ["failed", 2]
    assert frame.loc["T3", "response_text"].startswith("Subject: Order 3")
    assert set(frame["partition"]) == {DAY}
    keys = set(storage.files)
    assert {
        layout.manifest_path(DAY, 1, 1),
        layout.rejected_path(DAY, 1),
        layout.shard_path(DAY, 1, 1, 0),
        layout.shard_ids_path(layout.shard_path(DAY, 1, 1, 0)),
        layout.manifest_path(DAY, 1, 2, 0),
        layout.shard_path(DAY, 1, 2, 0),
        layout.outcomes_path(layout.batch_dir(DAY, 1, 1, 0)),
        layout.outcomes_path(layout.batch_dir(DAY, 1, 2, 0)),
        layout.results_path(DAY),
    } <= keys
    # The downloaded output file never went to a storage that is no local folder: it passed
    # through a temporary folder of this machine, read once into the batch's outcome file.
    downloaded = layout.batch_file_path(layout.batch_dir(DAY, 1, 1, 0), "output")
    assert downloaded not in storage.reads and downloaded not in keys
    assert layout.shard_path(DAY, 1, 1, 0) in storage.reads  # uploaded from the storage
    on_disk = {p.name for p in spec.pipeline_dir.iterdir()}
    assert on_disk <= {"ledger.sqlite", "ledger.sqlite-wal", "ledger.sqlite-shm"}
    assert isinstance(
        pd.read_parquet(io.BytesIO(storage.files[layout.results_path(DAY)])), pd.DataFrame
    )
