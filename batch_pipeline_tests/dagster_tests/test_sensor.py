"""The sensor on its own: its cursor, a Batch API that does not answer, and what it submits."""

from __future__ import annotations

import re
import time
from dataclasses import replace

import dagster as dg
import openai
import pandas as pd
import pytest
from dagster._core.storage.dagster_run import DagsterRun
from dagster._core.utils import make_new_run_id
from dagster_shared.serdes import deserialize_value, serialize_value

from batch_pipeline.core import layout
from batch_pipeline.core.pipeline import load_pipeline
from batch_pipeline.dagster import (
    BatchBackendResource,
    BatchPipelineSensorCursor,
    build_batch_pipeline_assets,
    build_batch_pipeline_defs,
    build_batch_pipeline_sensor,
)
from batch_pipeline.dagster.assets import backend_resource_key_for
from batch_pipeline.dagster.sensor_builder import GC_INTERVAL_SECONDS, MAX_RESULTS_REQUESTS
from batch_pipeline.demo import DEMO_DAYS, execute_run_request, write_demo
from batch_pipeline_tests.batch_apis import MemoryApi

UNREACHABLE = "http://127.0.0.1:9/v1"


def tick(sensor: dg.SensorDefinition, cursor: str | None = None):
    with dg.instance_for_test() as instance:
        return sensor(dg.build_sensor_context(instance=instance, cursor=cursor))


@pytest.mark.slow
def test_an_unreadable_cursor_is_replaced(tmp_path) -> None:
    spec = write_demo(tmp_path, base_url=UNREACHABLE)
    sensor = build_batch_pipeline_sensor(
        spec=spec, backend=BatchBackendResource(base_url=UNREACHABLE)
    )
    result = tick(sensor, cursor="not a cursor")
    assert result.skip_reason.skip_message.startswith(
        "Polled: no batch changed. Nothing to wait for"
    )
    cursor = deserialize_value(result.cursor, BatchPipelineSensorCursor)
    assert (cursor.version, cursor.in_flight, cursor.queued) == (2, 0, 0)
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", cursor.polled_at)
    assert '"polled_at": "' in result.cursor  # a time a person reads on the sensor page


@pytest.mark.slow
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
    outcome = tick(build_batch_pipeline_sensor(spec=spec, backend=down))
    assert not outcome.run_requests
    message = outcome.skip_reason.skip_message
    assert message.startswith("Polled: 1 poll error (in the tick's logs). Waiting: "), message
    # which attempt the batch is, and when its completion window ends
    assert re.search(
        rf"1 batch in flight for {day} \(attempt 1 of 3, .*"
        r"expires \d{4}-\d\d-\d\d \d\d:\d\d UTC\)",
        message,
    ), message


@pytest.mark.slow
def test_a_day_whose_requests_alone_were_materialized_is_not_submitted_by_the_sensor(
    tmp_path, batch_api: str
) -> None:
    """Materializing `requests` shows the cost estimate and pays for nothing; only the
    `batches` step asks for the shards to be submitted."""
    spec = write_demo(tmp_path, base_url=batch_api)
    day = DEMO_DAYS[0]
    backend = BatchBackendResource(base_url=batch_api)
    requests, batches = build_batch_pipeline_assets(spec=spec)[:2]
    sensor = build_batch_pipeline_sensor(spec=spec, backend=backend)
    client = openai.OpenAI(base_url=batch_api, api_key="local")

    def submitted() -> set[str]:
        """The day's batches on the service that this test made (the service is shared)."""
        return {
            b.id
            for b in client.batches.list(limit=100)
            if (b.metadata or {}).get("batch_pipeline_partition") == day
            and b.metadata.get("batch_pipeline_pipeline") == spec.name
        } - before

    before: set[str] = set()
    before = submitted()

    with dg.instance_for_test() as instance:
        resources = {"batch_backend": backend}
        only_requests = dg.materialize(
            [requests], partition_key=day, resources=resources, instance=instance
        )
        assert only_requests.success
        outcome = sensor(dg.build_sensor_context(instance=instance))
        assert submitted() == set()
        assert "not asked to be submitted" in outcome.skip_reason.skip_message

        assert dg.materialize(
            [requests, batches], partition_key=day, resources=resources, instance=instance
        ).success
        assert len(submitted()) >= 1


QUIET = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}


