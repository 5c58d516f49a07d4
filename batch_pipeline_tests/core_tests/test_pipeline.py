"""The engine end to end: every row exactly once, with a status.

Against the in-memory Batch API on a manual clock (nothing waits); the tests marked
`on_both_apis` run again against the local service over HTTP.
"""

from __future__ import annotations

import io
import sqlite3
import time
from collections import Counter
from dataclasses import fields, replace
from datetime import datetime

import openai
import orjson
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa

from batch_pipeline import PipelineSpec, load_pipeline, read_results
from batch_pipeline.core import sharding
from batch_pipeline.core import submission as submission_module
from batch_pipeline.core.backends.base import ServiceUnreachable
from batch_pipeline.core.building import Builder
from batch_pipeline.core.collection import Collector
from batch_pipeline.core.ledger import SCHEMA_VERSION, Ledger, ShardRecord
from batch_pipeline.core.outcome_groups import outcome_groups
from batch_pipeline.core.outcomes import PER_ROW_COLUMNS
from batch_pipeline.core.pipeline import Pipeline, PipelineError
from batch_pipeline.core.poller import PollPass
from batch_pipeline.core.results import ResultsIncompleteError
from batch_pipeline.core.spec import SpecError
from batch_pipeline.core.storage import LocalStorage
from batch_pipeline.core.tokens import count_tokens
from batch_pipeline.core.tuning import DEFAULT_TUNING, Tuning
from batch_pipeline.core.types import BatchError, BatchInfo, BatchStatus, ShardState
from batch_pipeline_tests.batch_apis import BatchApi, MemoryApi, on_both_apis
from batch_pipeline_tests.conftest import ticket_spec, write_tickets

DAY = "2026-11-20"
OTHER_DAY = "2026-11-21"


POSTGRES_SLOW = [pytest.mark.postgres, pytest.mark.slow]


def mixed_rows() -> list[dict]:
    """Good rows, a null and an empty placeholder, a duplicate key, an oversize row, and rows
    that the local service fails (retryable 500, final 400) or never answers (hang)."""
    at = datetime(2026, 11, 20, 9, 30)
    rows = [
        {"ticket_id": f"T{i}", "subject": f"Order {i}", "body": f"My parcel {i} is late."}
        for i in range(8)
    ]
    rows += [
        {"ticket_id": "NULL", "subject": "Empty", "body": None},
        {"ticket_id": "EMPTY", "subject": "   ", "body": "blank subject"},
        {"ticket_id": "T0", "subject": "Again", "body": "a duplicate key"},
        {"ticket_id": "HUGE", "subject": "Long", "body": "word " * 3000},
        {"ticket_id": "F500", "subject": "Flaky", "body": "<<fail:500>>"},
        {"ticket_id": "F400", "subject": "Bad", "body": "<<fail:400>>"},
        {"ticket_id": "HANG", "subject": "Stuck", "body": "<<hang>>"},
    ]
    rows = [{**row, "created_at": at} for row in rows]
    rows.append(
        {
            "ticket_id": "NEXT",
            "subject": "Tomorrow",
            "body": "not in this partition",
            "created_at": datetime(2026, 11, 21, 8),
        }
    )
    return rows


EXPECTED = {
    **{f"T{i}": ("succeeded", 1) for i in range(8)},
    "NULL": ("rejected", 0),
    "EMPTY": ("rejected", 0),
    "HUGE": ("rejected", 0),
    "F500": ("failed", 3),
    "F400": ("failed", 1),
    "HANG": ("expired", 3),
}


def run_partition(
    api: BatchApi, spec: dict, tmp_path, partition: str = DAY, **options
) -> pd.DataFrame:
    pipeline = api.pipeline(PipelineSpec.from_dict(spec, base_dir=tmp_path), **options)
    with pipeline:
        summary = pipeline.run(partition, poll_interval=0.3, timeout=90)
    assert summary.rows == len(pd.read_parquet(summary.path))
    return pd.read_parquet(summary.path)


@on_both_apis
@pytest.mark.parametrize("endpoint", ["/v1/chat/completions", "/v1/responses", "/v1/embeddings"])
def test_mixed_source_ends_with_every_row_once_and_the_right_status(tmp_path, api, endpoint):
    write_tickets(tmp_path / "tickets.parquet", mixed_rows())
    spec = ticket_spec(tmp_path, api.base_url, endpoint=endpoint, request={"context_window": 2000})
    results = run_partition(api, spec, tmp_path)

    assert len(results) == 15  # every source row of the day, the duplicate included
    by_key = results.groupby("ticket_id")
    for key, (status, attempts) in EXPECTED.items():
        row = by_key.get_group(key).iloc[0]
        assert (row["status"], row["attempts"]) == (status, attempts), key
    duplicates = results[results["ticket_id"] == "T0"]
    assert sorted(duplicates["status"]) == ["rejected", "succeeded"]
    assert "duplicate" in duplicates[duplicates["status"] == "rejected"]["error_message"].iloc[0]
    assert "NEXT" not in set(results["ticket_id"])
    rejected = results[results["status"] == "rejected"].set_index("ticket_id")
    assert "body" in rejected.loc["NULL", "error_message"]
    assert "context" in rejected.loc["HUGE", "error_message"]
    assert results.set_index("ticket_id").loc["F400", "http_status"] == 400
    assert results.set_index("ticket_id").loc["HANG", "error_code"] == "batch_expired"
    good = results[results["status"] == "succeeded"]
    if endpoint == "/v1/embeddings":
        assert all(len(vector) == 256 for vector in good["embedding"])
    else:
        assert all(text.startswith("Subject: Order") for text in good["response_text"])
        assert (good["input_tokens"] > 0).all() and (good["output_tokens"] > 0).all()


@on_both_apis
def test_small_limits_split_requests_into_several_batches(tmp_path, api):
    at = datetime(2026, 11, 20, 12)
    rows = [
        {"ticket_id": f"K{i:03d}", "subject": "s", "body": f"text {i}", "created_at": at}
        for i in range(23)
    ]
    write_tickets(tmp_path / "tickets.parquet", rows)
    spec = ticket_spec(tmp_path, api.base_url, limits={"max_requests_per_file": 5})
    pipeline = api.pipeline(PipelineSpec.from_dict(spec, base_dir=tmp_path))
    built = pipeline.build_requests(DAY)
    assert (built.requests, built.shards) == (23, 5)
    summary = pipeline.run(DAY, poll_interval=0.2, timeout=60)
    assert summary.counts["succeeded"] == 23
    assert len({b["batch_id"] for b in pipeline.ledger.batches("tickets")}) == 5


