"""Removing the intermediates of collected days: exactly those files, only of days collected
long enough ago, never of a day in flight; a rebuild still works from the source."""

from __future__ import annotations

import re
from datetime import datetime

import pyarrow.parquet as pq
import pytest
import yaml

from batch_pipeline import PipelineSpec
from batch_pipeline.cli import main
from batch_pipeline.core import layout
from batch_pipeline.core.gc import DAY_SECONDS, IntermediatesGc
from batch_pipeline.core.pipeline import Pipeline
from batch_pipeline.core.storage_uri import StorageLocationError
from batch_pipeline_tests.batch_apis import MemoryApi
from batch_pipeline_tests.conftest import store_server, ticket_spec, write_tickets
from batch_pipeline_tests.core_tests.test_pipeline import DAY, OTHER_DAY

RUN = {"poll_interval": 0.5, "timeout": 600}


def two_days_of_rows() -> list[dict]:
    """Each day: good rows, one rejected row, and one the service fails with a retryable
    500, so each day has retry shards and manifests of its own."""
    rows = []
    for day in (DAY, OTHER_DAY):
        at = datetime.fromisoformat(f"{day}T09:00")
        rows += [
            {"ticket_id": f"{day}-T{i}", "subject": f"Order {i}", "body": f"Parcel {i}"}
            | {"created_at": at}
            for i in range(4)
        ]
        rows.append({"ticket_id": f"{day}-NULL", "subject": "x", "body": None, "created_at": at})
        rows.append(
            {"ticket_id": f"{day}-F500", "subject": "Flaky", "body": "<<fail:500>>"}
            | {"created_at": at}
        )
    return rows


def make_pipeline(tmp_path, api: MemoryApi, ledger: dict | None = None, **output) -> Pipeline:
    """A pipeline over two days of tickets, its spec in `tmp_path/pipeline.yaml`."""
    write_tickets(tmp_path / "tickets.parquet", two_days_of_rows())
    data = ticket_spec(tmp_path, api.base_url, retry={"max_attempts": 2}, output=output)
    if ledger is not None:
        data["ledger"] = ledger
    (tmp_path / "pipeline.yaml").write_text(yaml.safe_dump(data))
    return api.pipeline(PipelineSpec.from_yaml(tmp_path / "pipeline.yaml"))


def stored(pipeline: Pipeline) -> list[str]:
    """Every key of the pipeline's storage but the SQLite ledger's, whose journal files come
    and go with its connections."""
    return [key for key in pipeline.storage.list() if not key.startswith("ledger.sqlite")]


def intermediates_of(keys: list[str], day: str) -> set[str]:
    """The keys that are a day's intermediates, by their names alone."""
    shard = re.compile(
        rf"^requests/partition={day}/gen=\d+/attempt=\d+/shard-\d{{5}}\.(jsonl|ids\.parquet)$"
    )
    return {k for k in keys if shard.match(k) or k.startswith(f"batches/partition={day}/")}


