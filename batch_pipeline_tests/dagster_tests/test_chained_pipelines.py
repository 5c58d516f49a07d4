"""Pipelines chained in the asset graph, through Dagster and the local Batch API: a Python
asset's DataFrame feeds a pipeline with no path or query, a judge pipeline grades its
answers from its results asset, and downstream assets receive the results of their day."""

from pathlib import Path
from typing import Any

import dagster as dg
import pandas as pd
import pyarrow as pa
import pytest

from batch_pipeline.core.pipeline import load_pipeline, read_results
from batch_pipeline.core.spec import PipelineSpec
from batch_pipeline.dagster import build_batch_pipeline_defs
from batch_pipeline.demo import QUIET_RUN_CONFIG, execute_run_request, sensor_run_requests
from batch_pipeline_tests.conftest import ticket_spec

pytestmark = pytest.mark.slow

DAY, OTHER_DAY = "2026-11-18", "2026-11-19"
ROWS = 4
DAILY = dg.DailyPartitionsDefinition(start_date="2026-11-01")


@dg.asset(partitions_def=DAILY)
def new_tickets(context: dg.AssetExecutionContext) -> pd.DataFrame:
    day = context.partition_key
    return pd.DataFrame(
        {
            "ticket_id": [f"{day}-{n}" for n in range(ROWS)],
            "created_at": [day] * ROWS,
            "subject": ["Late parcel", "Refund", "Login", "Crash"][:ROWS],
            "body": [f"ticket {n} of {day}" for n in range(ROWS)],
        }
    )


@dg.asset(partitions_def=DAILY, ins={"grades": dg.AssetIn(["judge", "results"])})
def graded(grades: pd.DataFrame) -> dg.MaterializeResult:
    return dg.MaterializeResult(
        metadata={
            "rows": len(grades),
            "ids": sorted(grades["ticket_id"]),
            "days": ",".join(sorted(set(grades["partition"]))),
        }
    )


@dg.asset(
    partitions_def=DAILY,
    ins={"answers": dg.AssetIn(["triage", "results"], metadata={"format": "arrow"})},
)
def answers_as_arrow(answers: pa.Table) -> dg.MaterializeResult:
    assert isinstance(answers, pa.Table)
    return dg.MaterializeResult(metadata={"rows": answers.num_rows})


def spec_of(tmp_path: Path, base_url: str, name: str, source: str, prompt: str) -> PipelineSpec:
    data = ticket_spec(tmp_path, base_url, partitions={"start": "2026-11-01"})
    data["name"] = name
    data["source"] = {"asset_key": source, "key": "ticket_id", "partition_column": "created_at"}
    data["request"]["prompt"] = prompt
    return PipelineSpec.from_dict(data, base_dir=tmp_path)


def materialize(
    defs: dg.Definitions, instance: dg.DagsterInstance, keys: list[Any], day: str = DAY
) -> dg.ExecuteInProcessResult:
    return defs.resolve_implicit_global_asset_job_def().execute_in_process(
        instance=instance,
        partition_key=day,
        asset_selection=[dg.AssetKey.from_coercible(key) for key in keys],
        run_config=QUIET_RUN_CONFIG,
        raise_on_error=False,
    )


def collect(defs: dg.Definitions, spec: PipelineSpec, instance: dg.DagsterInstance) -> None:
    """Run the results run the pipeline's sensor asks for once the day has settled."""
    (request,) = sensor_run_requests(defs, spec, instance, expected=1, timeout_seconds=60)
    assert execute_run_request(defs, request, instance).success