def test_token_budget_holds_shards_back_until_batches_finish(tmp_path, api):
    at = datetime(2026, 11, 20, 12)
    rows = [
        {
            "ticket_id": f"B{i}",
            "subject": "s",
            "body": "slow <<slow:1>>" if i == 0 else "fast",
            "created_at": at,
        }
        for i in range(6)
    ]
    write_tickets(tmp_path / "tickets.parquet", rows)
    spec = ticket_spec(
        tmp_path, api.base_url, limits={"max_requests_per_file": 2, "enqueued_tokens": 60}
    )
    pipeline = api.pipeline(PipelineSpec.from_dict(spec, base_dir=tmp_path))
    pipeline.build_requests(DAY)
    first = pipeline.submit(DAY)
    assert len(first.submitted_batch_ids) == 1
    assert first.waiting_shards == 2
    assert any("token budget" in reason for reason in first.waiting_reasons)
    summary = pipeline.run(DAY, poll_interval=0.2, timeout=60)
    assert summary.counts["succeeded"] == 6
    assert len(pipeline.ledger.batches("tickets")) == 3


def test_a_token_budget_is_kept_by_exact_counts_where_bytes_guess_low(tmp_path):
    """Ids and digits make nearly twice the tokens a quarter of their bytes says. Under a
    budget every request is counted exactly, retries too, so the shards fit it and a service
    that holds the same limit on its own count never refuses one."""
    at = datetime(2026, 11, 20, 12)
    rows = [
        {
            "ticket_id": f"N{i}",
            "subject": "ids",
            "body": ("<<fail:500>> " if i == 0 else "")
            + " ".join(f"{i * 7919 + j:08d}-{j * 31:05d}" for j in range(20)),
            "created_at": at,
        }
        for i in range(10)
    ]
    write_tickets(tmp_path / "tickets.parquet", rows)
    budget = 500
    api = MemoryApi(completion_window_seconds=30, enqueued_token_limit=budget)
    with api.pipeline(
        PipelineSpec.from_dict(
            ticket_spec(tmp_path, api.base_url, limits={"enqueued_tokens": budget}),
            base_dir=tmp_path,
        )
    ) as pipeline:
        spec = pipeline.spec
        summary = pipeline.run(DAY, poll_interval=0.2, timeout=60)
        shards = pipeline.ledger.shards("tickets", partition=DAY)
        batches = pipeline.ledger.batches("tickets", partition=DAY)
    assert (summary.counts["succeeded"], summary.counts["failed"]) == (9, 1)
    assert all(batch["status"] == "completed" for batch in batches)
    assert not [batch for batch in batches if "token_limit" in (batch["errors_json"] or "")]

    def exact(row: dict) -> int:
        texts = [spec.request.system, f"Subject: {row['subject']}\n\n{row['body']}"]
        return sum(count_tokens(text, spec.request.model) for text in texts) + 2 * 4 + 3

    rows_of = {row["ticket_id"]: row for row in rows}
    key_of = pd.read_parquet(summary.path).set_index("custom_id")["ticket_id"]
    for shard in shards:  # retry shards (of row N0) included: their lines are re-read
        with pipeline.storage.open_read(shard.path) as lines:
            keys = [key_of[orjson.loads(line)["custom_id"]] for line in lines]
        assert shard.estimated_input_tokens == sum(exact(rows_of[key]) for key in keys)
        assert shard.estimated_input_tokens <= budget
    assert max(shard.attempt for shard in shards) == 3


def test_read_results_returns_every_partition_or_one(tmp_path, api):
    write_tickets(tmp_path / "tickets.parquet", mixed_rows())
    spec = ticket_spec(tmp_path, api.base_url)
    run_partition(api, spec, tmp_path, DAY)
    run_partition(api, spec, tmp_path, OTHER_DAY)
    spec_object = PipelineSpec.from_dict(spec, base_dir=tmp_path)
    everything = read_results(spec_object)
    assert len(everything) == 16
    assert Counter(everything["partition"].astype(str)) == {DAY: 15, OTHER_DAY: 1}
    assert list(read_results(spec_object, OTHER_DAY)["ticket_id"]) == ["NEXT"]


def paid_batches(pipeline: Pipeline) -> set[str]:
    """The batches the provider holds for this pipeline: what it bills, whatever the ledger
    says (the service is shared, so a test compares what it holds before and after)."""
    return {
        batch.id
        for batch in pipeline.backend.iter_batches()
        if batch.metadata.get("batch_pipeline_pipeline") == pipeline.spec.name
    }


def test_settled_partition_is_not_run_twice_and_rebuild_runs_it_afresh(tmp_path, api):
    write_tickets(tmp_path / "tickets.parquet", mixed_rows()[:3])
    spec = PipelineSpec.from_dict(ticket_spec(tmp_path, api.base_url), base_dir=tmp_path)
    with api.pipeline(spec) as pipeline:
        before = paid_batches(pipeline)
        first = pipeline.run(DAY, poll_interval=0.2, timeout=60)
        again = pipeline.run(DAY, poll_interval=0.2, timeout=60)
        assert again.already_collected and again.path == first.path
        paid = paid_batches(pipeline) - before
        assert paid == {b["batch_id"] for b in pipeline.ledger.batches("tickets")}
        assert len(paid) == 1
        rebuilt = pipeline.run(DAY, poll_interval=0.2, timeout=60, rebuild=True)
        assert rebuilt.generation == first.generation + 1
        assert len(paid_batches(pipeline) - before) == 2


def test_collecting_an_unsettled_partition_is_refused(tmp_path, api):
    write_tickets(tmp_path / "tickets.parquet", mixed_rows()[:2])
    spec = PipelineSpec.from_dict(ticket_spec(tmp_path, api.base_url), base_dir=tmp_path)
    with api.pipeline(spec) as pipeline:
        pipeline.build_requests(DAY)
        with pytest.raises(PipelineError, match="not settled"):
            pipeline.collect_results(DAY)