def test_gc_removes_exactly_the_intermediates_of_days_collected_long_enough_ago(
    tmp_path, memory_api
):
    with make_pipeline(tmp_path, memory_api) as pipeline:
        pipeline.run(DAY, **RUN)
        memory_api.sleep(3 * DAY_SECONDS)
        pipeline.run(OTHER_DAY, **RUN)
        memory_api.sleep(5 * DAY_SECONDS)  # DAY collected 8 days ago, OTHER_DAY 5
        before = stored(pipeline)
        old = intermediates_of(before, DAY)
        assert {k for k in old if "/attempt=2/" in k} and {k for k in old if "outcomes" in k}
        sizes = sum(pipeline.storage.size(k) for k in old)

        dry = pipeline.gc(dry_run=True)
        assert stored(pipeline) == before
        assert pipeline.get_partition(DAY).intermediates_removed_at is None
        assert [c.partition for c in dry.partitions] == [DAY]
        assert set(dry.partitions[0].files) == old and dry.bytes == sizes

        report = pipeline.gc()
        after = stored(pipeline)
        assert set(before) - set(after) == old and set(after) <= set(before)
        assert report.files == len(old) and report.bytes == sizes
        assert intermediates_of(after, OTHER_DAY) == intermediates_of(before, OTHER_DAY)
        kept = {
            layout.results_path(DAY),
            layout.rejected_path(DAY, 1),
            layout.manifest_path(DAY, 1, 1),
            layout.manifest_path(DAY, 1, 2, 0),
        }
        assert kept <= set(after) and pipeline.storage.exists("ledger.sqlite")
        assert pipeline.get_partition(DAY).intermediates_removed_at == memory_api.now()
        assert pipeline.gc().files == 0  # recorded: not listed again
        assert len(pipeline.read_results(DAY)) == 6

        memory_api.sleep(3 * DAY_SECONDS)
        assert [c.partition for c in pipeline.gc().partitions] == [OTHER_DAY]
        assert not intermediates_of(stored(pipeline), OTHER_DAY)


def test_gc_leaves_days_in_flight_settled_or_rebuilding_alone(tmp_path, memory_api):
    with make_pipeline(tmp_path, memory_api) as pipeline:
        pipeline.run(DAY, wait=False)  # submitted, in flight
        pipeline.run(OTHER_DAY, **RUN)
        pipeline.build_requests(OTHER_DAY, rebuild=True)  # generation 2, built
        pipeline.submit(OTHER_DAY)
        memory_api.sleep(30 * DAY_SECONDS)
        before = stored(pipeline)
        assert pipeline.gc().files == 0
        assert stored(pipeline) == before

        pipeline.poll()  # DAY's first batch ended: its retry shard is in flight
        polled = stored(pipeline)
        assert pipeline.gc().files == 0 and stored(pipeline) == polled


def test_a_day_rebuilt_after_gc_runs_from_the_source_and_reads_the_same(tmp_path, memory_api):
    with make_pipeline(tmp_path, memory_api) as pipeline:
        first = pipeline.run(DAY, **RUN)
        rows = pipeline.read_results(DAY).set_index("ticket_id")
        memory_api.sleep(8 * DAY_SECONDS)
        assert pipeline.gc().files
        again = pipeline.collect_results(DAY)  # outcomes gone: the written results stand
        assert again.already_collected and again.rows == first.rows

        rebuilt = pipeline.run(DAY, rebuild=True, **RUN)
        assert rebuilt.generation == 2 and rebuilt.counts == first.counts
        fresh = pipeline.read_results(DAY).set_index("ticket_id")
        columns = ["status", "attempts", "response_text", "error_code"]
        assert fresh[columns].sort_index().equals(rows[columns].sort_index())
        assert intermediates_of(stored(pipeline), DAY)  # generation 2's, kept 7 days


@pytest.fixture(
    params=[
        "local",
        pytest.param("s3", marks=[pytest.mark.slow, pytest.mark.postgres]),
        pytest.param("gs", marks=[pytest.mark.slow, pytest.mark.postgres]),
    ]
)
def where(request) -> dict:
    """The `output` and `ledger` of a pipeline on local disk, or on S3 or GCS (a fresh bucket
    of the test's server) with its own PostgreSQL ledger."""
    if request.param == "local":
        return {}
    bucket = store_server(request, request.param).create_bucket()
    database = request.getfixturevalue("own_postgres_database")
    return {"dir": f"{request.param}://{bucket}/out", "ledger": {"url": database}}


