"""The crash scenarios of `test_crash_recovery`, on Anthropic's Message Batches: batches carry
no metadata, so a takeover finds what a killed run created by request count, by what the
ledger does not know, and by the submission tag its results' custom_ids carry. One batch per
shard, every row once."""

from __future__ import annotations

from pathlib import Path

import pytest

from batch_pipeline.core.pipeline import Pipeline
from batch_pipeline.core.spec import PipelineSpec
from batch_pipeline_tests.reliability_tests.anthropic_checks import anthropic_overrides
from batch_pipeline_tests.reliability_tests.helpers import (
    DAY,
    Services,
    Tally,
    broken_files,
    check_paid_once,
    keys_of,
    run_partition,
    ticket_rows,
    write_pipeline,
)
from batch_pipeline_tests.reliability_tests.test_crash_recovery import (
    PER_FILE,
    ROWS,
    crash,
    rerun_and_check,
)

pytestmark = [pytest.mark.reliability, pytest.mark.slow]


def _pipeline(tmp_path: Path, url: str, name: str, rows: list[dict]) -> Path:
    limits = {"max_requests_per_file": PER_FILE}
    return write_pipeline(tmp_path, url, name, rows, limits=limits, **anthropic_overrides(url))


@pytest.mark.parametrize(
    ("point", "nth"),
    [
        pytest.param("create", 2, id="after-the-second-shards-create"),
        pytest.param("ledger_write", 2, id="before-the-ledger-write-commits"),
    ],
)
def test_a_killed_anthropic_run_is_finished_by_the_next(
    tmp_path: Path, keyed_api: str, name: str, tally: Tally, point: str, nth: int
) -> None:
    rows = ticket_rows(ROWS)
    spec_path = _pipeline(tmp_path, keyed_api, name, rows)
    crash(spec_path, point, nth, tally)
    after_crash = broken_files(PipelineSpec.from_yaml(spec_path).pipeline_dir, tally)
    rerun_and_check(spec_path, keyed_api, tally, rows, after_crash)


def test_three_kills_in_a_row_still_pay_once_on_anthropic(
    tmp_path: Path, keyed_api: str, name: str, tally: Tally
) -> None:
    rows = ticket_rows(ROWS)
    spec_path = _pipeline(tmp_path, keyed_api, name, rows)
    for point in ("upload", "create", "ledger_write"):
        crash(spec_path, point, 1, tally)
    after_crashes = broken_files(PipelineSpec.from_yaml(spec_path).pipeline_dir, tally)
    rerun_and_check(spec_path, keyed_api, tally, rows, after_crashes)


def test_a_cancel_after_a_kill_settles_every_anthropic_row(
    tmp_path: Path, services: Services, name: str, tally: Tally
) -> None:
    """Killed after the second shard's batch was created, before the ledger knew it (the
    first shard's batch hangs on one request, the third shard is queued), then cancelled: the
    unrecorded batch is found by its results and adopted, and the next run ends with every
    row, the third shard cancelled, and no batch paid twice."""
    service = services.start(completion_window_seconds=120)
    rows = ticket_rows(ROWS, body=lambda i: "<<hang>>" if i == 0 else f"request {i}")
    spec_path = _pipeline(tmp_path, service.url, name, rows)
    crash(spec_path, "create", 2, tally)
    spec = PipelineSpec.from_yaml(spec_path)
    with Pipeline(spec) as pipeline:
        pipeline.cancel(DAY)
    _, results = run_partition(spec, tally, keys_of(rows))
    by_status = results.groupby("status")["attempts"].count().to_dict()
    assert by_status == {"succeeded": 2 * PER_FILE - 1, "cancelled": ROWS - 2 * PER_FILE + 1}
    with Pipeline(spec) as pipeline:
        check_paid_once(service.url, pipeline, tally)
        assert len(pipeline.ledger.batches(name)) == 2
