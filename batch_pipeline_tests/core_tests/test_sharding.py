import contextlib
import hashlib
from datetime import date

import numpy as np
import orjson
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from batch_pipeline.core import sharding
from batch_pipeline.core.requests import RejectCode, estimate_request_tokens
from batch_pipeline.core.sharding import (
    ShardWriter,
    build_partition_requests,
    iter_request_lines,
    load_manifest,
    shard_ids_path,
    write_retry_shards,
)
from batch_pipeline.core.sources import source_for
from batch_pipeline.core.spec import ModelPrice, PipelineSpec, SpecError
from batch_pipeline.core.storage import LocalStorage

PARTITION = "2024-05-01"


def make_spec(tmp_path, *, limits=None, request=None, prices=None):
    data = {
        "name": "reviews",
        "source": {"path": "src.parquet", "key": "id", "partition_column": "day"},
        "request": {"model": "gpt-4o-mini", "prompt": "Review: {text}", **(request or {})},
        "output": {"dir": "out"},
    }
    if limits:
        data["limits"] = limits
    if prices:
        data["prices"] = prices
    return PipelineSpec.from_dict(data, base_dir=tmp_path)


def write_source(tmp_path, rows=25, text=lambda i: f"review number {i}", other_day_rows=3):
    ids = list(range(rows + other_day_rows))
    days = [date(2024, 5, 1)] * rows + [date(2024, 5, 2)] * other_day_rows
    table = pa.table(
        {"id": ids, "day": pa.array(days, pa.date32()), "text": [text(i) for i in ids]}
    )
    pq.write_table(table, tmp_path / "src.parquet")


def build(tmp_path, spec, generation=1, **kwargs):
    storage = LocalStorage(spec.pipeline_dir)
    return storage, build_partition_requests(
        spec, PARTITION, storage, generation=generation, **kwargs
    )


def shard_lines(storage, manifest):
    return [
        line
        for shard in manifest.shards
        for line in storage.read_bytes(shard.path).splitlines(keepends=True)
    ]


def assert_manifest_matches_files(storage, manifest):
    for shard in manifest.shards:
        data = storage.read_bytes(shard.path)
        assert shard.bytes == len(data)
        assert shard.rows == data.count(b"\n")
        assert shard.sha256 == hashlib.sha256(data).hexdigest()
        ids = [orjson.loads(line)["custom_id"] for line in data.splitlines()]
        assert len(set(ids)) == len(ids)
        assert {orjson.loads(line)["body"]["model"] for line in data.splitlines()} == {
            manifest.model
        }


def test_shards_split_by_the_request_limit_with_matching_manifest(tmp_path):
    write_source(tmp_path)
    spec = make_spec(tmp_path, limits={"max_requests_per_file": 10})
    storage, manifest = build(tmp_path, spec)

    assert [shard.rows for shard in manifest.shards] == [10, 10, 5]
    assert [shard.path for shard in manifest.shards] == [
        f"requests/partition={PARTITION}/gen=1/attempt=1/shard-{i:05d}.jsonl" for i in range(3)
    ]
    assert [shard.shard_id for shard in manifest.shards] == [
        f"reviews:{PARTITION}:g1:a1:s{i:05d}" for i in range(3)
    ]
    assert (manifest.source_rows, manifest.requests, manifest.rejected) == (25, 25, 0)
    assert_manifest_matches_files(storage, manifest)
    lines = [orjson.loads(line) for line in shard_lines(storage, manifest)]
    assert sorted(line["custom_id"] for line in lines) == sorted(
        f"{PARTITION}:{i}" for i in range(25)
    )
    assert storage.list(f"requests/partition={PARTITION}/gen=1") == [
        f"requests/partition={PARTITION}/gen=1/attempt=1/manifest.json",
        *(path for shard in manifest.shards for path in (shard_ids_path(shard.path), shard.path)),
        f"requests/partition={PARTITION}/gen=1/rejected.parquet",
    ]
    for shard in manifest.shards:  # each shard's custom_ids beside it, in line order
        with storage.open_read(shard.path) as shard_file:
            asked = [orjson.loads(line)["custom_id"] for line in shard_file]
        ids = pq.read_table(storage.local_path(shard_ids_path(shard.path)))["custom_id"]
        assert ids.to_pylist() == asked


