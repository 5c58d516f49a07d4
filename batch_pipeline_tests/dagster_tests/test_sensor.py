"""The sensor on its own: its cursor, a Batch API that does not answer, and what it submits."""

from __future__ import annotations

import dagster as dg
import openai
from dagster_shared.serdes import deserialize_value

from batch_pipeline.dagster import (
    BatchBackendResource,
    BatchPipelineSensorCursor,
    build_batch_pipeline_assets,
    build_batch_pipeline_sensor,
)
from batch_pipeline.demo import DEMO_DAYS, write_demo

UNREACHABLE = "http://127.0.0.1:9/v1"


def tick(sensor: dg.SensorDefinition, backend: BatchBackendResource, cursor: str | None = None):
    with dg.instance_for_test() as instance:
        context = dg.build_sensor_context(
            instance=instance, cursor=cursor, resources={"batch_backend": backend}
        )
        return sensor(context)


def test_an_unreadable_cursor_is_replaced(tmp_path) -> None:
    spec = write_demo(tmp_path, base_url=UNREACHABLE)
    sensor = build_batch_pipeline_sensor(spec=spec)
    result = tick(sensor, BatchBackendResource(base_url=UNREACHABLE), cursor="not a cursor")
    assert result.skip_reason.skip_message.startswith("Nothing to wait for")
    cursor = deserialize_value(result.cursor, BatchPipelineSensorCursor)
    assert (cursor.version, cursor.in_flight, cursor.queued) == (1, 0, 0)
    assert cursor.polled_at is not None


def test_an_unreachable_api_is_logged_and_the_tick_goes_on(tmp_path, batch_api: str) -> None:
    spec = write_demo(tmp_path, base_url=batch_api)
    day = DEMO_DAYS[1]
    with dg.instance_for_test() as instance:
        result = dg.materialize(
            build_batch_pipeline_assets(spec=spec)[:2],
            partition_key=day,
            resources={"batch_backend": BatchBackendResource(base_url=batch_api)},
            instance=instance,
        )
    assert result.success

    down = BatchBackendResource(base_url=UNREACHABLE, max_retries=0, request_timeout_seconds=2)
    outcome = tick(build_batch_pipeline_sensor(spec=spec), down)
    assert not outcome.run_requests
    assert outcome.skip_reason.skip_message == f"Waiting: 1 batch in flight for {day}."


def test_a_day_whose_requests_alone_were_materialized_is_not_submitted_by_the_sensor(
    tmp_path, batch_api: str
) -> None:
    """Materializing `requests` shows the cost estimate and pays for nothing; only the
    `batches` step asks for the shards to be submitted."""
    spec = write_demo(tmp_path, base_url=batch_api)
    day = DEMO_DAYS[0]
    backend = BatchBackendResource(base_url=batch_api)
    requests, batches = build_batch_pipeline_assets(spec=spec)[:2]
    sensor = build_batch_pipeline_sensor(spec=spec)
    client = openai.OpenAI(base_url=batch_api, api_key="local")

    def submitted() -> list[str]:
        return [
            b.id
            for b in client.batches.list(limit=100)
            if (b.metadata or {}).get("batch_pipeline_partition") == day
            and b.metadata.get("batch_pipeline_pipeline") == spec.name
        ]

    with dg.instance_for_test() as instance:
        resources = {"batch_backend": backend}
        only_requests = dg.materialize(
            [requests], partition_key=day, resources=resources, instance=instance
        )
        assert only_requests.success
        context = dg.build_sensor_context(instance=instance, resources=resources)
        outcome = sensor(context)
        assert submitted() == []
        assert "not asked to be submitted" in outcome.skip_reason.skip_message

        assert dg.materialize(
            [requests, batches], partition_key=day, resources=resources, instance=instance
        ).success
        assert len(submitted()) >= 1