@on_both_apis
def test_cancel_settles_every_row_as_cancelled_or_done(tmp_path, api):
    at = datetime(2026, 11, 20, 12)
    rows = [
        {
            "ticket_id": f"C{i}",
            "subject": "s",
            "body": "<<hang>>" if i % 2 else "quick",
            "created_at": at,
        }
        for i in range(6)
    ]
    write_tickets(tmp_path / "tickets.parquet", rows)
    spec = PipelineSpec.from_dict(
        ticket_spec(
            tmp_path, api.base_url, limits={"max_requests_per_file": 3, "enqueued_tokens": 80}
        ),
        base_dir=tmp_path,
    )
    with api.pipeline(spec) as pipeline:
        pipeline.build_requests(DAY)
        submitted = pipeline.submit(DAY)
        assert submitted.waiting_shards == 1
        cancelled = pipeline.cancel(DAY)
        assert cancelled == submitted.submitted_batch_ids
        summary = pipeline.run(DAY, poll_interval=0.2, timeout=60)
    results = pd.read_parquet(summary.path).set_index("ticket_id")
    assert len(results) == 6
    assert set(results["status"]) <= {"succeeded", "cancelled"}
    assert (results.loc[["C1", "C3", "C5"], "status"] == "cancelled").all()


@pytest.mark.parametrize("codec", [None, "zstd"])
def test_results_are_written_with_the_codec_the_spec_names(tmp_path, api, codec):
    """Snappy unless `output.compression` says otherwise; every column of every row group."""
    write_tickets(tmp_path / "tickets.parquet", mixed_rows()[:4])
    output = {"dir": "out"} if codec is None else {"dir": "out", "compression": codec}
    spec = PipelineSpec.from_dict(
        ticket_spec(tmp_path, api.base_url, output=output), base_dir=tmp_path
    )
    with api.pipeline(spec) as pipeline:
        summary = pipeline.run(DAY, poll_interval=0.1, timeout=60)
    metadata = pq.ParquetFile(summary.path).metadata
    codecs = {
        metadata.row_group(group).column(column).compression
        for group in range(metadata.num_row_groups)
        for column in range(metadata.num_columns)
    }
    assert codecs == {(codec or "snappy").upper()}
    assert sorted(pd.read_parquet(summary.path)["ticket_id"]) == ["T0", "T1", "T2", "T3"]


def test_an_unknown_codec_is_refused_by_the_spec(tmp_path, api):
    with pytest.raises(SpecError, match="compression"):
        PipelineSpec.from_dict(
            ticket_spec(tmp_path, api.base_url, output={"dir": "out", "compression": "brotli9"}),
            base_dir=tmp_path,
        )


def test_a_cancel_that_reaches_a_finalizing_batch_keeps_its_results(tmp_path):
    """A provider refuses (409) to cancel a batch that is finalizing; the cancel must not
    fail, and the batch's answers, already paid for, end in the results."""
    write_tickets(tmp_path / "tickets.parquet", mixed_rows()[:4])
    api = MemoryApi(finalizing_seconds=5.0)
    spec = PipelineSpec.from_dict(ticket_spec(tmp_path, api.base_url), base_dir=tmp_path)
    with api.pipeline(spec) as pipeline:
        pipeline.run(DAY, wait=False)
        (batch_id,) = [shard.batch_id for shard in pipeline.ledger.shards(spec.name)]
        while api.service.retrieve_batch(batch_id).status != "finalizing":
            api.clock.advance(0.05)
        assert pipeline.cancel(DAY) == []
        assert pipeline.ledger.batches(spec.name)[0]["status"] == "finalizing"
        while pipeline.get_partition(DAY).settled_at is None:
            pipeline.poll()
            api.clock.advance(0.1)
        summary = pipeline.collect_results(DAY)
    assert api.service.retrieve_batch(batch_id).status == "completed"
    results = pd.read_parquet(summary.path)
    assert sorted(results["ticket_id"]) == ["T0", "T1", "T2", "T3"]
    assert set(results["status"]) == {"succeeded"}


def test_key_from_the_environment_never_reaches_the_ledger_or_files(tmp_path, api, monkeypatch):
    secret = "sk-test-NEVER-WRITE-ME-0123456789"
    monkeypatch.setenv("TICKETS_KEY", secret)
    write_tickets(tmp_path / "tickets.parquet", mixed_rows()[:4])
    spec = ticket_spec(tmp_path, api.base_url, backend={"api_key_env": "TICKETS_KEY"})
    run_partition(api, spec, tmp_path)
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert written
    for path in written:
        assert secret.encode() not in path.read_bytes(), path


@pytest.mark.slow
def test_wrong_key_fails_with_a_message_that_hides_the_key(tmp_path, tmp_path_factory, monkeypatch):
    from batch_pipeline.core.backends.base import BackendError
    from batch_pipeline.local_api.server import run_local_batch_api

    secret = "sk-wrong-key-ABCDEF"
    monkeypatch.setenv("TICKETS_KEY", secret)
    write_tickets(tmp_path / "tickets.parquet", mixed_rows()[:2])
    with run_local_batch_api(tmp_path_factory.mktemp("auth"), port=0, api_key="right") as url:
        spec = ticket_spec(tmp_path, url, backend={"api_key_env": "TICKETS_KEY"})
        pipeline = load_pipeline(PipelineSpec.from_dict(spec, base_dir=tmp_path))
        pipeline.build_requests(DAY)
        with pytest.raises(BackendError) as raised:
            pipeline.submit(DAY)
        assert raised.value.status_code == 401, raised.value
        assert "invalid_api_key" in str(raised.value)
        assert secret not in str(raised.value) and secret[-8:] not in str(raised.value)
        assert not isinstance(raised.value, openai.OpenAIError)


