"""The Anthropic backend's own parts: ids that fit Anthropic's rule and lead back to rows,
results read as output lines, and finding a batch that a crashed process created."""

from __future__ import annotations

import io
import re

import orjson
import pyarrow as pa
import pytest

from batch_pipeline.core.backends._anthropic_ids import (
    pipeline_ids,
    request_id,
    submission_tag,
    tag_of,
)
from batch_pipeline.core.backends.anthropic import result_as_output_line
from batch_pipeline.core.backends.base import TransientBackendError
from batch_pipeline.core.batch_identity import SUBMISSION_METADATA_KEY
from batch_pipeline.core.outcomes import classify
from batch_pipeline.core.spec import BackendSpec
from batch_pipeline.core.types import RowStatus

ANTHROPIC_ID = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")


def test_request_ids_fit_anthropics_rule_and_lead_back_to_the_rows() -> None:
    tag = submission_tag("a_pipeline_named_at_length:2026-11-20:g12:a20:s99999#20")
    ids = [request_id(tag, line) for line in (0, 7, 99_999)]
    assert all(ANTHROPIC_ID.match(custom_id) for custom_id in ids)
    assert {tag_of(custom_id) for custom_id in ids} == {tag}
    expected = pa.array([f"2026-11-20:row{i}" for i in range(100_000)])
    back = pipeline_ids(pa.array([*ids, "someone-elses", None]), expected).to_pylist()
    assert back == [
        "2026-11-20:row0",
        "2026-11-20:row7",
        "2026-11-20:row99999",
        "someone-elses",
        None,
    ]
    assert submission_tag("p:d:g1:a1:s00000#1") != submission_tag("p:d:g1:a1:s00000#2")


def _errored(error_type: str) -> dict:
    return {"type": "errored", "error": {"type": "error", "error": {"type": error_type}}}


@pytest.mark.parametrize(
    ("result", "status", "code", "retryable"),
    [
        ({"type": "succeeded", "message": {"content": []}}, 200, None, False),
        (_errored("overloaded_error"), 529, None, True),
        (_errored("api_error"), 500, None, True),
        (_errored("rate_limit_error"), 429, None, True),
        (_errored("invalid_request_error"), 400, None, False),
        ({"type": "expired"}, None, "batch_expired", True),
        ({"type": "canceled"}, None, "batch_cancelled", False),
    ],
)
def test_results_become_output_lines_judged_like_openais(
    result: dict, status: int | None, code: str | None, retryable: bool
) -> None:
    line = orjson.loads(result_as_output_line(orjson.dumps({"custom_id": "t-1", "result": result})))
    assert line["custom_id"] == "t-1"
    got_status = line["response"]["status_code"] if line["response"] else None
    got_code = line["error"]["code"] if line["error"] else None
    assert (got_status, got_code) == (status, code)
    assert classify(got_status, got_code)[1] is retryable
    if result["type"] == "canceled":
        assert classify(got_status, got_code)[0] is RowStatus.CANCELLED


def test_an_openai_key_is_not_sent_to_anthropic() -> None:
    from batch_pipeline.core.backends.openai import key_variable

    assert key_variable(BackendSpec(provider="anthropic")) == "ANTHROPIC_API_KEY"
    assert key_variable(BackendSpec(provider="anthropic", api_key_env="MINE")) == "MINE"


@pytest.mark.slow
def test_a_batch_made_before_a_crash_is_found_only_once_its_results_say_so(
    tmp_path: object,
) -> None:
    from batch_pipeline.core.backends.openai import make_backend
    from batch_pipeline.local_api.server import run_local_batch_api

    line = {"custom_id": "x", "method": "POST", "url": "/v1/messages", "body": {
        "model": "claude-haiku-4-5", "max_tokens": 5,
        "messages": [{"role": "user", "content": "<<hang>>"}]}}  # fmt: skip
    key = "pipe:2026-11-20:g1:a1:s00000#1"
    with run_local_batch_api(tmp_path / "state", completion_window_seconds=60) as url:  # type: ignore[operator]
        spec = BackendSpec(provider="anthropic", base_url=url, api_key_env="K")
        crashed = make_backend(spec, env={"K": "k"})
        staged = crashed.upload_file(io.BytesIO(orjson.dumps(line) + b"\n"), "shard.jsonl")
        made = crashed.create_batch(
            input_file_id=staged.id,
            endpoint="/v1/messages",
            metadata={SUBMISSION_METADATA_KEY: key},
        )
        takeover = make_backend(spec, env={"K": "k"})
        find = {"metadata_key": SUBMISSION_METADATA_KEY, "created_after": 0, "requests": 1}
        with pytest.raises(TransientBackendError, match="has not ended"):
            takeover.find_batch(metadata_value=key, **find)  # type: ignore[call-arg]
        assert takeover.find_batch(metadata_value=key, known={made.id}, **find) is None  # type: ignore[call-arg]
        assert takeover.find_batch(metadata_value=key, **{**find, "requests": 2}) is None  # type: ignore[call-arg]
        takeover.cancel_batch(made.id)
        for _ in range(100):
            if takeover.retrieve_batch(made.id).status.is_terminal:
                break
        found = takeover.find_batch(metadata_value=key, **find)  # type: ignore[call-arg]
        assert found is not None and found.id == made.id
        other = "pipe:2026-11-20:g1:a1:s00000#2"
        assert takeover.find_batch(metadata_value=other, **find) is None  # type: ignore[call-arg]
