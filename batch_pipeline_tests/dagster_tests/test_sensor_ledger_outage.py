"""The sensor while the ledger's PostgreSQL is away: a tick waits through a short outage, and
a longer one skips the tick with one line naming the database (never its password)."""

from __future__ import annotations

import threading
import time

import dagster as dg
import pytest
from dagster_shared.serdes import deserialize_value

from batch_pipeline.core.spec import LedgerSpec, PipelineSpec
from batch_pipeline.dagster import (
    BatchBackendResource,
    BatchPipelineSensorCursor,
    build_batch_pipeline_assets,
    build_batch_pipeline_sensor,
)
from batch_pipeline.demo import DEMO_DAYS, write_demo
from batch_pipeline_tests.throwaway_postgres import ThrowawayPostgres

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

PASSWORD = "sensor-pw-never-shown-3b9e"
OUTAGE_SECONDS = 2.0


def on_ledger(spec: PipelineSpec, server: ThrowawayPostgres, seconds: float) -> PipelineSpec:
    ledger = LedgerSpec(url=server.url(password=PASSWORD), reconnect_seconds=seconds)
    return spec.model_copy(update={"ledger": ledger})


def tick(sensor: dg.SensorDefinition) -> tuple[dg.SensorResult, float]:
    with dg.instance_for_test() as instance:
        started = time.monotonic()
        result = sensor(dg.build_sensor_context(instance=instance))
        return result, time.monotonic() - started


def test_a_tick_waits_through_a_short_outage_and_polls(
    tmp_path, batch_api: str, throwaway_postgres: ThrowawayPostgres
) -> None:
    spec = on_ledger(write_demo(tmp_path, base_url=batch_api), throwaway_postgres, 30)
    backend = BatchBackendResource(base_url=batch_api)
    with dg.instance_for_test() as instance:
        submitted = dg.materialize(
            build_batch_pipeline_assets(spec=spec)[:2],
            partition_key=DEMO_DAYS[1],
            resources={"batch_backend": backend},
            instance=instance,
        )
    assert submitted.success
    sensor = build_batch_pipeline_sensor(spec=spec, backend=backend)

    with dg.instance_for_test() as instance:
        context = dg.build_sensor_context(instance=instance)
        throwaway_postgres.stop()
        back = threading.Timer(OUTAGE_SECONDS, throwaway_postgres.start)
        started = time.monotonic()
        back.start()
        result = sensor(context)
        waited = time.monotonic() - started
        back.join()

    assert waited >= OUTAGE_SECONDS
    cursor = deserialize_value(result.cursor, BatchPipelineSensorCursor)
    assert cursor.polled_at is not None  # the poll ran, after the database came back
    assert result.run_requests or "Waiting:" in result.skip_reason.skip_message


def test_an_outage_longer_than_the_bound_skips_the_tick_naming_the_database(
    tmp_path, throwaway_postgres: ThrowawayPostgres
) -> None:
    spec = on_ledger(write_demo(tmp_path, base_url="http://127.0.0.1:9/v1"), throwaway_postgres, 1)
    sensor = build_batch_pipeline_sensor(
        spec=spec, backend=BatchBackendResource(base_url="http://127.0.0.1:9/v1")
    )
    tick(sensor)  # the database answers: what follows is an outage
    throwaway_postgres.stop()
    result, waited = tick(sensor)

    message = result.skip_reason.skip_message
    assert message.startswith(
        f"the ledger's database at 127.0.0.1:{throwaway_postgres.port}/postgres has not "
        "answered for 1 s"
    )
    assert message.endswith("; the next tick tries again")
    assert PASSWORD not in message and "\n" not in message
    assert result.cursor is None and not result.run_requests
    assert waited < 10