def test_a_retry_shard_without_its_first_attempt_is_refused_by_index(tmp_path) -> None:
    """Retry shards keep their parent's index; one whose parent is unknown cannot be placed
    among the source rows, so the results refuse it rather than guess."""

    def shard(index: int, attempt: int) -> ShardRecord:
        given = {"shard_id": f"s{index}-{attempt}", "shard_index": index, "attempt": attempt}
        return ShardRecord(**{f.name: None for f in fields(ShardRecord)} | given | {"rows": 5})

    storage = LocalStorage(tmp_path)
    assert len(outcome_groups(storage, [shard(0, 1), shard(0, 2), shard(1, 1)])) == 2
    with pytest.raises(PipelineError, match=r"retry shards \[2, 3\] have no first-attempt"):
        outcome_groups(storage, [shard(0, 1), shard(3, 2), shard(2, 2), shard(0, 2)])


def _dictionary_encoded(path) -> dict[str, bool]:
    """Each column of a Parquet file: whether its first row group holds dictionary pages."""
    row_group = pq.ParquetFile(path).metadata.row_group(0)
    return {
        row_group.column(i).path_in_schema: any(
            "DICTIONARY" in encoding for encoding in row_group.column(i).encodings
        )
        for i in range(row_group.num_columns)
    }


def test_per_row_text_columns_are_written_without_a_dictionary(tmp_path, api):
    write_tickets(tmp_path / "tickets.parquet", mixed_rows())
    spec = ticket_spec(tmp_path, api.base_url, request={"context_window": 2000})
    results = run_partition(api, spec, tmp_path)

    outcome_files = sorted(tmp_path.rglob("outcomes.parquet"))
    assert outcome_files
    for path in [*outcome_files, *tmp_path.rglob("results/**/*.parquet")]:
        encoded = _dictionary_encoded(path)
        assert not any(encoded[name] for name in PER_ROW_COLUMNS if name in encoded), path
        assert encoded["status"], path  # a few distinct values: the dictionary stays
    assert len(results) == 15


def twelve_rows_in_three_shards(tmp_path, api) -> tuple[list[dict], PipelineSpec]:
    rows = [
        {"ticket_id": f"K{i:02d}", "subject": "s", "body": f"question {i}", "created_at": DAY}
        for i in range(12)
    ]
    write_tickets(tmp_path / "tickets.parquet", rows)
    spec = PipelineSpec.from_dict(
        ticket_spec(tmp_path, api.base_url, limits={"max_requests_per_file": 5}), base_dir=tmp_path
    )
    return rows, spec


def test_a_shard_whose_ids_file_is_gone_or_wrong_is_collected_from_its_lines(tmp_path, api):
    """The custom_ids beside a shard save reading it again; without them, or with a file
    that does not hold one id per line or cannot be read, the shard's own lines say what it
    asked for."""
    rows, spec = twelve_rows_in_three_shards(tmp_path, api)
    with api.pipeline(spec) as pipeline:
        pipeline.build_requests(DAY)
        gone, wrong, cut_short = (
            pipeline.storage.local_path(sharding.shard_ids_path(shard.path))
            for shard in pipeline.ledger.shards(spec.name, partition=DAY)
        )
        gone.unlink()
        pq.write_table(pa.table({"custom_id": ["not-asked"]}), wrong)
        cut_short.write_bytes(b"")  # renamed into place before its bytes reached the disk
        summary = pipeline.run(DAY, poll_interval=0.1, timeout=60)
    results = pd.read_parquet(summary.path)
    assert results["ticket_id"].tolist() == [row["ticket_id"] for row in rows]
    assert set(results["status"]) == {"succeeded"}


class ReversedOutputs:
    """The local backend, but each downloaded file holds its lines last to first, as a
    provider may return them in any order."""

    def __init__(self, inner) -> None:
        self._inner = inner

    def __getattr__(self, name: str):
        return getattr(self._inner, name)

    def download_file(self, file_id: str, dest) -> int:
        buffer = io.BytesIO()
        self._inner.download_file(file_id, buffer)
        lines = buffer.getvalue().splitlines(keepends=True)
        data = b"".join(reversed(lines))
        dest.write(data)
        return len(data)


def test_outcome_files_keep_the_request_order_and_files_without_it_still_join(tmp_path, api):
    """The outcomes of a shard are stored in its request order, whatever the provider's order,
    and marked so; a file without the mark (an earlier version's) is joined whole."""
    rows, spec = twelve_rows_in_three_shards(tmp_path, api)
    with api.pipeline(spec, backend=ReversedOutputs(api.backend(spec))) as pipeline:
        summary = pipeline.run(DAY, poll_interval=0.1, timeout=60)
        shards = pipeline.ledger.shards(spec.name, partition=DAY)
        for shard in shards:
            with pipeline.storage.open_read(shard.path) as lines:
                requested = [orjson.loads(line)["custom_id"] for line in lines]
            path = pipeline.storage.local_path(shard.outcomes_path)
            assert pq.read_table(path)["custom_id"].to_pylist() == requested
            assert pq.ParquetFile(path).schema_arrow.metadata[b"batch_pipeline.row_order"]
            unmarked = pq.read_table(path).replace_schema_metadata(None)
            pq.write_table(unmarked.take(list(range(unmarked.num_rows))[::-1]), path)
        before = pd.read_parquet(summary.path)
        again = pipeline.collect_results(DAY)
    after = pd.read_parquet(again.path)
    assert len(shards) == 3 and after["ticket_id"].tolist() == [r["ticket_id"] for r in rows]
    pd.testing.assert_frame_equal(before, after)


class FailingForTokens:
    """The local backend, but every batch has failed on the enqueued-token limit, the
    transient failure that sends a shard back to the queue."""

    def __init__(self, inner) -> None:
        self._inner = inner

    def __getattr__(self, name: str):
        return getattr(self._inner, name)

    def _failed(self, batch: BatchInfo) -> BatchInfo:
        limit = BatchError(code="token_limit_exceeded", message="Enqueued token limit reached")
        return replace(
            batch,
            status=BatchStatus.FAILED,
            output_file_id=None,
            error_file_id=None,
            errors=(limit,),
        )

    def retrieve_batch(self, batch_id: str) -> BatchInfo:
        return self._failed(self._inner.retrieve_batch(batch_id))

    def iter_batches(self, **kwargs):
        return (self._failed(batch) for batch in self._inner.iter_batches(**kwargs))


