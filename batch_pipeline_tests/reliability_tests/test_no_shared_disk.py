"""A pipeline whose processes share no disk, as in containers: the build, each submission,
every poll (a sensor tick), each results run and the reader each run in a process of their
own, with an empty working folder, HOME and TMPDIR removed when it ends. What they share is
the S3 server (source, shards, batch files, results), the PostgreSQL ledger and the Batch API.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from batch_pipeline.core.pipeline import Pipeline
from batch_pipeline.core.spec import PipelineSpec
from batch_pipeline_tests.reliability_tests.helpers import (
    DAY,
    OTHER_DAY,
    OnStore,
    Tally,
    check_objects_whole,
    check_paid_once,
    child_command,
    cli_command,
    ticket_rows,
)
from batch_pipeline_tests.reliability_tests.isolated import Isolation, check_read_rows, last_json

pytestmark = [pytest.mark.reliability, pytest.mark.slow, pytest.mark.postgres]

DAYS = (DAY, OTHER_DAY)
PER_FILE = 4  # three shards a day, so submissions and polls interleave over several
POLLS = 40
# A row the service fails every time (retried by polls, in retry shards, until it fails for
# good) and one it never answers (it expires at the end of the completion window).
FAULTS = {3: "<<fail:500>> failing every time", 7: "<<hang>> never answered"}


def test_each_step_in_a_process_of_its_own_every_row_once(
    tmp_path: Path, on_store: OnStore, tally: Tally
) -> None:
    rows = [
        {**row, "body": FAULTS.get(i, row["body"])}
        for day in DAYS
        for i, row in enumerate(ticket_rows(10, prefix=f"{day}-", day=day))
    ]
    spec = str(on_store.write(rows, limits={"max_requests_per_file": PER_FILE}))
    isolation = Isolation(tmp_path / "processes", tally, on_store.environment())
    days = [f"--partition={day}" for day in DAYS]

    isolation.run("build", child_command(spec, "--step", "build", *days))
    for day in DAYS:
        submitted = isolation.run(
            f"submit-{day}", cli_command("run", spec, "--partition", day, "--no-wait")
        )
        assert "submitted" in submitted.stdout
    polls = isolation.repeat(
        "poll",
        child_command(spec, "--step", "poll"),
        lambda poll: set(last_json(poll)["settled"]) >= set(DAYS),
        tries=POLLS,
        pause=0.5,
    )
    assert polls >= 2, "the first poll found every day settled: nothing was handed over"
    for day in DAYS:
        collected = isolation.run(f"results-{day}", cli_command("run", spec, "--partition", day))
        assert f"{on_store.root}/out/{on_store.name}/results/partition={day}/" in collected.stdout
    read = isolation.run("read", child_command(spec, "--step", "read", *days))

    statuses = check_read_rows(read, rows, DAYS, tally)
    assert statuses == {"succeeded": 16, "failed": 2, "expired": 2}, statuses
    with Pipeline(PipelineSpec.from_yaml(spec)) as pipeline:
        check_paid_once(on_store.base_url, pipeline, tally, one_per_shard=False)
    check_objects_whole(on_store.store, on_store.bucket, tally)