def test_shards_split_by_the_byte_limit(tmp_path):
    write_source(tmp_path, rows=40, text=lambda i: f"review {i} " + "x" * 150)
    spec = make_spec(tmp_path, limits={"max_bytes_per_file": 1024})
    storage, manifest = build(tmp_path, spec)

    assert len(manifest.shards) > 1
    assert all(shard.bytes <= 1024 for shard in manifest.shards)
    assert sum(shard.rows for shard in manifest.shards) == 40
    assert_manifest_matches_files(storage, manifest)
    # Every shard but the last is full: the next line would not have fitted.
    line_size = len(shard_lines(storage, manifest)[0])
    assert all(shard.bytes + line_size > 1024 for shard in manifest.shards[:-1])


def test_shards_stay_within_the_enqueued_token_budget(tmp_path):
    write_source(tmp_path, rows=30)
    spec = make_spec(tmp_path, limits={"enqueued_tokens": 60})
    _, manifest = build(tmp_path, spec)
    assert len(manifest.shards) > 1
    assert all(shard.estimated_input_tokens <= 60 for shard in manifest.shards)
    assert sum(shard.rows for shard in manifest.shards) == 30


def test_manifest_round_trips_and_reports_costs(tmp_path):
    write_source(tmp_path, rows=12)
    spec = make_spec(
        tmp_path,
        limits={"max_requests_per_file": 5},
        request={"params": {"max_completion_tokens": 20}},
    )
    storage, manifest = build(tmp_path, spec)

    assert load_manifest(storage, PARTITION, 1, 1) == manifest
    document = orjson.loads(storage.read_bytes(manifest.path))
    assert document["totals"]["requests"] == 12
    assert document["totals"]["bytes"] == sum(shard["bytes"] for shard in document["shards"])
    first = document["shards"][0]
    assert first["estimated_output_tokens"] == 5 * 20
    expected_live = (first["estimated_input_tokens"] * 0.15 + 100 * 0.60) / 1_000_000
    assert first["estimated_cost_live_usd"] == pytest.approx(expected_live, abs=1e-6)
    assert first["estimated_cost_batch_usd"] == pytest.approx(expected_live / 2, abs=1e-6)
    assert manifest.estimated_cost_batch_usd == pytest.approx(
        manifest.estimated_cost_live_usd / 2, abs=1e-6
    )
    assert manifest.notes == ()


def test_unknown_price_and_missing_output_cap_are_said_not_invented(tmp_path):
    write_source(tmp_path, rows=3)
    spec = make_spec(tmp_path, request={"model": "my-local-llama"})
    _, manifest = build(tmp_path, spec)
    assert manifest.estimated_cost_live_usd is None
    assert manifest.estimated_cost_batch_usd is None
    assert manifest.estimated_output_tokens == 0
    assert any("max_tokens" in note for note in manifest.notes)
    assert any("no price is known for model 'my-local-llama'" in note for note in manifest.notes)

    priced = make_spec(
        tmp_path,
        request={"model": "my-local-llama"},
        prices={"my-local-llama": ModelPrice(input=1.0)},
    )
    _, manifest = build(tmp_path, priced, generation=2)
    assert manifest.estimated_cost_live_usd == pytest.approx(
        manifest.estimated_input_tokens / 1_000_000, abs=1e-6
    )


def test_the_manifest_counts_and_notes_source_rows_that_fall_on_no_day(tmp_path):
    table = pa.table(
        {
            "id": [1, 2, 3],
            "day": pa.array([date(2024, 5, 1), None, None], pa.date32()),
            "text": ["a", "b", "c"],
        }
    )
    pq.write_table(table, tmp_path / "src.parquet")
    storage, manifest = build(tmp_path, make_spec(tmp_path))
    assert (manifest.requests, manifest.rows_without_day) == (1, 2)
    assert any(note.startswith("2 source rows fall on no day") for note in manifest.notes)
    assert load_manifest(storage, PARTITION, 1, 1) == manifest