def test_a_cancelled_day_whose_batch_failed_on_tokens_settles_instead_of_requeueing(tmp_path, api):
    write_tickets(tmp_path / "tickets.parquet", mixed_rows()[:4])
    spec = PipelineSpec.from_dict(ticket_spec(tmp_path, api.base_url), base_dir=tmp_path)
    backend = FailingForTokens(api.backend(spec))
    with api.pipeline(spec, backend=backend) as pipeline:
        pipeline.build_requests(DAY)
        pipeline.submit(DAY)
        poller = pipeline._worker(PollPass)
        poller.refresh(poller.in_flight())  # the ledger learns the batch failed
        pipeline.cancel(DAY)  # a failed batch is not cancelled: it waits to be collected
        pipeline.poll()
        assert pipeline.get_partition(DAY).settled_at is not None
        assert [s.state for s in pipeline.ledger.shards(spec.name)] == [ShardState.COLLECTED]
        summary = pipeline.collect_results(DAY)
    results = pd.read_parquet(summary.path)
    assert sorted(results["ticket_id"]) == ["T0", "T1", "T2", "T3"]
    assert set(results["error_code"]) == {"token_limit_exceeded"}


def test_a_row_added_after_the_build_is_named_with_the_way_out_and_a_rebuild_takes_it(
    tmp_path, api
):
    rows = mixed_rows()[:4]
    write_tickets(tmp_path / "tickets.parquet", rows)
    spec = PipelineSpec.from_dict(ticket_spec(tmp_path, api.base_url), base_dir=tmp_path)
    with api.pipeline(spec) as pipeline:
        pipeline.run(DAY, poll_interval=0.2, timeout=60)
        late = {**rows[0], "ticket_id": "LATE", "body": "arrived after the build"}
        write_tickets(tmp_path / "tickets.parquet", [*rows, late])
        with pytest.raises(ResultsIncompleteError) as raised:
            pipeline.collect_results(DAY)
        message = str(raised.value)
        assert "'LATE'" in message and "--rebuild" in message
        summary = pipeline.run(DAY, poll_interval=0.2, timeout=60, rebuild=True)
    results = pd.read_parquet(summary.path)
    assert sorted(results["ticket_id"]) == ["LATE", "T0", "T1", "T2", "T3"]
    assert set(results["status"]) == {"succeeded"}


@on_both_apis
@pytest.mark.parametrize("keep", [False, True])
def test_provider_files_are_deleted_once_collected_unless_kept(tmp_path, api, keep):
    write_tickets(tmp_path / "tickets.parquet", mixed_rows())
    spec = ticket_spec(
        tmp_path,
        api.base_url,
        name=f"files_kept_{keep}".lower(),
        request={"context_window": 2000},
        output={"keep_provider_files": keep},
    )
    results = run_partition(api, spec, tmp_path)
    assert len(results) == 15

    batches = api.batches(spec["name"])
    assert len(batches) == 3  # the first attempt and two rounds of retries
    file_ids = [
        file_id
        for b in batches
        for file_id in (b.input_file_id, b.output_file_id, b.error_file_id)
        if file_id
    ]
    present = {file_id for file_id in file_ids if api.has_file(file_id)}
    assert present == (set(file_ids) if keep else set())


def test_built_shards_wait_for_submit_and_a_poll_does_not_pay_for_them(tmp_path, api):
    write_tickets(tmp_path / "tickets.parquet", mixed_rows()[:4])
    spec = PipelineSpec.from_dict(ticket_spec(tmp_path, api.base_url), base_dir=tmp_path)
    with api.pipeline(spec) as pipeline:
        pipeline.build_requests(DAY)
        assert pipeline.poll().submitted_batch_ids == []
        (status,) = pipeline.status(DAY)
        assert (status.state, status.shards) == ("built", {"built": 1})
        assert len(pipeline.submit(DAY).submitted_batch_ids) == 1
        assert pipeline.status(DAY)[0].state == "in_flight"


def test_a_shard_that_keeps_failing_on_the_token_limit_settles_after_a_few_submissions(
    tmp_path, api
):
    tuning = Tuning(requeue_backoff_seconds=0.0, max_submissions=3)
    write_tickets(tmp_path / "tickets.parquet", mixed_rows()[:4])
    spec = PipelineSpec.from_dict(ticket_spec(tmp_path, api.base_url), base_dir=tmp_path)
    backend = FailingForTokens(api.backend(spec))
    with api.pipeline(spec, backend=backend, tuning=tuning) as pipeline:
        summary = pipeline.run(DAY, poll_interval=0.1, timeout=60)
        (shard,) = pipeline.ledger.shards(spec.name)
    assert shard.submissions == tuning.max_submissions
    results = pd.read_parquet(summary.path)
    assert set(results["status"]) == {"failed"} and len(results) == 4
    assert results["error_message"].str.contains("provider limit").all()


def test_a_requeued_shard_waits_longer_each_time_up_to_an_hour():
    backoff = submission_module.requeue_backoff_seconds
    waits = [backoff(n) for n in (1, 2, 3, 6, 7, 30)]
    assert waits == [60, 120, 240, 1920, 3600, 3600]
    total = sum(map(backoff, range(1, DEFAULT_TUNING.max_submissions)))
    assert total > 24 * 3600  # longer than any batch's window before its rows end failed


def test_submitting_a_rebuilt_day_leaves_the_old_generations_shards_alone(tmp_path, api):
    write_tickets(tmp_path / "tickets.parquet", mixed_rows()[:4])
    spec = PipelineSpec.from_dict(ticket_spec(tmp_path, api.base_url), base_dir=tmp_path)
    with api.pipeline(spec) as pipeline:
        pipeline.build_requests(DAY)
        pipeline.build_requests(DAY, rebuild=True)
        assert len(pipeline.submit(DAY).submitted_batch_ids) == 1
        states = {(s.generation, s.state) for s in pipeline.ledger.shards(spec.name)}
    assert states == {(1, ShardState.BUILT), (2, ShardState.SUBMITTED)}


@pytest.mark.parametrize("day", ["2026-1-1", "2026-02-30", "yesterday"])
def test_a_partition_that_is_not_a_day_is_refused_before_the_ledger_records_it(tmp_path, api, day):
    write_tickets(tmp_path / "tickets.parquet", mixed_rows()[:4])
    spec = PipelineSpec.from_dict(ticket_spec(tmp_path, api.base_url), base_dir=tmp_path)
    with api.pipeline(spec) as pipeline:
        for step in (pipeline.run, pipeline.build_requests, pipeline.cancel, pipeline.status):
            with pytest.raises(ValueError, match=f"partition '{day}' is not a"):
                step(day)
        assert pipeline.partitions() == []


