"""A pipeline in the asset graph: the source assets upstream of `requests`, their partitions
lined up with the pipeline's, the judge pipeline chained after the triage results, and
automation on source updates."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dagster as dg
import pandas as pd
import polars as pl
import pyarrow as pa
import pytest

from batch_pipeline.core.spec import PipelineSpec, SpecError
from batch_pipeline.dagster import build_batch_pipeline_defs
from batch_pipeline.demo import DEMO_DAYS, DEMO_PIPELINE, JUDGE_PIPELINE
from batch_pipeline_tests.conftest import ticket_spec

DAY = "2026-11-18"
DAILY = dg.DailyPartitionsDefinition(start_date="2026-11-01")


@dg.asset(partitions_def=DAILY)
def daily_tickets() -> pd.DataFrame:
    return pd.DataFrame()


@dg.asset
def all_tickets() -> pd.DataFrame:
    return pd.DataFrame()


crm = dg.AssetSpec(["raw", "crm"])  # an external table, declared for lineage


def pipeline_spec(tmp_path: Path, **source: Any) -> PipelineSpec:
    data = ticket_spec(tmp_path, "http://127.0.0.1:1/v1", partitions={"start": "2026-11-01"})
    data["source"] = {"key": "ticket_id", "partition_column": "created_at", **source}
    return PipelineSpec.from_dict(data, base_dir=tmp_path)


def graph_of(*specs: PipelineSpec, assets: list[Any]) -> dg.AssetGraph:
    defs = dg.Definitions.merge(
        dg.Definitions(assets=assets), *(build_batch_pipeline_defs(spec=s) for s in specs)
    )
    return defs.resolve_asset_graph()


def test_every_source_key_is_a_dependency_of_requests(tmp_path) -> None:
    spec = pipeline_spec(
        tmp_path,
        path="tickets.parquet",
        asset_key=[dg.AssetKey("daily_tickets"), dg.AssetSpec("all_tickets"), "raw/crm"],
    )
    graph = graph_of(spec, assets=[daily_tickets, all_tickets, crm])
    parents = graph.get(dg.AssetKey(["tickets", "requests"])).parent_keys
    assert parents == {
        dg.AssetKey("daily_tickets"),
        dg.AssetKey("all_tickets"),
        dg.AssetKey(["raw", "crm"]),
    }
    # A file source reads its rows itself: results depend on its batches only.
    assert graph.get(dg.AssetKey(["tickets", "results"])).parent_keys == {
        dg.AssetKey(["tickets", "batches"])
    }


def test_a_daily_source_maps_day_to_day_and_an_unpartitioned_one_to_every_day(tmp_path) -> None:
    daily = pipeline_spec(tmp_path, asset_key="daily_tickets")
    whole = pipeline_spec(tmp_path, asset_key="all_tickets").model_copy(update={"name": "whole"})
    graph = graph_of(daily, whole, assets=[daily_tickets, all_tickets])
    requests = dg.AssetKey(["tickets", "requests"])
    mapping = graph.get_partition_mapping(requests, dg.AssetKey("daily_tickets"))
    mapped = mapping.get_upstream_mapped_partitions_result_for_partitions(
        DAILY.subset_with_partition_keys([DAY]), DAILY, DAILY
    )
    assert list(mapped.partitions_subset.get_partition_keys()) == [DAY]
    # The rows come from the asset: the results step (which joins every source row with its
    # answer) loads them too, through the same mapping.
    results_parents = graph.get(dg.AssetKey(["tickets", "results"])).parent_keys
    assert dg.AssetKey("daily_tickets") in results_parents
    assert not graph.get(dg.AssetKey("all_tickets")).is_partitioned
    assert graph.get(dg.AssetKey(["whole", "requests"])).parent_keys == {dg.AssetKey("all_tickets")}


def test_the_demo_judges_the_triage_answers_downstream_of_its_results(
    tmp_path, monkeypatch
) -> None:
    monkeypatch.setenv("BATCH_PIPELINE_DEMO_DIR", str(tmp_path / "ui"))
    from batch_pipeline.definitions import ui_demo_defs

    defs = ui_demo_defs()
    graph = defs.resolve_asset_graph()
    triage_results = dg.AssetKey([DEMO_PIPELINE, "results"])
    assert graph.get(dg.AssetKey([JUDGE_PIPELINE, "requests"])).parent_keys == {triage_results}
    assert triage_results in graph.get(dg.AssetKey([JUDGE_PIPELINE, "results"])).parent_keys
    assert (
        graph.get_partition_mapping(dg.AssetKey([JUDGE_PIPELINE, "requests"]), triage_results)
        == dg.TimeWindowPartitionMapping()
    )
    sensors = {sensor.name for sensor in defs.sensors or []}
    assert {f"{DEMO_PIPELINE}_batch_sensor", f"{JUDGE_PIPELINE}_batch_sensor"} <= sensors
    assert not (tmp_path / "ui").exists()
    assert DEMO_DAYS[0] in graph.get(triage_results).partitions_def.get_partition_keys()


@pytest.mark.parametrize("path", [None, "tickets.parquet"])
def test_a_source_key_naming_no_asset_stops_the_load_naming_it(tmp_path, path) -> None:
    """Whether the rows come from the asset or it only draws the lineage."""
    spec = pipeline_spec(tmp_path, asset_key="raw/tikets", path=path)
    with pytest.raises(dg.DagsterInvalidDefinitionError, match=r"raw.*tikets"):
        graph_of(spec, assets=[daily_tickets])


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ({}, "give source.path or source.sql, or name the one asset"),
        ({"asset_key": ["a", "b"]}, "name the one asset the rows come from"),
        ({"asset_key": 7}, "7 is not an asset key"),
        ({"path": "t.parquet", "automation": "eager"}, "name it in source.asset_key"),
    ],
)
def test_a_source_without_rows_or_with_a_bad_key_is_refused(tmp_path, source, message) -> None:
    with pytest.raises(SpecError, match=message):
        pipeline_spec(tmp_path, **source)


def test_automation_materializes_requests_and_batches_when_the_source_updates(tmp_path) -> None:
    eager = pipeline_spec(tmp_path, asset_key="daily_tickets", automation="eager")
    graph = graph_of(eager, assets=[daily_tickets])
    conditions = {
        role: graph.get(dg.AssetKey(["tickets", role])).automation_condition
        for role in ("requests", "batches", "results")
    }
    assert conditions == {
        "requests": dg.AutomationCondition.eager(),
        "batches": dg.AutomationCondition.eager(),
        "results": None,
    }
    on_cron = pipeline_spec(tmp_path, asset_key="daily_tickets", automation="on_cron")
    graph = graph_of(on_cron, assets=[daily_tickets])
    condition = graph.get(dg.AssetKey(["tickets", "requests"])).automation_condition
    assert condition == dg.AutomationCondition.on_cron(on_cron.schedule.cron, "UTC")
    plain = pipeline_spec(tmp_path, asset_key="daily_tickets")
    graph = graph_of(plain, assets=[daily_tickets])
    assert graph.get(dg.AssetKey(["tickets", "requests"])).automation_condition is None


def test_a_component_names_its_source_asset_as_yaml_writes_it() -> None:
    from batch_pipeline.dagster import BatchPipelineComponent

    component = BatchPipelineComponent.from_attributes_dict(
        attributes={
            "name": "tickets",
            "source": {
                "asset_key": "raw/tickets",
                "key": "ticket_id",
                "partition_column": "created_at",
                "automation": "eager",
            },
            "request": {"model": "gpt-4o-mini", "prompt": "{body}"},
            "partitions": {"start": "2026-11-01"},
        }
    )
    defs = component.build_defs(dg.ComponentTree.for_test().load_context)
    requests = next(
        asset
        for asset in defs.assets or []
        if isinstance(asset, dg.AssetsDefinition)
        and dg.AssetKey(["tickets", "requests"]) in asset.keys
    )
    assert dg.AssetKey(["raw", "tickets"]) in requests.dependency_keys
    assert requests.automation_conditions_by_key[requests.key] == dg.AutomationCondition.eager()


def test_the_results_io_manager_reads_the_days_a_downstream_asset_maps_to(
    tmp_path, memory_api
) -> None:
    from batch_pipeline.dagster.results_io import BatchResultsIOManager

    spec = pipeline_spec(tmp_path, asset_key="daily_tickets")
    rows = pa.table(
        {
            "ticket_id": ["a", "b", "c"],
            "created_at": [DAY, DAY, "2026-11-19"],
            "subject": ["s"] * 3,
            "body": ["one", "two", "three"],
        }
    )
    for day in (DAY, "2026-11-19"):
        memory_api.pipeline(spec, dataframe=rows).run(day, poll_interval=1)
    manager = BatchResultsIOManager(spec)

    def load(first: str, last: str, **metadata: str) -> Any:
        return manager.load_input(
            dg.build_input_context(
                name="answers",
                asset_key=dg.AssetKey(["tickets", "results"]),
                asset_partition_key_range=dg.PartitionKeyRange(first, last),
                asset_partitions_def=DAILY,
                definition_metadata=metadata,
            )
        )

    one_day = load(DAY, DAY)
    assert isinstance(one_day, pd.DataFrame)
    assert sorted(one_day["ticket_id"]) == ["a", "b"]
    assert set(one_day["status"]) == {"succeeded"}
    both = load(DAY, "2026-11-19", format="arrow")
    assert isinstance(both, pa.Table) and sorted(both["ticket_id"].to_pylist()) == ["a", "b", "c"]
    as_polars = load(DAY, "2026-11-19", format="polars")
    assert isinstance(as_polars, pl.DataFrame)
    assert sorted(as_polars["ticket_id"].to_list()) == ["a", "b", "c"]
    with pytest.raises(FileNotFoundError, match="for 2026-11-20: materialize its results"):
        load("2026-11-20", "2026-11-20")
    with pytest.raises(ValueError, match="format 'excel' is not one of pandas, arrow, polars"):
        load(DAY, DAY, format="excel")