def test_rejected_rows_are_written_with_their_reasons(tmp_path):
    frame = pd.DataFrame(
        {
            "id": [1, 2, 2, 3, 4],
            "day": [date(2024, 5, 1)] * 5,
            "text": pd.Series(["ok", "ok too", "dup", "", "bad \ud800"], dtype=object),
        }
    )
    spec = make_spec(tmp_path)
    storage, manifest = build(tmp_path, spec, source=source_for(spec, frame))

    assert (manifest.source_rows, manifest.requests, manifest.rejected) == (5, 2, 3)
    rejected = pq.read_table(
        storage.local_path(f"requests/partition={PARTITION}/gen=1/rejected.parquet")
    )
    assert rejected.column("key").type == pa.string()
    assert [(r["row_number"], r["key"], r["code"]) for r in rejected.to_pylist()] == [
        (2, "2", RejectCode.DUPLICATE_KEY),
        (3, "3", RejectCode.EMPTY_VALUE),
        (4, "4", RejectCode.INVALID_TEXT),
    ]
    assert all(reason for reason in rejected.column("reason").to_pylist())


def test_placeholder_naming_no_column_fails_before_any_file_is_written(tmp_path):
    write_source(tmp_path)
    spec = make_spec(tmp_path, request={"prompt": "Review: {body}"})
    with pytest.raises(SpecError, match=r"placeholder \{body\} names no column"):
        build(tmp_path, spec)
    assert not spec.pipeline_dir.exists()


def test_empty_partition_writes_an_empty_manifest_and_rejected_file(tmp_path):
    write_source(tmp_path, rows=0)
    storage, manifest = build(tmp_path, make_spec(tmp_path))
    assert (manifest.source_rows, manifest.requests, len(manifest.shards)) == (0, 0, 0)
    assert (
        pq.read_table(
            storage.local_path(f"requests/partition={PARTITION}/gen=1/rejected.parquet")
        ).num_rows
        == 0
    )


def test_rebuilding_a_generation_removes_stale_shards(tmp_path):
    write_source(tmp_path, rows=5)
    spec = make_spec(tmp_path)
    storage = LocalStorage(spec.pipeline_dir)
    stale = f"requests/partition={PARTITION}/gen=1/attempt=1/shard-00007.jsonl"
    storage.write_bytes(stale, b"{}\n")
    build(tmp_path, spec)
    assert not storage.exists(stale)


def test_retry_shards_are_built_from_the_original_lines(tmp_path):
    write_source(tmp_path, rows=12)
    spec = make_spec(tmp_path, limits={"max_requests_per_file": 5})
    storage, first = build(tmp_path, spec)
    originals = {orjson.loads(line)["custom_id"]: line for line in shard_lines(storage, first)}
    retry_ids = {f"{PARTITION}:1", f"{PARTITION}:7", f"{PARTITION}:11"}

    lines = list(iter_request_lines(storage, [s.path for s in first.shards], retry_ids))
    assert {custom_id for custom_id, _, _ in lines} == retry_ids
    assert all(line == originals[custom_id] for custom_id, line, _ in lines)

    retry = write_retry_shards(spec, storage, PARTITION, 1, 2, lines)
    assert retry.attempt == 2
    assert [shard.path for shard in retry.shards] == [
        f"requests/partition={PARTITION}/gen=1/attempt=2/shard-00000.jsonl"
    ]
    assert retry.shards[0].shard_id == f"reviews:{PARTITION}:g1:a2:s00000"
    assert sorted(shard_lines(storage, retry)) == sorted(originals[i] for i in retry_ids)
    assert_manifest_matches_files(storage, retry)
    assert load_manifest(storage, PARTITION, 1, 2) == retry
    assert all(isinstance(tokens, int) and tokens > 0 for _, _, tokens in lines)