@on_both_apis
def test_a_rebuild_of_a_day_in_flight_is_refused_until_it_is_cancelled(tmp_path, api):
    """`run --rebuild` repeated after a timeout must not pay for the day's batches again."""
    write_tickets(tmp_path / "tickets.parquet", mixed_rows()[:4])
    spec = PipelineSpec.from_dict(
        ticket_spec(tmp_path, api.base_url, name="rebuild_in_flight"), base_dir=tmp_path
    )

    def batches_of_day() -> list[str]:
        return [b.id for b in api.batches(spec.name)]

    with api.pipeline(spec) as pipeline:
        pipeline.run(DAY, wait=False, rebuild=True)
        with pytest.raises(PipelineError, match=r"still in flight .*cancel it first"):
            pipeline.run(DAY, wait=False, rebuild=True)
        assert len(batches_of_day()) == 1
        assert pipeline.get_partition(DAY).generation == 1
        pipeline.cancel(DAY)
        summary = pipeline.run(DAY, rebuild=True, poll_interval=0.1, timeout=60)
    assert summary.generation == 2 and len(batches_of_day()) == 2
    assert summary.counts["succeeded"] == 4


@pytest.mark.parametrize("database", ["sqlite", pytest.param("postgresql", marks=POSTGRES_SLOW)])
def test_a_ledger_of_the_previous_schema_is_migrated_and_a_newer_one_refused(
    tmp_path, api, database, request
):
    """A version 2 ledger (no `deferrals`, `request_fingerprint`,
    `intermediates_removed_at` nor batch `expires_at` column) with a shard in it opens, gains
    the columns with its shards kept, and is marked; a ledger newer than this package is
    refused."""
    url = (
        request.getfixturevalue("own_postgres_database")
        if database == "postgresql"
        else f"sqlite:///{tmp_path / 'ledger.db'}"
    )
    write_tickets(tmp_path / "tickets.parquet", mixed_rows()[:4])
    spec = PipelineSpec.from_dict(
        ticket_spec(tmp_path, api.base_url, ledger={"url": url}), base_dir=tmp_path
    )
    with api.pipeline(spec) as pipeline:
        pipeline.build_requests(DAY)
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text("ALTER TABLE bp_shards DROP COLUMN deferrals"))
        conn.execute(sa.text("ALTER TABLE bp_partitions DROP COLUMN request_fingerprint"))
        conn.execute(sa.text("ALTER TABLE bp_partitions DROP COLUMN intermediates_removed_at"))
        conn.execute(sa.text("ALTER TABLE bp_batches DROP COLUMN expires_at"))
        conn.execute(sa.text("UPDATE bp_schema SET version = 2"))
    with api.pipeline(spec) as pipeline:
        (shard,) = pipeline.ledger.shards(spec.name)
        assert (shard.state, shard.deferrals) == (ShardState.BUILT, 0)
        assert pipeline.get_partition(DAY).intermediates_removed_at is None
        pipeline.ledger.mark_intermediates_removed(spec.name, DAY, 1)
        assert pipeline.get_partition(DAY).intermediates_removed_at is not None
        assert len(pipeline.submit(DAY).submitted_batch_ids) == 1
    with engine.begin() as conn:
        assert conn.execute(sa.text("SELECT version FROM bp_schema")).scalar() == SCHEMA_VERSION
        # the batch made after the migration keeps the end of its completion window
        assert conn.execute(sa.text("SELECT expires_at FROM bp_batches")).scalar() is not None
        conn.execute(sa.text("UPDATE bp_schema SET version = :v"), {"v": SCHEMA_VERSION + 1})
    engine.dispose()
    with pytest.raises(RuntimeError, match="upgrade batch_pipeline"):
        Ledger(url)


def _sql_source(tmp_path, rows: list[tuple], *indexes: str) -> dict:
    """A SQLite table `t` (id, subject, body, created_at, extra) as the spec's source."""
    connection = sqlite3.connect(tmp_path / "source.db")
    connection.execute("CREATE TABLE t (id TEXT, subject TEXT, body TEXT, created_at TEXT, extra)")
    connection.executemany("INSERT INTO t VALUES (?, ?, ?, ?, ?)", rows)
    for number, columns in enumerate(indexes):
        connection.execute(f"CREATE INDEX ix{number} ON t ({columns})")
    connection.execute("ANALYZE")
    connection.commit()
    connection.close()
    query = {"url": "sqlite:///source.db", "query": "SELECT * FROM t"}
    return {"path": None, "sql": query, "key": "id", "partition_column": "created_at"}


def test_sql_rows_sharing_a_key_get_the_answer_to_their_own_text(tmp_path, api):
    at = f"{DAY} 10:00:00"
    rows = [("K", "s", "zzz first", at, "row-1"), ("K", "s", "aaa second", at, "row-2")]
    rows.append(("L", "s", "other", at, "row-3"))
    # Two indexes: the build's query and the results' query may take different plans.
    source = _sql_source(tmp_path, rows, "id, subject, body, created_at", "id, extra")
    results = run_partition(api, ticket_spec(tmp_path, api.base_url, source=source), tmp_path)

    by_extra = results.set_index("extra")
    answered = by_extra.loc[by_extra["status"] == "succeeded"]
    assert len(answered) == 2 and "row-3" in answered.index
    for _, row in answered.iterrows():  # the echo responder answers with the row's own text
        assert row["response_text"] == f"Subject: {row['subject']}\n\n{row['body']}"
    assert (by_extra["status"] == "rejected").sum() == 1


def test_a_sql_column_null_in_the_first_chunk_takes_later_text(tmp_path, api):
    at = f"{DAY} 10:00:00"
    chunk_rows = 8
    rows = [(f"R{i:05d}", "s", f"body {i}", at, None) for i in range(chunk_rows + 5)]
    rows[-1] = (*rows[-1][:4], "call back")  # the column's only value, past the first chunk
    spec = ticket_spec(tmp_path, api.base_url, source=_sql_source(tmp_path, rows))
    results = run_partition(api, spec, tmp_path, tuning=Tuning(chunk_rows=chunk_rows))
    assert len(results) == chunk_rows + 5 and set(results["status"]) == {"succeeded"}
    assert results["extra"].dropna().tolist() == ["call back"]


