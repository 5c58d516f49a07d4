"""A settled day run again with another request in the spec says so, once, naming the rebuild;
the fingerprint that tells it is kept by the ledger, old ledgers included."""

from __future__ import annotations

from datetime import datetime

import pytest
import sqlalchemy as sa
import yaml

from batch_pipeline.cli import main as cli_main
from batch_pipeline.core.ledger import SCHEMA_VERSION
from batch_pipeline.core.spec import PipelineSpec, RequestSpec
from batch_pipeline_tests.batch_apis import BatchApi, on_both_apis
from batch_pipeline_tests.conftest import ticket_spec, write_tickets

DAY = "2026-11-20"
NEW_PROMPT = "Ticket: {subject}\n\n{body}"


def tickets(tmp_path) -> None:
    at = datetime(2026, 11, 20, 9)
    rows = [
        {"ticket_id": f"T{i}", "subject": f"S{i}", "body": f"b{i}", "created_at": at}
        for i in range(3)
    ]
    write_tickets(tmp_path / "tickets.parquet", rows)


def spec_of(tmp_path, base_url: str, prompt: str | None = None, **overrides) -> PipelineSpec:
    data = ticket_spec(tmp_path, base_url, **overrides)
    if prompt is not None:
        data["request"]["prompt"] = prompt
    return PipelineSpec.from_dict(data, base_dir=tmp_path)


def run_day(api: BatchApi, spec: PipelineSpec, **options):
    with api.pipeline(spec) as pipeline:
        return pipeline.run(DAY, poll_interval=0.2, timeout=60, **options)


def test_the_request_fingerprint_follows_what_shapes_the_request_body() -> None:
    base = {"model": "gpt-4o-mini", "prompt": "{body}", "system": "Label it."}
    fingerprint = RequestSpec(**base).fingerprint
    assert len(fingerprint) == 64 and int(fingerprint, 16) >= 0
    # Defaults written out, and what does not reach the body, change nothing.
    same = RequestSpec(**base, endpoint="/v1/chat/completions", params={}, context_window=9000)
    assert same.fingerprint == fingerprint
    changed = [
        {"endpoint": "/v1/responses"},
        {"model": "gpt-4o"},
        {"system": "Label it!"},
        {"prompt": "{body} "},
        {"params": {"temperature": 0}},
    ]
    for change in changed:
        assert RequestSpec(**{**base, **change}).fingerprint != fingerprint, change


@on_both_apis
def test_a_settled_day_run_with_another_request_says_so_and_a_rebuild_clears_it(
    tmp_path, api
) -> None:
    tickets(tmp_path)
    first = run_day(api, spec_of(tmp_path, api.base_url))
    assert first.spec_changed is None and not first.already_collected
    assert run_day(api, spec_of(tmp_path, api.base_url)).spec_changed is None  # same: silent

    changed = spec_of(tmp_path, api.base_url, NEW_PROMPT)
    again = run_day(api, changed)
    assert again.already_collected and again.path == first.path
    assert again.spec_changed is not None and "\n" not in again.spec_changed
    assert "another request" in again.spec_changed
    assert "--rebuild" in again.spec_changed
    assert "batch_pipeline/rebuild=true" in again.spec_changed
    with api.pipeline(changed) as pipeline:  # a reused build says it too
        assert pipeline.build_requests(DAY).spec_changed == again.spec_changed

    rebuilt = run_day(api, changed, rebuild=True)
    assert rebuilt.generation == 2 and rebuilt.spec_changed is None
    with api.pipeline(changed) as pipeline:
        record = pipeline.get_partition(DAY)
        assert record.request_fingerprint == changed.request.fingerprint
        assert "spec_changed" not in record.summary  # a call's note, not a fact of the day
    assert run_day(api, changed).spec_changed is None


@pytest.mark.slow
def test_the_cli_names_the_changed_request_and_the_rebuild_in_one_line(
    tmp_path, batch_api, capsys
) -> None:
    tickets(tmp_path)
    path = tmp_path / "pipeline.yaml"
    data = ticket_spec(tmp_path, batch_api)
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    command = ["run", str(path), "--partition", DAY, "--poll-interval", "0.2", "--timeout", "60"]
    assert cli_main(command) == 0
    assert cli_main(command) == 0
    unchanged = capsys.readouterr().out
    assert "already settled" in unchanged and "another request" not in unchanged

    data["request"]["model"] = "gpt-4o"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    assert cli_main(command) == 0
    out = capsys.readouterr().out
    assert "already settled" in out
    (note,) = [line for line in out.splitlines() if "another request" in line]
    assert note.startswith("note: ") and "--rebuild" in note


@pytest.mark.parametrize(
    "database",
    ["sqlite", pytest.param("postgresql", marks=[pytest.mark.postgres, pytest.mark.slow])],
)
def test_a_ledger_without_fingerprints_gains_the_column_and_keeps_working(
    tmp_path, api, database, request
) -> None:
    """A ledger of schema version 3 (no `request_fingerprint`) holding a settled day opens:
    the column is added, that day is run again without a false note, and a rebuild keeps the
    fingerprint of its request."""
    url = (
        request.getfixturevalue("own_postgres_database")
        if database == "postgresql"
        else f"sqlite:///{tmp_path / 'ledger.db'}"
    )
    tickets(tmp_path)
    spec = spec_of(tmp_path, api.base_url, ledger={"url": url})
    first = run_day(api, spec)
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text("ALTER TABLE bp_partitions DROP COLUMN request_fingerprint"))
        conn.execute(sa.text("UPDATE bp_schema SET version = 3"))

    changed = spec_of(tmp_path, api.base_url, NEW_PROMPT, ledger={"url": url})
    again = run_day(api, changed)  # unknown fingerprint: nothing to say
    assert again.already_collected and again.path == first.path and again.spec_changed is None
    rebuilt = run_day(api, changed, rebuild=True)
    assert rebuilt.generation == 2
    with engine.begin() as conn:
        assert conn.execute(sa.text("SELECT version FROM bp_schema")).scalar() == SCHEMA_VERSION
        stored = conn.execute(sa.text("SELECT request_fingerprint FROM bp_partitions")).scalar()
    engine.dispose()
    assert stored == changed.request.fingerprint
    assert run_day(api, spec).spec_changed is not None  # back to the old prompt: said