def test_a_python_asset_feeds_triage_and_a_judge_grades_its_answers(tmp_path, batch_api) -> None:
    triage = spec_of(tmp_path, batch_api, "triage", "new_tickets", "{subject}: {body}")
    judge = spec_of(
        tmp_path, batch_api, "judge", "triage/results", "{body}\nLabel given: {response_text}"
    )
    defs = dg.Definitions.merge(
        dg.Definitions(assets=[new_tickets, graded, answers_as_arrow]),
        build_batch_pipeline_defs(spec=triage),
        build_batch_pipeline_defs(spec=judge),
    )
    with dg.instance_for_test() as instance:
        submitted = materialize(
            defs, instance, ["new_tickets", ["triage", "requests"], ["triage", "batches"]]
        )
        assert submitted.success
        collect(defs, triage, instance)
        assert materialize(defs, instance, [["judge", "requests"], ["judge", "batches"]]).success
        collect(defs, judge, instance)
        downstream = materialize(defs, instance, ["graded", "answers_as_arrow"])
        not_collected = materialize(defs, instance, ["graded"], day=OTHER_DAY)

    ids = sorted(f"{DAY}-{n}" for n in range(ROWS))
    answers = read_results(triage)
    grades = read_results(judge)
    for results in (answers, grades):  # every row once in both
        assert sorted(results["ticket_id"]) == ids
        assert set(results["status"]) == {"succeeded"}
    # The judge was asked about the triage pipeline's own answer to each ticket.
    given = dict(zip(answers["ticket_id"], answers["response_text"], strict=True))
    for ticket, text in zip(grades["ticket_id"], grades["response_text"], strict=True):
        assert f"Label given: {given[ticket]}" in text
    assert downstream.success
    metadata = {
        event.asset_key.to_user_string(): event.step_materialization_data.materialization.metadata
        for event in downstream.get_asset_materialization_events()
    }
    assert metadata["graded"]["rows"].value == ROWS
    assert metadata["graded"]["ids"].value == ids
    assert metadata["graded"]["days"].value == DAY
    assert metadata["answers_as_arrow"]["rows"].value == ROWS
    assert not not_collected.success
    assert f"for {OTHER_DAY}: materialize its results first" in _failure(not_collected)


@dg.asset
def every_ticket() -> pa.Table:
    """An unpartitioned source, as Arrow: three rows of one day, one of the next."""
    return pa.table(
        {
            "ticket_id": ["a", "b", "c", "d"],
            "created_at": [DAY, DAY, DAY, OTHER_DAY],
            "body": ["one", "two", "three", "four"],
        }
    )


def test_an_unpartitioned_source_gives_each_day_its_own_rows(tmp_path) -> None:
    spec = spec_of(tmp_path, "http://127.0.0.1:1/v1", "tickets", "every_ticket", "{body}")
    defs = dg.Definitions.merge(
        dg.Definitions(assets=[every_ticket]), build_batch_pipeline_defs(spec=spec)
    )
    requests = dg.AssetKey(["tickets", "requests"])
    with dg.instance_for_test() as instance:
        built = {
            DAY: materialize(defs, instance, ["every_ticket", requests]),
            OTHER_DAY: materialize(defs, instance, [requests], day=OTHER_DAY),
        }
    for day, rows in ((DAY, 3), (OTHER_DAY, 1)):
        (event,) = [
            event
            for event in built[day].get_asset_materialization_events()
            if event.asset_key == requests
        ]
        metadata = event.step_materialization_data.materialization.metadata
        assert metadata["source_rows"].value == rows


@dg.asset(partitions_def=DAILY)
def ticket_list() -> list[dict[str, str]]:
    return [{"ticket_id": "a", "created_at": DAY, "subject": "s", "body": "b"}]


def test_an_upstream_loading_no_table_fails_the_build_before_anything_is_submitted(
    tmp_path,
) -> None:
    spec = spec_of(tmp_path, "http://127.0.0.1:1/v1", "tickets", "ticket_list", "{body}")
    defs = dg.Definitions.merge(
        dg.Definitions(assets=[ticket_list]), build_batch_pipeline_defs(spec=spec)
    )
    with dg.instance_for_test() as instance:
        result = materialize(
            defs, instance, ["ticket_list", ["tickets", "requests"], ["tickets", "batches"]]
        )
    assert not result.success
    message = _failure(result)
    assert "source.asset_key ticket_list" in message
    assert "is a builtins.list, not a table" in message
    with load_pipeline(spec) as pipeline:
        assert pipeline.get_partition(DAY) is None


def _failure(result: dg.ExecuteInProcessResult) -> str:
    """The messages of the run's failed step and of the errors that caused it."""
    (event,) = result.get_step_failure_events()
    error = event.step_failure_data.error
    messages = []
    while error is not None:
        messages.append(error.message)
        error = error.cause
    return "\n".join(messages)