def test_a_csv_folder_whose_first_file_has_an_empty_column_reads_every_day(tmp_path, api):
    folder = tmp_path / "tickets"
    folder.mkdir()
    (folder / "a.csv").write_text(f"ticket_id,subject,body,created_at,notes\nA,s,b,{OTHER_DAY},\n")
    (folder / "b.csv").write_text(f"ticket_id,subject,body,created_at,notes\nB,s,b,{DAY},call\n")
    source = {"path": "tickets", "key": "ticket_id", "partition_column": "created_at"}
    spec = ticket_spec(tmp_path, api.base_url, source=source)
    assert run_partition(api, spec, tmp_path)["notes"].tolist() == ["call"]
    assert run_partition(api, spec, tmp_path, OTHER_DAY)["ticket_id"].tolist() == ["A"]


def _write_csv_rows(path, rows: list[tuple]) -> None:
    import csv

    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["ticket_id", "subject", "body", "created_at", "notes"])
        writer.writerows(rows)


def test_a_csv_whose_column_turns_from_numbers_to_text_late_gets_its_results(tmp_path, api):
    """Arrow infers a CSV column's type from the first megabyte; a `notes` column of numbers
    that holds text 3 MB in must not fail the results of a day already paid for. Bodies run
    over several lines, as exported tickets do."""
    rows = [
        (f"C{i:05d}", "s", f"line one of {i}\nline two", f"{DAY} 10:00:00", i)
        for i in range(60_000)
    ]
    rows[-1] = (*rows[-1][:4], "call back")
    rows += [(f"D{i}", "s", "other day", f"{OTHER_DAY} 10:00:00", i) for i in range(3)]
    _write_csv_rows(tmp_path / "tickets.csv", rows)
    source = {"path": "tickets.csv", "key": "ticket_id", "partition_column": "created_at"}
    results = run_partition(api, ticket_spec(tmp_path, api.base_url, source=source), tmp_path)
    assert len(results) == 60_000 and set(results["status"]) == {"succeeded"}
    by_key = results.set_index("ticket_id")
    assert by_key.loc["C59999", "notes"] == "call back" and by_key.loc["C00007", "notes"] == "7"
    assert by_key.loc["C00001", "response_text"].endswith("line one of 1\nline two")


def test_a_csv_byte_that_is_not_utf8_past_the_first_block_rejects_only_its_row(tmp_path, api):
    rows = [(f"C{i:05d}", "subject", f"body {i}", f"{DAY} 10:00:00", "") for i in range(40_000)]
    _write_csv_rows(tmp_path / "tickets.csv", rows)
    with (tmp_path / "tickets.csv").open("ab") as handle:
        handle.write(f"LATIN,caf\xe9,body,{DAY} 10:00:00,\n".encode("latin-1"))
    source = {"path": "tickets.csv", "key": "ticket_id", "partition_column": "created_at"}
    results = run_partition(api, ticket_spec(tmp_path, api.base_url, source=source), tmp_path)
    assert len(results) == 40_001
    assert Counter(results["status"]) == {"succeeded": 40_000, "rejected": 1}
    rejected = results[results["status"] == "rejected"].iloc[0]
    assert rejected["ticket_id"] == "LATIN"
    assert "'subject' is not valid UTF-8" in rejected["error_message"]


def test_a_csv_column_of_numbers_throughout_keeps_its_type(tmp_path, api):
    rows = [(f"C{i}", "s", "b", f"{DAY} 10:00:00", i) for i in range(5)]
    _write_csv_rows(tmp_path / "tickets.csv", rows)
    source = {"path": "tickets.csv", "key": "ticket_id", "partition_column": "created_at"}
    results = run_partition(api, ticket_spec(tmp_path, api.base_url, source=source), tmp_path)
    assert sorted(results["notes"].tolist()) == [0, 1, 2, 3, 4]


def test_an_empty_day_keeps_the_source_columns(tmp_path, api):
    other_day = {
        "ticket_id": "X",
        "subject": "s",
        "body": "b",
        "created_at": datetime(2026, 11, 21),
    }
    write_tickets(tmp_path / "tickets.parquet", [other_day])
    results = run_partition(api, ticket_spec(tmp_path, api.base_url), tmp_path)
    assert results.empty
    assert {"ticket_id", "subject", "body", "created_at", "status"} <= set(results.columns)


def test_a_failed_build_gives_up_its_claim_so_the_next_one_starts_at_once(
    tmp_path, api, monkeypatch
):
    write_tickets(tmp_path / "tickets.parquet", mixed_rows())
    spec = PipelineSpec.from_dict(ticket_spec(tmp_path, api.base_url), base_dir=tmp_path)

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as patch, api.pipeline(spec) as failing:
        patch.setattr(sharding.ShardWriter, "add", disk_full)
        with pytest.raises(OSError, match="No space left"):
            failing.build_requests(DAY)
    with api.pipeline(spec) as reader:
        record = reader.get_partition(DAY)
    assert record is not None and record.build_owner is None and record.built_at is None

    with api.pipeline(spec) as retry:  # another owner, in a live process: no wait for the lease
        assert retry.build_requests(DAY).source_rows == len(mixed_rows()) - 1


def test_a_long_build_renews_its_claim_and_stops_once_taken_over(tmp_path, api):
    spec = PipelineSpec.from_dict(ticket_spec(tmp_path, api.base_url), base_dir=tmp_path)
    now = [1_000_000.0]
    with (
        Pipeline(spec, clock=lambda: now[0]) as first,
        Pipeline(spec, clock=lambda: now[0]) as other,
    ):
        generation = first.ledger.start_generation(spec.name, DAY, rebuild=False)
        assert first.ledger.claim_build(spec.name, DAY, generation, first.owner)
        builder = first._worker(Builder, source=first.source, sleep=time.sleep)
        heartbeat = builder._build_heartbeat(DAY, generation)

        now[0] += 200  # two thirds of the lease: renewed
        heartbeat()
        assert first.get_partition(DAY).build_lease_expires_at == now[0] + 300
        now[0] += 250  # past the first lease, within the renewed one
        assert not other.ledger.claim_build(spec.name, DAY, generation, other.owner)

        now[0] += 400  # the build stalled past its lease: another process takes over
        assert other.ledger.claim_build(spec.name, DAY, generation, other.owner)
        with pytest.raises(PipelineError, match="another process took over building"):
            heartbeat()


