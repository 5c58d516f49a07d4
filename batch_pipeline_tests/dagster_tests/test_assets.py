"""The asset factory: daily partitions from the spec, the pool, when `requests` rebuilds, and
when `results` waits."""

from __future__ import annotations

import dagster as dg
import pytest

from batch_pipeline.core.spec import PipelineSpec, SpecError
from batch_pipeline.dagster import (
    SUBMISSION_POOL,
    BatchBackendResource,
    build_batch_pipeline_assets,
    build_batch_pipeline_defs,
    build_partitions_def,
)
from batch_pipeline.dagster.assets import REBUILD_TAG, backend_resource_key_for
from batch_pipeline.demo import DEMO_DAYS, demo_spec_data, write_demo
from batch_pipeline_tests.dagster_tests.conftest import generation_of

URL = "http://127.0.0.1:9/v1"


def spec_with(tmp_path, **sections) -> PipelineSpec:
    return PipelineSpec.from_dict({**demo_spec_data(base_url=URL), **sections}, base_dir=tmp_path)


def test_one_partition_per_day_end_included(tmp_path) -> None:
    spec = spec_with(tmp_path, partitions={"start": "2026-01-30", "end": "2026-02-02"})
    keys = build_partitions_def(spec).get_partition_keys()
    assert keys == ["2026-01-30", "2026-01-31", "2026-02-01", "2026-02-02"]


def test_without_partitions_the_error_says_what_to_add(tmp_path) -> None:
    data = demo_spec_data(base_url=URL)
    del data["partitions"]
    spec = PipelineSpec.from_dict(data, base_dir=tmp_path)
    with pytest.raises(SpecError, match=r"ticket_triage.*partitions: \{start: YYYY-MM-DD\}"):
        build_batch_pipeline_assets(spec=spec)


def test_only_the_batches_step_is_in_the_submission_pool(tmp_path) -> None:
    assets = build_batch_pipeline_assets(spec=spec_with(tmp_path))
    pools = {a.key.path[-1]: a.node_def.pool for a in assets}
    assert pools == {"requests": None, "batches": SUBMISSION_POOL, "results": None}
    assert all(a.partitions_def == build_partitions_def(spec_with(tmp_path)) for a in assets)


def test_the_definitions_pass_op_tags_retry_policy_and_pool_to_every_step(tmp_path) -> None:
    retry = dg.RetryPolicy(max_retries=2, delay=5)
    defs = build_batch_pipeline_defs(
        spec=spec_with(tmp_path),
        op_tags={"team": "support"},
        retry_policy=retry,
        submission_pool="openai_uploads",
    )
    graph = defs.resolve_asset_graph()
    nodes = {key.path[-1]: graph.get(key).assets_def.node_def for key in graph.get_all_asset_keys()}
    assert {role: node.tags.get("team") for role, node in nodes.items()} == dict.fromkeys(
        ("requests", "batches", "results"), "support"
    )
    assert all(node.retry_policy == retry for node in nodes.values())
    assert nodes["batches"].pool == "openai_uploads" and nodes["requests"].pool is None


def test_two_pipelines_on_different_providers_merge_into_one_code_location(tmp_path) -> None:
    local = spec_with(tmp_path)
    data = demo_spec_data(base_url=URL)
    data["name"] = "ticket_sentiment"
    data["backend"] = {"provider": "openai", "base_url": "http://127.0.0.1:9/v2"}
    remote = PipelineSpec.from_dict(data, base_dir=tmp_path)
    merged = dg.Definitions.merge(
        build_batch_pipeline_defs(spec=local), build_batch_pipeline_defs(spec=remote)
    )
    assert set(merged.resources) == {
        "ticket_triage_batch_backend",
        "ticket_sentiment_batch_backend",
    }
    assert merged.resources[backend_resource_key_for(remote)].base_url.endswith("/v2")
    merged.resolve_all_job_defs()  # every asset finds its own pipeline's backend