def test_retries_of_one_shard_get_their_own_index_and_manifest(tmp_path):
    write_source(tmp_path, rows=12)
    spec = make_spec(tmp_path, limits={"max_requests_per_file": 5})
    storage, first = build(tmp_path, spec)
    source = first.shards[2]
    lines = iter_request_lines(storage, [source.path], None)
    retry = write_retry_shards(spec, storage, PARTITION, 1, 2, lines, first_index=source.index)

    assert [shard.index for shard in retry.shards] == [2]
    assert retry.path == f"requests/partition={PARTITION}/gen=1/attempt=2/manifest-s00002.json"
    assert load_manifest(storage, PARTITION, 1, 2, first_index=2) == retry
    assert storage.read_bytes(retry.shards[0].path) == storage.read_bytes(source.path)


def retry_whole_shards(spec, storage, shards):
    """Attempt 2 of every request of each of `shards`, one retry manifest per shard."""
    return [
        write_retry_shards(
            spec,
            storage,
            PARTITION,
            1,
            2,
            iter_request_lines(storage, [shard.path], None),
            first_index=shard.index,
        )
        for shard in shards
    ]


def test_retries_of_neighbouring_shards_stay_apart_after_the_limits_were_lowered(tmp_path):
    """Shards 0 and 1 were built 5 requests a file; the limit is 2 when their rows are
    retried. Each one's retries stay one shard of its own index: splitting shard 0's would
    have written over shard 1's retry file, and its shard id, with other rows."""
    write_source(tmp_path, rows=10)
    storage, first = build(tmp_path, make_spec(tmp_path, limits={"max_requests_per_file": 5}))
    lowered = make_spec(tmp_path, limits={"max_requests_per_file": 2})
    retries = retry_whole_shards(lowered, storage, first.shards[:2])
    assert [[shard.index for shard in retry.shards] for retry in retries] == [[0], [1]]
    for source, retry in zip(first.shards[:2], retries, strict=True):
        assert storage.read_bytes(retry.shards[0].path) == storage.read_bytes(source.path)
        assert_manifest_matches_files(storage, retry)


def retry_of_each_shard(spec, storage, first, monkeypatch):
    """Retry shards of every request of each shard of `first`, and how many request lines the
    retry path parsed to estimate their tokens again."""
    parsed = []

    def counted(requests, **options):
        parsed.extend(requests)
        return estimate_request_tokens(requests, **options)

    monkeypatch.setattr(sharding, "estimate_request_tokens", counted)
    return retry_whole_shards(spec, storage, first.shards), len(parsed)


def test_retry_shards_take_the_token_estimates_of_the_build_without_parsing(tmp_path, monkeypatch):
    write_source(tmp_path, rows=12, text=lambda i: "word " * (i * 7 + 1))
    spec = make_spec(tmp_path, limits={"max_requests_per_file": 5})
    storage, first = build(tmp_path, spec)
    for shard in first.shards:  # each line's estimate is kept beside the shard
        kept = pq.read_table(storage.local_path(shard_ids_path(shard.path)))
        assert sum(kept["estimated_input_tokens"].to_pylist()) == shard.estimated_input_tokens

    retries, parsed = retry_of_each_shard(spec, storage, first, monkeypatch)
    assert parsed == 0
    assert [retry.shards[0].estimated_input_tokens for retry in retries] == [
        shard.estimated_input_tokens for shard in first.shards
    ]

    # The figures are read from the ids file, not figured again: change them and they follow.
    path = storage.local_path(shard_ids_path(first.shards[0].path))
    kept = pq.read_table(path)
    pq.write_table(
        kept.set_column(1, "estimated_input_tokens", pc.add(kept["estimated_input_tokens"], 1000)),
        path,
    )
    retries, _ = retry_of_each_shard(spec, storage, first, monkeypatch)
    assert retries[0].shards[0].estimated_input_tokens == (
        first.shards[0].estimated_input_tokens + 1000 * first.shards[0].rows
    )


