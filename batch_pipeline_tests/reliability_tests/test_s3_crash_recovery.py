"""A run on object storage SIGKILLed in the middle of an upload or a download is finished by
the next run: one paid batch per shard, every row once, and no object that a reader lists is
partial (every object of the bucket is read and parsed). A store that goes away for a while
in the middle of a run and comes back is ridden through.

The kills in an upload are made on the wire (`upload_cutter`): the store receives half an
object's bytes and never the rest, whatever the client library does.
"""

from __future__ import annotations

import signal
import subprocess
import time
from urllib.parse import unquote

import pytest
from moto.server import ThreadedMotoServer

from batch_pipeline.core.pipeline import Pipeline
from batch_pipeline.core.spec import PipelineSpec
from batch_pipeline_tests.reliability_tests.helpers import (
    DAY,
    OnStore,
    Tally,
    broken_objects,
    check_objects_whole,
    check_paid_once,
    child_command,
    finish_child,
    keys_of,
    run_partition,
    start_child,
    ticket_rows,
    wait_until,
)
from batch_pipeline_tests.reliability_tests.upload_cutter import cutting_uploads
from batch_pipeline_tests.s3_server import free_port

pytestmark = [pytest.mark.reliability, pytest.mark.slow, pytest.mark.postgres]

ROWS = 10
PER_FILE = 4  # three shards: 4, 4 and 2 requests
OUTAGE_SECONDS = 5.0


def start_run(on_store: OnStore, *args: str, **env: str) -> subprocess.Popen[str]:
    """A child running the day end to end (ROWS tickets in three shards) on the bucket."""
    spec = on_store.write(ticket_rows(ROWS), limits={"max_requests_per_file": PER_FILE})
    return start_child(child_command(str(spec), "--partition", DAY, *args), own_group=True, **env)


def rerun_and_check(on_store: OnStore, tally: Tally) -> None:
    """After the crash no object is partial; a run in this process then finishes the day:
    every row once, at its first attempt, one batch and one upload per shard."""
    broken_after_crash = broken_objects(on_store.store, on_store.bucket, tally)
    spec = PipelineSpec.from_yaml(on_store.code / "pipeline.yaml")
    summary, results = run_partition(spec, tally, keys_of(ticket_rows(ROWS)))
    assert summary.counts["succeeded"] == ROWS, summary.counts
    assert (results["attempts"] == 1).all()
    with Pipeline(spec) as pipeline:
        check_paid_once(on_store.base_url, pipeline, tally)
    assert not broken_after_crash, f"partial objects after the crash: {broken_after_crash}"
    check_objects_whole(on_store.store, on_store.bucket, tally)


def cut_key(request_line: str) -> str:
    """The key of the object in a request line (`PUT /bucket/key?... HTTP/1.1`)."""
    return unquote(request_line.split()[1].split("?")[0]).split("/", 2)[2]


def assert_killed(crashed: subprocess.CompletedProcess[str], where: str, tally: Tally) -> None:
    assert crashed.returncode == -signal.SIGKILL, (
        f"not killed {where} (exit {crashed.returncode}):\n{crashed.stderr[-2000:]}"
    )
    tally.crashes += 1


@pytest.mark.parametrize(
    "key_pattern",
    [
        pytest.param(r"/requests/.*/shard-\d+\.jsonl", id="during-a-shard-upload"),
        pytest.param(r"/batches/.*/outcomes\.parquet", id="during-an-outcome-file-upload"),
        pytest.param(r"/results/.*\.parquet", id="during-the-results-upload"),
    ],
)
def test_a_run_killed_mid_upload_is_finished_by_the_next(
    on_store: OnStore, tally: Tally, key_pattern: str
) -> None:
    with cutting_uploads(on_store.store.endpoint, key_pattern) as cutter:
        child = start_run(on_store, AWS_ENDPOINT_URL=cutter.endpoint)
        cutter.victim = child.pid
        assert_killed(finish_child(child, tally), f"in an upload of {key_pattern}", tally)
    # Cut mid-request: these objects are smaller than a part, each one PUT, and a cut one
    # leaves nothing (a cut multipart upload is test_streamed_upload's, at 24 MB).
    assert cutter.cut is not None
    assert cut_key(cutter.cut) not in on_store.store.keys(on_store.bucket)
    rerun_and_check(on_store, tally)


def test_a_run_killed_mid_download_is_finished_by_the_next(on_store: OnStore, tally: Tally) -> None:
    """Killed with half of a batch's output file downloaded from the provider."""
    crashed = finish_child(start_run(on_store, "--crash", "download"), tally)
    assert_killed(crashed, "in a download", tally)
    rerun_and_check(on_store, tally)


def test_a_run_rides_through_the_store_going_away(on_store: OnStore, tally: Tally) -> None:
    """The store stops answering once the batches are in flight, and comes back on the same
    address seconds later: the run goes on and finishes, every row once, paid once."""
    port = free_port()
    store = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    store.start()  # the same buckets as the session's server: moto keeps them per process
    try:
        child = start_run(on_store, "--timeout", "120", AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}")
        spec = PipelineSpec.from_yaml(on_store.code / "pipeline.yaml")
        with Pipeline(spec) as pipeline:
            wait_until(lambda: pipeline.ledger.batches(spec.name), "a batch submitted", 60)
        assert child.poll() is None, "the run ended before the store went away"
        store.stop()
        time.sleep(OUTAGE_SECONDS)
        store = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        store.start()
        finished = finish_child(child, tally)
    finally:
        store.stop()
    assert finished.returncode == 0, finished.stderr[-12000:]
    rerun_and_check(on_store, tally)