def test_keep_intermediates_days_0_removes_them_once_the_results_are_written(
    tmp_path, memory_api, where
):
    with make_pipeline(tmp_path, memory_api, keep_intermediates_days=0, **where) as pipeline:
        pipeline.run(DAY, wait=False)
        assert intermediates_of(stored(pipeline), DAY)  # in flight: kept
        pipeline.run(DAY, **RUN)
        keys = stored(pipeline)
        assert not intermediates_of(keys, DAY)
        assert layout.results_path(DAY) in keys and layout.rejected_path(DAY, 1) in keys
        assert len(pipeline.read_results(DAY)) == 6
        assert pipeline.get_partition(DAY).intermediates_removed_at is not None


def test_a_store_that_refuses_the_removal_leaves_the_results_standing(
    tmp_path, memory_api, monkeypatch, caplog
):
    """Removing intermediates is tidying: an object store's refusal is logged, the results
    stand, and a later `gc` tries again."""

    def refuse(self, record, **_):
        raise StorageLocationError(f"{self.storage.uri('batches')}: access refused")

    monkeypatch.setattr(IntermediatesGc, "clean", refuse)
    with make_pipeline(tmp_path, memory_api, keep_intermediates_days=0) as pipeline:
        summary = pipeline.run(DAY, **RUN)
        assert len(pipeline.read_results(DAY)) == summary.rows == 6
        assert pipeline.get_partition(DAY).intermediates_removed_at is None
        assert intermediates_of(stored(pipeline), DAY)
    assert "intermediates not removed" in caplog.text and "access refused" in caplog.text


def test_outcome_files_are_compressed_and_the_results_do_not_depend_on_their_codec(
    tmp_path, memory_api
):
    """The outcome files are compressed Parquet; the same outcomes stored with another codec
    give a results file of the same content, schema and metadata included."""
    with make_pipeline(tmp_path, memory_api) as pipeline:
        pipeline.run(DAY, **RUN)
        results = pq.read_table(pipeline.storage.uri(layout.results_path(DAY)))
        outcome_keys = [k for k in stored(pipeline) if k.endswith("outcomes.parquet")]
        assert len(outcome_keys) == 2
        for key in outcome_keys:
            path = pipeline.storage.uri(key)
            meta = pq.ParquetFile(path).metadata.row_group(0)
            codecs = {meta.column(i).compression for i in range(meta.num_columns)}
            assert codecs == {"ZSTD"}, key
            pq.write_table(pq.read_table(path), path, compression="snappy")
        pipeline.collect_results(DAY)
        again = pq.read_table(pipeline.storage.uri(layout.results_path(DAY)))
        assert again.equals(results) and again.schema.equals(results.schema, check_metadata=True)


def test_the_gc_command_lists_with_dry_run_then_removes(tmp_path, memory_api, capsys):
    with make_pipeline(tmp_path, memory_api) as pipeline:
        pipeline.run(DAY, **RUN)  # collected on the test clock, long before today
        before = stored(pipeline)
        old = intermediates_of(before, DAY)
        freed = sum(pipeline.storage.size(key) for key in old)
    spec_path = str(tmp_path / "pipeline.yaml")

    assert main(["gc", spec_path, "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert stored(pipeline) == before
    assert f"would remove {len(old)} intermediate files of 1 partition(s)" in printed
    assert all(pipeline.storage.uri(key) in printed for key in old)

    assert main(["gc", spec_path]) == 0
    printed = capsys.readouterr().out
    assert set(before) - set(stored(pipeline)) == old
    assert f"removed {len(old)} intermediate files" in printed
    assert f"{freed / 1e6:,.1f} MB freed" in printed
    assert main(["gc", spec_path]) == 0
    assert "removed 0 intermediate files of 0 partition(s)" in capsys.readouterr().out


@pytest.mark.parametrize("days", [-1, "soon"])
def test_a_bad_keep_intermediates_days_is_refused_by_the_spec(tmp_path, days):
    data = ticket_spec(tmp_path, "http://127.0.0.1:9/v1", output={"keep_intermediates_days": days})
    with pytest.raises(ValueError, match="keep_intermediates_days"):
        PipelineSpec.from_dict(data, base_dir=tmp_path)