@pytest.mark.parametrize("ids_file", ["without-estimates", "gone", "of-another-shard"])
def test_retry_shards_of_an_earlier_build_estimate_the_tokens_again(
    tmp_path, monkeypatch, ids_file
):
    write_source(tmp_path, rows=12, text=lambda i: "word " * (i * 7 + 1))
    spec = make_spec(tmp_path, limits={"max_requests_per_file": 5})
    storage, first = build(tmp_path, spec)
    for shard in first.shards:
        path = storage.local_path(shard_ids_path(shard.path))
        if ids_file == "without-estimates":  # as versions that kept only the custom_ids
            pq.write_table(pq.read_table(path).select(["custom_id"]), path)
        elif ids_file == "gone":
            path.unlink()
    if ids_file == "of-another-shard":
        ids_of = [storage.local_path(shard_ids_path(shard.path)) for shard in first.shards]
        ids_of[0].write_bytes(ids_of[1].read_bytes())

    retries, parsed = retry_of_each_shard(spec, storage, first, monkeypatch)
    assert parsed == (first.requests if ids_file != "of-another-shard" else first.shards[0].rows)
    assert [retry.shards[0].estimated_input_tokens for retry in retries] == [
        shard.estimated_input_tokens for shard in first.shards
    ]
    for source, retry in zip(first.shards, retries, strict=True):
        assert storage.read_bytes(retry.shards[0].path) == storage.read_bytes(source.path)


def test_retry_refuses_a_repeated_custom_id_and_attempt_one(tmp_path):
    spec = make_spec(tmp_path)
    storage = LocalStorage(spec.pipeline_dir)
    line = (f"{PARTITION}:1", b'{"custom_id":"x"}\n', 1)
    with pytest.raises(ValueError, match="given twice"):
        write_retry_shards(spec, storage, PARTITION, 1, 2, [line, line])
    assert storage.list(f"requests/partition={PARTITION}/gen=1/attempt=2") == []
    with pytest.raises(ValueError, match="start at 2"):
        write_retry_shards(spec, storage, PARTITION, 1, 1, [line])


def test_shard_writer_error_leaves_no_shard_files(tmp_path):
    spec = make_spec(tmp_path)
    storage = LocalStorage(spec.pipeline_dir)
    lines = pa.array([b'{"a":1}\n'] * 3, pa.large_binary())
    with pytest.raises(RuntimeError), ShardWriter(spec, storage, PARTITION, 1, 1) as writer:
        writer.add(pa.array(["a", "b", "c"]), lines, np.ones(3, dtype=np.int64))
        raise RuntimeError("crash mid-build")
    assert list(spec.pipeline_dir.rglob("*.jsonl*")) == []


class DiskFullStorage(LocalStorage):
    """Local storage whose shard files fail after `room` bytes, like a full disk."""

    def __init__(self, root, room):
        super().__init__(root)
        self.room = room

    @contextlib.contextmanager
    def atomic_write(self, rel, **options):
        with super().atomic_write(rel, **options) as handle:
            if rel.endswith(".jsonl"):
                write = handle.write

                def limited(data):
                    self.room -= len(data)
                    if self.room < 0:
                        raise OSError(28, "No space left on device")
                    return write(data)

                handle.write = limited
            yield handle


def test_a_failed_shard_write_leaves_no_shard_and_no_manifest(tmp_path):
    write_source(tmp_path, rows=40)
    spec = make_spec(tmp_path, limits={"max_requests_per_file": 10})
    storage = DiskFullStorage(spec.pipeline_dir, room=1500)
    with pytest.raises(OSError, match="No space left"):
        build_partition_requests(spec, PARTITION, storage, generation=1)
    assert_only_complete_shards(storage, spec)


def assert_only_complete_shards(storage, spec) -> list[str]:
    """No manifest, no temporary file, and every shard there has its 10 lines; returns the
    shards there."""
    written = storage.list(f"requests/partition={PARTITION}/gen=1/attempt=1")
    assert all(path.endswith((".jsonl", ".ids.parquet")) for path in written)
    shards = [path for path in written if path.endswith(".jsonl")]
    for path in shards:
        assert len(storage.read_bytes(path).splitlines()) == 10
    assert not list(spec.pipeline_dir.rglob(".tmp-*"))
    return shards


class CloseFailsStorage(LocalStorage):
    """Local storage where closing one file fails (say its fsync), after all its writes."""

    def __init__(self, root, failing):
        super().__init__(root)
        self.failing = failing

    @contextlib.contextmanager
    def atomic_write(self, rel, **options):
        with super().atomic_write(rel, **options) as handle:
            yield handle
            if rel.endswith(self.failing):
                raise OSError(5, "Input/output error")


