"""`/v1/completions` and `/v1/moderations`: their request bodies, and a day run end to end
against the local Batch API with each answer read into the results columns."""

from __future__ import annotations

from datetime import datetime

import orjson
import pandas as pd
import pyarrow as pa
import pytest

from batch_pipeline import PipelineSpec
from batch_pipeline.core.outcomes import parse_outcomes
from batch_pipeline.core.requests import RequestBuilder, estimate_request_tokens
from batch_pipeline.core.spec import SpecError
from batch_pipeline_tests.batch_apis import on_both_apis
from batch_pipeline_tests.conftest import ticket_spec, write_tickets

DAY = "2026-11-20"
COMPLETIONS = "/v1/completions"
MODERATIONS = "/v1/moderations"


def spec_for(tmp_path, endpoint: str, base_url: str = "http://127.0.0.1:9/v1", **request):
    data = ticket_spec(tmp_path, base_url, endpoint=endpoint)
    data["request"].update(request)
    return PipelineSpec.from_dict(data, base_dir=tmp_path)


@pytest.mark.parametrize(
    ("endpoint", "text_key"), [(COMPLETIONS, "prompt"), (MODERATIONS, "input")]
)
def test_the_request_body_carries_the_prompt_as_the_endpoint_takes_it(
    tmp_path, endpoint, text_key
) -> None:
    builder = RequestBuilder(spec_for(tmp_path, endpoint))
    batch = pa.record_batch({"ticket_id": ["T1"], "subject": ["Late"], "body": ["Where is it?"]})
    built = builder.build(batch, DAY)
    (line,) = [orjson.loads(line) for line in built.lines.to_pylist()]
    assert line["url"] == endpoint
    assert line["body"][text_key] == "Subject: Late\n\nWhere is it?"
    assert set(line["body"]) == {"model", text_key, *builder.spec.request.params}
    retried = estimate_request_tokens([line])  # a retry's estimate reads the same text
    assert retried.tolist() == built.estimated_input_tokens.tolist()


@pytest.mark.parametrize("endpoint", [COMPLETIONS, MODERATIONS])
def test_a_system_text_is_refused_where_the_endpoint_takes_none(tmp_path, endpoint) -> None:
    with pytest.raises(SpecError, match=f"request.system: {endpoint} takes no system text"):
        RequestBuilder(spec_for(tmp_path, endpoint, system="You label tickets."))


@on_both_apis
@pytest.mark.parametrize("endpoint", [COMPLETIONS, MODERATIONS])
def test_a_day_runs_end_to_end_and_its_answers_fill_the_results(tmp_path, api, endpoint):
    at = datetime(2026, 11, 20, 9)
    rows = [
        {"ticket_id": f"T{i}", "subject": f"Order {i}", "body": f"parcel {i}", "created_at": at}
        for i in range(3)
    ]
    rows.append({"ticket_id": "BAD", "subject": "Bad", "body": "<<fail:400>>", "created_at": at})
    write_tickets(tmp_path / "tickets.parquet", rows)
    with api.pipeline(spec_for(tmp_path, endpoint, api.base_url)) as pipeline:
        summary = pipeline.run(DAY, poll_interval=0.2, timeout=60)
    results = pd.read_parquet(summary.path).set_index("ticket_id")

    assert summary.counts["succeeded"] == 3 and summary.counts["failed"] == 1
    assert results.loc["BAD", "http_status"] == 400
    good = results[results["status"] == "succeeded"]
    if endpoint == COMPLETIONS:  # the echo responder answers with the prompt
        assert list(good["response_text"]) == [
            f"Subject: Order {i}\n\nparcel {i}" for i in range(3)
        ]
        assert (good["input_tokens"] > 0).all() and (good["output_tokens"] > 0).all()
    else:
        assert set(good["response_text"]) == {"not flagged"}
        assert all("results" in orjson.loads(body) for body in good["response_json"])


def test_a_flagged_moderation_names_its_categories(tmp_path) -> None:
    verdicts = {
        "a": {"flagged": True, "categories": {"harassment": True, "violence": True, "hate": False}},
        "b": {"flagged": False, "categories": {"harassment": False}},
    }
    lines = [
        {
            "id": f"r{key}",
            "custom_id": key,
            "response": {
                "status_code": 200,
                "body": {
                    "id": f"modr-{key}",
                    "model": "omni-moderation-latest",
                    "results": [verdict],
                },
            },
            "error": None,
        }
        for key, verdict in verdicts.items()
    ]
    path = tmp_path / "output.jsonl"
    path.write_bytes(b"".join(orjson.dumps(line) + b"\n" for line in lines))
    table = parse_outcomes(path, None, endpoint=MODERATIONS)
    texts = dict(
        zip(table["custom_id"].to_pylist(), table["response_text"].to_pylist(), strict=True)
    )
    assert texts == {"a": "flagged: harassment, violence", "b": "not flagged"}
    assert set(table["status"].to_pylist()) == {"succeeded"}
