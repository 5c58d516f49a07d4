"""The repo's dagster.yaml: PostgreSQL storage and a bounded queue for submission runs."""

from __future__ import annotations

import dagster as dg
import pytest

from batch_pipeline.dagster import SUBMISSION_POOL, SUBMISSION_TAG

pytestmark = pytest.mark.slow


def test_runs_events_and_schedules_are_stored_in_postgres(instance: dg.DagsterInstance) -> None:
    from dagster_postgres import (
        PostgresEventLogStorage,
        PostgresRunStorage,
        PostgresScheduleStorage,
    )

    assert isinstance(instance.run_storage, PostgresRunStorage)
    assert isinstance(instance.event_log_storage, PostgresEventLogStorage)
    assert isinstance(instance.schedule_storage, PostgresScheduleStorage)


def test_submission_runs_and_uploads_are_bounded(instance: dg.DagsterInstance) -> None:
    config = instance.get_concurrency_config()
    limits = config.run_queue_config.tag_concurrency_limits
    assert {"key": SUBMISSION_TAG, "value": "true", "limit": 4} in limits
    assert config.pool_config.default_pool_limit == 4
    assert type(instance.run_coordinator).__name__ == "QueuedRunCoordinator"
    assert SUBMISSION_POOL  # the pool the batches step claims (see test_assets)