@pytest.mark.slow
def test_a_results_run_is_not_asked_for_while_one_waits_nor_forever_when_each_fails(
    tmp_path, batch_api: str
) -> None:
    """A row added to a settled day makes every results run fail: the sensor asks again
    only once the last run has finished, stops after MAX_RESULTS_REQUESTS and says why."""
    spec = write_demo(tmp_path, base_url=batch_api)
    day = DEMO_DAYS[0]
    defs = build_batch_pipeline_defs(spec=spec)
    backend = defs.resources[backend_resource_key_for(spec)]
    sensor = build_batch_pipeline_sensor(spec=spec, backend=backend, rerun_results_after_seconds=0)
    everything = defs.resolve_implicit_global_asset_job_def()
    with dg.instance_for_test() as instance:
        submit = defs.resolve_job_def(f"{spec.name}_submit_job")
        assert submit.execute_in_process(
            partition_key=day, instance=instance, run_config=QUIET
        ).success
        source = tmp_path / "tickets.parquet"
        rows = pd.read_parquet(source)
        late = rows.iloc[[0]].assign(ticket_id="TCK-LATE")
        pd.concat([rows, late]).to_parquet(source, index=False)

        def tick_until_asked() -> dg.SensorResult:
            for _ in range(100):
                outcome = sensor(dg.build_sensor_context(instance=instance))
                if outcome.run_requests or "a person" in (outcome.skip_reason.skip_message or ""):
                    return outcome
                time.sleep(0.2)
            raise AssertionError("the day never settled")

        first = tick_until_asked().run_requests[0]
        # Not launched (the UI's "Test sensor"): the next tick asks again, under the same key.
        assert tick_until_asked().run_requests[0].run_key == first.run_key
        waiting = DagsterRun(
            job_name=everything.name,
            run_id=make_new_run_id(),
            status=dg.DagsterRunStatus.STARTED,
            tags={"dagster/run_key": first.run_key},
        )
        instance.add_run(waiting)
        assert not sensor(
            dg.build_sensor_context(instance=instance)
        ).run_requests  # its run is still going
        instance.delete_run(waiting.run_id)

        keys = [first.run_key]
        for _ in range(MAX_RESULTS_REQUESTS):
            run_key = keys[-1]
            failed = everything.execute_in_process(
                instance=instance,
                partition_key=day,
                asset_selection=[first.asset_selection[0]],
                run_config=QUIET,
                raise_on_error=False,
                tags={"dagster/run_key": run_key},
            )
            assert not failed.success
            outcome = tick_until_asked()
            if outcome.run_requests:
                keys.append(outcome.run_requests[0].run_key)
        assert len(keys) == MAX_RESULTS_REQUESTS
        assert len(set(keys)) == len(keys)
        assert f"a person to look at {day}" in outcome.skip_reason.skip_message


@pytest.mark.slow
def test_the_sensor_closes_over_its_backend_and_needs_no_resource(tmp_path) -> None:
    """As dagster-dbt's polling sensor closes over its workspace: a tick is handed no
    resource, and the sensor of the Definitions polls through their backend."""
    spec = write_demo(tmp_path, base_url=UNREACHABLE)
    defs = build_batch_pipeline_defs(spec=spec)
    sensor = defs.resolve_sensor_def(f"{spec.name}_batch_sensor")
    assert sensor.required_resource_keys == set()
    result = tick(sensor)
    assert "Nothing to wait for" in result.skip_reason.skip_message


@pytest.mark.slow
def test_the_sensor_removes_the_intermediates_of_old_days_at_most_once_an_interval(
    tmp_path,
) -> None:
    """A tick removes the intermediates of days collected more than
    `keep_intermediates_days` ago (both days here were collected on the test clock, long
    before now), and the next ticks leave gc alone until its interval has passed."""
    spec = write_demo(tmp_path, base_url=UNREACHABLE)
    memory = MemoryApi(completion_window_seconds=3.0)
    sensor = build_batch_pipeline_sensor(
        spec=spec, backend=BatchBackendResource(base_url=UNREACHABLE)
    )

    def run_and_list(day: str) -> set[str]:
        with memory.pipeline(spec) as pipeline:
            pipeline.run(day, poll_interval=1.0, timeout=600)
            return intermediates(pipeline)

    def intermediates(pipeline) -> set[str]:
        return {
            key
            for key in pipeline.storage.list()
            if layout.intermediate_generation(key) is not None
        }

    first_day = run_and_list(DEMO_DAYS[0])
    assert any(key.endswith("outcomes.parquet") for key in first_day)
    first = tick(sensor)
    cursor = deserialize_value(first.cursor, BatchPipelineSensorCursor)
    assert cursor.gc_at is not None and time.time() - cursor.gc_at < 60

    second_day = run_and_list(DEMO_DAYS[1])
    with memory.pipeline(spec) as pipeline:
        assert intermediates(pipeline) == second_day  # the first day's are gone
        assert pipeline.get_partition(DEMO_DAYS[0]).intermediates_removed_at is not None
        results = pipeline.read_results()
    again = tick(sensor, cursor=first.cursor)  # within the interval: no gc
    assert deserialize_value(again.cursor, BatchPipelineSensorCursor).gc_at == cursor.gc_at
    with memory.pipeline(spec) as pipeline:
        assert intermediates(pipeline) == second_day

    overdue = replace(cursor, gc_at=time.time() - GC_INTERVAL_SECONDS - 1)
    later = tick(sensor, cursor=serialize_value(overdue))
    assert deserialize_value(later.cursor, BatchPipelineSensorCursor).gc_at > overdue.gc_at
    with memory.pipeline(spec) as pipeline:
        assert intermediates(pipeline) == set()
        assert pipeline.read_results().equals(results)


@pytest.mark.slow
def test_a_new_instance_asks_for_the_results_of_days_settled_before_it(
    tmp_path, batch_api: str
) -> None:
    """A Dagster instance that meets a ledger whose days are already collected (by another
    instance, or the command line) asks for their results runs, so `results` appears."""
    spec = write_demo(tmp_path, base_url=batch_api)
    day = DEMO_DAYS[0]
    with load_pipeline(spec) as pipeline:
        pipeline.run(day, poll_interval=0.2, timeout=120)
    defs = build_batch_pipeline_defs(spec=spec)
    sensor = defs.resolve_sensor_def(f"{spec.name}_batch_sensor")
    with dg.instance_for_test() as instance:
        first = sensor(dg.build_sensor_context(instance=instance, definitions=defs))
        (request,) = first.run_requests
        assert (request.partition_key, request.run_key) == (day, f"{spec.name}:{day}:g1:results:1")
        run = execute_run_request(defs, request, instance)
        assert run.success
        (event,) = run.get_asset_materialization_events()
        assert event.materialization.metadata["dagster/row_count"].value > 0
        after = sensor(dg.build_sensor_context(instance=instance, definitions=defs))
        assert not after.run_requests
        assert "Nothing to wait for" in after.skip_reason.skip_message
