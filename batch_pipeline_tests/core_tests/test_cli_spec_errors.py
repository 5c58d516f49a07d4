"""`batch-pipeline run` over a spec that cannot work: exit 1 with an error naming the cause."""

from __future__ import annotations

import pytest
import yaml

from batch_pipeline.cli import EXIT_ERROR
from batch_pipeline.cli import main as cli_main
from batch_pipeline_tests.conftest import ticket_spec, write_tickets

DAY = "2026-11-20"


def run_cli(tmp_path, spec: dict) -> int:
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(spec), encoding="utf-8")
    return cli_main(["run", str(path), "--partition", DAY, "--timeout", "30"])


def test_a_partition_column_of_no_day_fails_the_run_naming_it_and_a_value(tmp_path, capsys) -> None:
    rows = [{"ticket_id": "T1", "subject": "s", "body": "b", "state": "open"}]
    write_tickets(tmp_path / "tickets.parquet", rows)
    spec = ticket_spec(tmp_path, "http://127.0.0.1:9/v1")
    spec["source"]["partition_column"] = "state"
    assert run_cli(tmp_path, spec) == EXIT_ERROR
    error = capsys.readouterr().err
    assert "source.partition_column" in error and "'state'" in error and "'open'" in error


def test_a_local_key_variable_that_is_not_set_is_named(
    tmp_path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("BP_LOCAL_SERVICE_KEY", raising=False)
    rows = [{"ticket_id": "T1", "subject": "s", "body": "b", "created_at": f"{DAY} 09:00"}]
    write_tickets(tmp_path / "tickets.parquet", rows)
    spec = ticket_spec(tmp_path, "http://127.0.0.1:9/v1")
    spec["backend"]["api_key_env"] = "BP_LOCAL_SERVICE_KEY"
    assert run_cli(tmp_path, spec) == EXIT_ERROR
    assert "BP_LOCAL_SERVICE_KEY is not set" in capsys.readouterr().err
