"""The proxy responder against a second, tiny OpenAI-compatible server started by the test."""

from __future__ import annotations

import logging
import socket
import time
from pathlib import Path
from typing import Any

import pytest
from openai import OpenAI

from batch_pipeline_tests.local_api_tests.conftest import StartApi
from batch_pipeline_tests.local_api_tests.helpers import (
    MODEL,
    by_custom_id,
    chat_line,
    read_lines,
    submit,
    wait_for,
    wait_for_completed,
    wait_until,
)
from batch_pipeline_tests.local_api_tests.upstream_server import Upstream, UpstreamServer

pytestmark = pytest.mark.slow


def proxy_client(start_api: StartApi, options: dict[str, Any], **more: Any) -> OpenAI:
    """An SDK client of a local Batch API started with the proxy options (and `more`)."""
    return OpenAI(base_url=start_api(**{**options, **more}), api_key="k", max_retries=0)


def batch_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The warnings (and worse) the service logged."""
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno >= logging.WARNING and r.name.startswith("batch_pipeline")
    ]


def test_proxy_forwards_and_retries_transient_failures(
    start_api: StartApi, upstream: Upstream, proxy_options: dict[str, Any]
) -> None:
    client = proxy_client(start_api, proxy_options)
    batch = wait_for(
        client,
        submit(
            client,
            [
                chat_line("plain", "hello"),
                chat_line("flaky", "flaky once"),
                chat_line("busy", "busy once"),
                chat_line("broken", "broken always"),
                chat_line("invalid", "invalid request"),
            ],
        ).id,
    )

    assert batch.status == "completed"
    assert batch.request_counts is not None
    assert (batch.request_counts.completed, batch.request_counts.failed) == (3, 2)
    results = by_custom_id(read_lines(client, batch.output_file_id))
    assert set(results) == {"plain", "flaky", "busy"}  # the answers that succeeded
    for cid, text in (("plain", "hello"), ("flaky", "flaky once"), ("busy", "busy once")):
        response = results[cid]["response"]
        assert response["status_code"] == 200
        assert response["body"]["choices"][0]["message"]["content"] == f"upstream: {text}"
        assert response["body"]["model"] == MODEL
    assert upstream.calls["flaky once"] == 2 and upstream.calls["busy once"] == 2  # retried
    errors = by_custom_id(read_lines(client, batch.error_file_id))
    assert errors["broken"]["response"]["status_code"] == 500  # final answer kept
    assert errors["broken"]["response"]["body"]["error"]["message"] == "always down"
    assert upstream.calls["broken always"] == 4  # first try + 3 retries
    assert errors["invalid"]["response"]["status_code"] == 400
    assert errors["invalid"]["error"] is None
    assert upstream.calls["invalid request"] == 1  # a 400 is not retried
    assert batch.usage is not None and batch.usage.input_tokens == 3 * 7


def test_each_line_keeps_the_upstreams_request_id(
    start_api: StartApi, upstream: Upstream, proxy_options: dict[str, Any]
) -> None:
    client = proxy_client(start_api, proxy_options)
    lines = [chat_line("a", "first"), chat_line("b", "second"), chat_line("c", "invalid one")]
    batch = wait_for(client, submit(client, lines).id)
    answered = read_lines(client, batch.output_file_id) + read_lines(client, batch.error_file_id)
    ids = {line["custom_id"]: line["response"]["request_id"] for line in answered}
    assert ids == {
        "a": upstream.request_ids["first"],
        "b": upstream.request_ids["second"],
        "c": upstream.request_ids["invalid one"],
    }


def test_fault_triggers_are_plain_text_to_the_proxy(
    start_api: StartApi, upstream: Upstream, proxy_options: dict[str, Any]
) -> None:
    client = proxy_client(start_api, proxy_options)
    texts = {
        "fail": "Error <<fail:500>> in my app",
        "hang": "it says <<hang>>",
        "slow": "<<slow:9>>",
    }
    started = time.monotonic()
    batch = wait_for(client, submit(client, [chat_line(k, v) for k, v in texts.items()]).id)
    assert batch.status == "completed" and time.monotonic() - started < 9
    output = by_custom_id(read_lines(client, batch.output_file_id))
    for cid, text in texts.items():
        assert output[cid]["response"]["body"]["choices"][0]["message"]["content"] == (
            f"upstream: {text}"
        )
        assert upstream.calls[text] == 1


def test_fault_triggers_in_proxy_mode_only_when_asked(
    start_api: StartApi, upstream: Upstream, proxy_options: dict[str, Any]
) -> None:
    client = proxy_client(start_api, proxy_options, fault_triggers=True)
    batch = wait_for(client, submit(client, [chat_line("fault", "<<fail:429>>")]).id)
    assert read_lines(client, batch.error_file_id)[0]["response"]["status_code"] == 429
    assert "<<fail:429>>" not in upstream.calls  # answered locally


def test_proxy_keeps_concurrency_requests_in_flight(
    start_api: StartApi, upstream: Upstream, proxy_options: dict[str, Any]
) -> None:
    upstream.delay = 0.15
    client = proxy_client(start_api, proxy_options)
    started = time.monotonic()
    batch = wait_for(client, submit(client, [chat_line(f"r{i}", f"q{i}") for i in range(16)]).id)
    assert batch.status == "completed"
    assert upstream.max_in_flight == 4  # the `concurrency` option
    assert time.monotonic() - started < 16 * 0.15  # not one at a time


def test_an_unreachable_upstream_holds_requests_until_the_window_ends(
    start_api: StartApi, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}"  # nothing listens here
    url = start_api(
        responder="proxy",
        upstream_url=dead.replace("//", "//user:sk-in-url@") + "/v1?key=sk-in-query",
        upstream_max_retries=1,
        upstream_backoff_seconds=0.01,
        completion_window_seconds=1.5,
    )
    client = OpenAI(base_url=url, api_key="k", max_retries=0)
    lines = [chat_line(f"r{i}", "hi") for i in range(20)]
    batch = wait_for(client, submit(client, lines).id, timeout=10)
    assert batch.status == "expired" and batch.output_file_id is None
    errors = read_lines(client, batch.error_file_id)
    assert {e["error"]["code"] for e in errors} == {"batch_expired"}  # retryable, not failed
    assert len(errors) == 20
    warnings = batch_warnings(caplog)
    assert len(warnings) == 1 and f"{dead}/v1 " in warnings[0]  # once, with the URL
    assert "sk-in-" not in caplog.text  # but not its secrets


def test_a_request_that_keeps_timing_out_ends_upstream_unavailable(
    start_api: StartApi, upstream: Upstream, proxy_options: dict[str, Any]
) -> None:
    upstream.sleepy_seconds = 2.0
    client = proxy_client(
        start_api, proxy_options, upstream_timeout_seconds=0.3, upstream_max_retries=0
    )
    batch = wait_for(client, submit(client, [chat_line("s", "sleepy"), chat_line("a", "hi")]).id)
    error = read_lines(client, batch.error_file_id)[0]
    assert error["custom_id"] == "s" and error["error"]["code"] == "upstream_unavailable"
    assert read_lines(client, batch.output_file_id)[0]["custom_id"] == "a"


@pytest.mark.slow
@pytest.mark.parametrize("outage_seconds", [30.0])
def test_an_upstream_outage_mid_batch_loses_no_row(
    start_api: StartApi,
    upstream_server: UpstreamServer,
    proxy_options: dict[str, Any],
    caplog: pytest.LogCaptureFixture,
    outage_seconds: float,
) -> None:
    caplog.set_level(logging.WARNING)
    upstream = upstream_server.state
    upstream.delay = 0.02
    client = proxy_client(start_api, proxy_options, completion_window_seconds=outage_seconds + 60)
    rows = 1000
    batch = submit(client, [chat_line(f"r{i}", f"q{i}") for i in range(rows)])
    wait_until(lambda: sum(upstream.calls.values()) >= 100)

    upstream_server.stop()
    time.sleep(outage_seconds)
    during = client.batches.retrieve(batch.id)
    assert during.status == "in_progress"
    assert during.request_counts is not None and during.request_counts.failed == 0
    upstream_server.start()

    done = wait_for(client, batch.id, timeout=60)
    assert done.status == "completed" and done.error_file_id is None
    assert done.request_counts is not None
    assert (done.request_counts.completed, done.request_counts.failed) == (rows, 0)
    output = by_custom_id(read_lines(client, done.output_file_id))
    assert set(output) == {f"r{i}" for i in range(rows)}
    assert {line["response"]["status_code"] for line in output.values()} == {200}
    warnings = batch_warnings(caplog)
    assert len(warnings) == 1 and upstream.url in warnings[0]


def test_a_cancel_keeps_the_answers_already_asked_for(
    start_api: StartApi, upstream: Upstream, proxy_options: dict[str, Any]
) -> None:
    upstream.delay = 1.0
    client = proxy_client(start_api, proxy_options)
    batch = submit(client, [chat_line(f"r{i}", f"q{i}") for i in range(8)])
    wait_until(lambda: upstream.in_flight == 4)
    client.batches.cancel(batch.id)
    done = wait_for(client, batch.id)
    assert done.status == "cancelled"
    assert sum(upstream.calls.values()) == 4  # no request sent after the cancel
    output = by_custom_id(read_lines(client, done.output_file_id))
    assert len(output) == 4  # the four in flight, paid for, are kept
    errors = read_lines(client, done.error_file_id)
    assert len(errors) == 4 and {e["error"]["code"] for e in errors} == {"batch_cancelled"}


def test_answers_later_than_the_drain_are_dropped_and_counted(
    start_api: StartApi,
    upstream: Upstream,
    proxy_options: dict[str, Any],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING)
    upstream.delay = 2.0
    client = proxy_client(start_api, proxy_options, drain_seconds=0.2)
    batch = submit(client, [chat_line(f"r{i}", f"q{i}") for i in range(3)])
    wait_until(lambda: upstream.in_flight == 3)
    client.batches.cancel(batch.id)
    done = wait_for(client, batch.id)
    assert done.status == "cancelled" and done.output_file_id is None
    assert [w for w in batch_warnings(caplog) if "3 request(s)" in w and batch.id in w]


def test_a_restart_waits_for_answers_in_flight_instead_of_sending_them_again(
    start_api: StartApi, upstream: Upstream, proxy_options: dict[str, Any], tmp_path: Path
) -> None:
    upstream.delay = 1.0
    state = tmp_path / "proxy-state"
    client = proxy_client(start_api, proxy_options, state_dir=state)
    batch = submit(client, [chat_line(f"r{i}", f"q{i}") for i in range(4)])
    wait_until(lambda: upstream.in_flight == 4)
    client.close()
    start_api.stop_all()

    client = proxy_client(start_api, proxy_options, state_dir=state)
    done = wait_for(client, batch.id)
    assert done.status == "completed"
    assert len(read_lines(client, done.output_file_id)) == 4
    assert all(upstream.calls[f"q{i}"] == 1 for i in range(4))


def test_proxy_restart_does_not_resend_finished_requests(
    start_api: StartApi, upstream: Upstream, proxy_options: dict[str, Any], tmp_path: Path
) -> None:
    state = tmp_path / "proxy-state"
    options = {**proxy_options, "state_dir": state, "fault_triggers": True}
    client = proxy_client(start_api, options)
    lines = [chat_line(f"r{i}", f"q{i}") for i in range(10)] + [chat_line("s", "<<slow:1>> s")]
    batch = submit(client, lines)
    wait_for_completed(client, batch.id, 10)
    client.close()
    start_api.stop_all()

    client = proxy_client(start_api, options)
    done = wait_for(client, batch.id)
    assert done.status == "completed"
    assert set(by_custom_id(read_lines(client, done.output_file_id))) == {
        f"r{i}" for i in range(10)
    } | {"s"}
    assert all(upstream.calls[f"q{i}"] == 1 for i in range(10))
    assert upstream.calls["<<slow:1>> s"] == 1