def requests_metadata_of_runs(tmp_path, *run_tags: dict[str, str]) -> list[dict]:
    """The `requests` materialization metadata of one run per tags given, on one day."""
    spec = write_demo(tmp_path, base_url=URL)
    requests = build_batch_pipeline_assets(spec=spec)[0]
    resources = {"batch_backend": BatchBackendResource(base_url=URL)}
    metadata = []
    with dg.instance_for_test() as instance:
        for tags in run_tags:
            result = dg.materialize(
                [requests],
                partition_key=DEMO_DAYS[0],
                resources=resources,
                instance=instance,
                tags=tags,
            )
            (event,) = result.get_asset_materialization_events()
            metadata.append(event.materialization.metadata)
    return metadata


@pytest.mark.slow
def test_requests_again_before_submission_reuses_the_build(tmp_path) -> None:
    metadata = requests_metadata_of_runs(tmp_path, {}, {})
    assert [generation_of(m) for m in metadata] == [1, 1]
    assert ["reused_build" in m for m in metadata] == [False, True]
    assert metadata[0]["rejected_rows"].value >= 2  # null body, duplicate key
    assert "rows_without_day" not in metadata[0]  # none, so not shown


@pytest.mark.slow
def test_materializing_every_step_at_once_skips_results_until_the_day_settles(
    tmp_path, batch_api: str
) -> None:
    """The UI's "Materialize all" (assets and checks) over a day: the run succeeds, the
    batches are submitted, and results waits for the sensor instead of failing."""
    spec = write_demo(tmp_path, base_url=batch_api)
    defs = build_batch_pipeline_defs(spec=spec)
    everything = defs.resolve_implicit_global_asset_job_def()
    with dg.instance_for_test() as instance:
        run = everything.execute_in_process(
            instance=instance,
            partition_key=DEMO_DAYS[0],
            run_config={"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}},
        )
        assert run.success
        materialized = {e.asset_key.path[-1] for e in run.get_asset_materialization_events()}
        assert materialized == {"requests", "batches"}
        assert not run.get_asset_check_evaluations()
    with defs.resources[backend_resource_key_for(spec)].open_pipeline(spec) as pipeline:
        assert pipeline.status(DEMO_DAYS[0])[0].state == "in_flight"


@pytest.mark.slow
def test_a_rebuild_whose_build_died_is_finished_by_the_retried_run(tmp_path, batch_api) -> None:
    """A run tagged to rebuild started generation 2 and died before building it; its retry
    (which keeps the tag) builds generation 2 instead of calling it in flight."""
    spec = write_demo(tmp_path, base_url=batch_api)
    day = DEMO_DAYS[0]
    requests = build_batch_pipeline_assets(spec=spec)[0]
    backend = BatchBackendResource(base_url=batch_api)
    with dg.instance_for_test() as instance:
        resources = {"batch_backend": backend}
        first = dg.materialize(
            [requests], partition_key=day, resources=resources, instance=instance
        )
        assert first.success
        with backend.open_pipeline(spec) as pipeline:
            assert pipeline.ledger.start_generation(spec.name, day, rebuild=True) == 2
        retried = dg.materialize(
            [requests],
            partition_key=day,
            resources=resources,
            instance=instance,
            tags={REBUILD_TAG: "true"},
        )
        assert retried.success
        (event,) = retried.get_asset_materialization_events()
        assert generation_of(event.materialization.metadata) == 2


@pytest.mark.slow
def test_batches_of_a_day_never_built_fail_and_say_to_build_it_first(tmp_path) -> None:
    spec = write_demo(tmp_path, base_url=URL)
    batches = build_batch_pipeline_assets(spec=spec)[1]
    with dg.instance_for_test() as instance:
        result = dg.materialize(
            [batches],
            partition_key=DEMO_DAYS[0],
            resources={"batch_backend": BatchBackendResource(base_url=URL)},
            instance=instance,
            raise_on_error=False,
            selection=[batches.key],
        )
    assert not result.success
    (failure,) = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    error = failure.step_failure_data.error
    assert error.cause.cls_name == "PipelineError"
    assert "has not been built" in error.cause.message
    assert not result.get_asset_materialization_events()


@pytest.mark.slow
def test_a_day_built_but_not_submitted_can_be_rebuilt(tmp_path) -> None:
    """Nothing of it is paid for or in flight, so the rebuild tag is not refused."""
    metadata = requests_metadata_of_runs(tmp_path, {}, {REBUILD_TAG: "true"})
    generations = [generation_of(m) for m in metadata]
    assert generations == [1, 2]