def test_a_key_that_is_not_utf8_rejects_its_row_by_name_and_the_rest_go_ahead(tmp_path, api):
    # Parquet written outside Arrow can hold such bytes in a string column; Arrow reads them
    # unchecked (made here with a view of the bytes as strings).
    keys = pa.array([b"A1", b"caf\xe9", b"B2"], pa.binary()).view(pa.string())
    at = pa.array([datetime(2026, 11, 20, 10)] * 3, pa.timestamp("us"))
    table = pa.table({"ticket_id": keys, "subject": ["s"] * 3, "body": ["b"] * 3, "created_at": at})
    pq.write_table(table, tmp_path / "tickets.parquet")
    results = run_partition(api, ticket_spec(tmp_path, api.base_url), tmp_path)

    assert len(results) == 3
    assert results["status"].tolist() == ["succeeded", "rejected", "succeeded"]
    assert results["error_code"][1] == "invalid_text"
    assert "key column 'ticket_id' is not valid UTF-8" in results["error_message"][1]
    assert results["ticket_id"][1] == "caf\ufffd"  # readable, the bad byte marked


def test_a_day_with_no_rows_does_not_stop_read_results_over_all_days(tmp_path, api):
    """An empty SQL day knows no column types; its results file must still read together
    with the days that had rows, which keep theirs."""
    rows = [("A", "s", "hello", f"{DAY} 10:00:00", 7), ("B", "s", "hi", f"{DAY} 11:00:00", 8)]
    spec = PipelineSpec.from_dict(
        ticket_spec(tmp_path, api.base_url, source=_sql_source(tmp_path, rows)), base_dir=tmp_path
    )
    with pytest.raises(FileNotFoundError, match="no partition of this pipeline has been"):
        read_results(spec)
    with api.pipeline(spec) as pipeline:
        for day in (DAY, "2026-11-21"):
            pipeline.run(day, poll_interval=0.1, timeout=60)
    frame = read_results(spec)
    assert sorted(frame["id"]) == ["A", "B"] and frame["extra"].tolist() == [7, 8]
    assert set(frame["partition"]) == {DAY}
    assert read_results(spec, "2026-11-21").empty


def test_database_urls_can_come_from_environment_variables(tmp_path, api, monkeypatch):
    """`url_env` names the variable, so a database password need not be in the spec."""
    rows = [("A", "s", "hello", f"{DAY} 10:00:00", 7)]
    source = _sql_source(tmp_path, rows)
    monkeypatch.setenv("TICKETS_DB_URL", f"sqlite:///{tmp_path / 'source.db'}")
    source["sql"] = {"url_env": "TICKETS_DB_URL", "query": source["sql"]["query"]}
    data = ticket_spec(tmp_path, api.base_url, source=source, ledger={"url_env": "LEDGER_DB_URL"})
    spec = PipelineSpec.from_dict(data, base_dir=tmp_path)
    with pytest.raises(SpecError, match=r"ledger\.url_env: the environment variable LEDGER_DB_URL"):
        Pipeline(spec)
    monkeypatch.setenv("LEDGER_DB_URL", f"sqlite:///{tmp_path / 'elsewhere.db'}")
    with api.pipeline(spec) as pipeline:
        summary = pipeline.run(DAY, poll_interval=0.1, timeout=60)
    assert summary.counts["succeeded"] == 1
    assert (tmp_path / "elsewhere.db").exists()


def two_requests_one_slow(tmp_path, api: BatchApi, slow_seconds: int) -> PipelineSpec:
    at = datetime(2026, 11, 20, 9)
    rows = [
        {"ticket_id": "QUICK", "subject": "s", "body": "quick", "created_at": at},
        {"ticket_id": "SLOW", "subject": "s", "body": f"<<slow:{slow_seconds}>>", "created_at": at},
    ]
    write_tickets(tmp_path / "tickets.parquet", rows)
    return PipelineSpec.from_dict(ticket_spec(tmp_path, api.base_url), base_dir=tmp_path)


def test_a_run_whose_service_goes_away_briefly_retries_and_finishes(tmp_path) -> None:
    api = MemoryApi(completion_window_seconds=600)
    reports = []

    def outage(status, report) -> None:
        reports.append(report)
        api.service.reachable = not 2 <= len(reports) < 6  # a few polls meet no service

    with api.pipeline(two_requests_one_slow(tmp_path, api, 20)) as pipeline:
        summary = pipeline.run(DAY, poll_interval=2, on_progress=outage)
    assert [r for r in reports if r is not None and r.errors]  # the polls meanwhile failed
    assert summary.counts["succeeded"] == 2


def test_a_run_that_gets_no_answer_past_the_backends_bound_stops_naming_it(tmp_path) -> None:
    api = MemoryApi(unreachable_after=5)
    spec = two_requests_one_slow(tmp_path, api, 30)

    def outage(status, report) -> None:
        api.service.reachable = False

    with api.pipeline(spec) as pipeline, pytest.raises(ServiceUnreachable) as raised:
        pipeline.run(DAY, poll_interval=2, on_progress=outage)
    assert str(raised.value).startswith("no answer from the Batch API at memory://batch-api")
    assert "for 6 s (the limit is 5 s)" in str(raised.value)


def test_a_pipeline_takes_the_tuning_given_else_the_defaults(tmp_path) -> None:
    spec = PipelineSpec.from_dict(ticket_spec(tmp_path, MemoryApi.base_url), base_dir=tmp_path)
    given = Tuning(requeue_backoff_seconds=1.0, chunk_rows=8)
    with Pipeline(spec, tuning=given) as pipeline:
        assert pipeline.tuning == given
        assert pipeline._worker(PollPass).sibling(Collector).tuning == given  # to every step
    with Pipeline(spec) as pipeline:
        assert pipeline.tuning == DEFAULT_TUNING
