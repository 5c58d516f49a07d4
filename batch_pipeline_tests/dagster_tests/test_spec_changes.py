"""The assets over a settled day: a reused build is called settled, not in progress, and a
spec whose request changed since the build says so in the log and the metadata."""

from __future__ import annotations

import logging

import dagster as dg
import pytest

from batch_pipeline.core.pipeline import Pipeline
from batch_pipeline.core.spec import PipelineSpec
from batch_pipeline.dagster import BatchBackendResource, build_batch_pipeline_assets
from batch_pipeline.dagster.assets import REBUILD_TAG
from batch_pipeline.demo import DEMO_DAYS, demo_spec_data, write_demo

DAY = DEMO_DAYS[0]
SPEC_CHANGED = "spec_changed"


def materialize(
    spec: PipelineSpec, roles: list[str], batch_api: str, instance: dg.DagsterInstance
) -> tuple[dict[str, dict], list[tuple[int, str]]]:
    """Materialize the roles' assets for DAY: their metadata by role, and the run's user log
    lines as (level, message)."""
    assets = {a.key.path[-1]: a for a in build_batch_pipeline_assets(spec=spec)}
    result = dg.materialize(
        [assets[role] for role in roles],
        partition_key=DAY,
        resources={"batch_backend": BatchBackendResource(base_url=batch_api)},
        instance=instance,
    )
    metadata = {
        event.asset_key.path[-1]: event.materialization.metadata
        for event in result.get_asset_materialization_events()
    }
    logs = [
        (entry.level, entry.user_message)
        for entry in instance.all_logs(result.run_id)
        if entry.dagster_event is None
    ]
    return metadata, logs


@pytest.mark.slow
def test_a_settled_day_with_another_request_is_named_in_log_and_metadata(
    tmp_path, batch_api: str
) -> None:
    spec = write_demo(tmp_path, base_url=batch_api)
    with Pipeline(spec) as pipeline:
        pipeline.run(DAY, poll_interval=0.2, timeout=60)
    data = demo_spec_data(base_url=batch_api)
    data["request"]["prompt"] = "Ticket from {channel}: {subject}\n\n{body}"
    changed = PipelineSpec.from_dict(data, base_dir=tmp_path)

    with dg.instance_for_test() as instance:
        metadata, logs = materialize(spec, ["requests"], batch_api, instance)
        (built,) = [message for _, message in logs if "requests in" in message]
        assert "reused its settled build" in built and REBUILD_TAG in built
        assert "in progress" not in built
        assert SPEC_CHANGED not in metadata["requests"]

        metadata, logs = materialize(changed, ["requests", "results"], batch_api, instance)
    notes = [message for level, message in logs if "another request" in message]
    assert len(notes) == 2  # one line from each asset
    assert all(level == logging.WARNING for level, message in logs if message in notes)
    assert all("--rebuild" in note and f"{REBUILD_TAG}=true" in note for note in notes)
    for role in ("requests", "results"):
        assert metadata[role][SPEC_CHANGED].value == notes[0]