def test_a_failed_shard_close_leaves_no_manifest_and_no_temporary(tmp_path):
    write_source(tmp_path, rows=40)
    spec = make_spec(tmp_path, limits={"max_requests_per_file": 10})
    storage = CloseFailsStorage(spec.pipeline_dir, failing="shard-00001.jsonl")
    with pytest.raises(OSError, match="Input/output error"):
        build_partition_requests(spec, PARTITION, storage, generation=1)
    shards = assert_only_complete_shards(storage, spec)
    assert not any(path.endswith("shard-00001.jsonl") for path in shards)


def test_shard_writer_refuses_a_line_larger_than_a_file(tmp_path):
    spec = make_spec(tmp_path, limits={"max_bytes_per_file": 1024})
    storage = LocalStorage(spec.pipeline_dir)
    with (
        pytest.raises(ValueError, match=r"request big is 2001 bytes"),
        ShardWriter(spec, storage, PARTITION, 1, 2) as writer,
    ):
        writer.add(
            pa.array(["big"]), pa.array([b"x" * 2000 + b"\n"], pa.large_binary()), np.ones(1)
        )
    assert storage.list() == []


def provider_spec(tmp_path, provider, limits=None):
    """The reviews pipeline on `provider` (Claude's Messages API for anthropic)."""
    request = {"model": "gpt-4o-mini", "prompt": "Review: {text}"}
    backend = {"provider": provider, "base_url": "http://127.0.0.1:1/v1"}
    if provider == "anthropic":
        request |= {"endpoint": "/v1/messages", "model": "claude-haiku-4-5"}
        request["params"] = {"max_tokens": 20}
    if provider == "azure":
        backend |= {"azure_endpoint": "http://127.0.0.1:1", "api_version": "2024-10-21"}
    data = {
        "name": "reviews",
        "source": {"path": "src.parquet", "key": "id", "partition_column": "day"},
        "request": request,
        "backend": backend,
        "output": {"dir": "out"},
    }
    return PipelineSpec.from_dict(data | ({"limits": limits} if limits else {}), base_dir=tmp_path)


@pytest.mark.parametrize(
    ("provider", "requests", "max_bytes"),
    [
        ("openai", 50_000, 200 * 1024 * 1024),
        ("local", 50_000, 200 * 1024 * 1024),
        ("azure", 100_000, 200 * 1024 * 1024),
        ("anthropic", 100_000, 256 * 1024 * 1024),
    ],
)
def test_shard_limits_default_to_and_stop_at_the_providers_batch_caps(
    tmp_path, provider, requests, max_bytes
):
    limits = provider_spec(tmp_path, provider).limits
    assert limits.max_requests_per_file == requests
    assert 0.85 * max_bytes < limits.max_bytes_per_file < max_bytes  # a margin below the cap
    at_caps = {"max_requests_per_file": requests, "max_bytes_per_file": max_bytes}
    assert provider_spec(tmp_path, provider, at_caps).limits.model_dump() == {
        **at_caps,
        "enqueued_tokens": None,
    }
    with pytest.raises(SpecError, match=f"more than provider {provider} takes in one batch"):
        provider_spec(tmp_path, provider, {"max_requests_per_file": requests + 1})
    with pytest.raises(SpecError, match=f"max_bytes_per_file {max_bytes + 1} is more than"):
        provider_spec(tmp_path, provider, {"max_bytes_per_file": max_bytes + 1})


def test_an_anthropic_shard_holds_twice_the_requests_an_openai_shard_does(tmp_path):
    write_source(tmp_path, rows=60_000, text=str, other_day_rows=0)
    _, openai_manifest = build(tmp_path, provider_spec(tmp_path, "openai"))
    _, claude_manifest = build(tmp_path, provider_spec(tmp_path, "anthropic"), generation=2)
    assert [shard.rows for shard in openai_manifest.shards] == [50_000, 10_000]
    assert [shard.rows for shard in claude_manifest.shards] == [60_000]
