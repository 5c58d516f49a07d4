"""The OpenAI backend against the local Batch API over real HTTP, and `make_backend`."""

from __future__ import annotations

import subprocess
import sys
import time
import traceback
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import httpx2
import openai
import orjson
import pytest

from batch_pipeline.core.backends import (
    LOCAL_BASE_URL,
    BackendError,
    BatchBackend,
    NotFound,
    OpenAIBackend,
    TransientBackendError,
    is_transient_batch_failure,
    make_backend,
)
from batch_pipeline.core.backends.openai import DOWNLOAD_CHUNK_BYTES
from batch_pipeline.core.spec import BackendSpec
from batch_pipeline.core.types import BatchError, BatchInfo, BatchStatus
from batch_pipeline.local_api.server import run_local_batch_api

CHAT = "/v1/chat/completions"


@pytest.fixture
def start_api(tmp_path: Path) -> Iterator:
    """Start a local Batch API of its own for a test: `start_api(**settings) -> base URL`."""
    stack: list = []

    def start(**settings: object) -> str:
        settings.setdefault("completion_window_seconds", 60.0)
        context = run_local_batch_api(tmp_path / f"state{len(stack)}", **settings)
        stack.append(context)
        return context.__enter__()

    yield start
    for context in reversed(stack):
        context.__exit__(None, None, None)


def sdk_backend(url: str, *, key: str = "sk-test", **options: object) -> OpenAIBackend:
    options.setdefault("max_retries", 0)
    return OpenAIBackend(openai.OpenAI(base_url=url, api_key=key, **options))


@pytest.fixture
def backend(start_api) -> Iterator[OpenAIBackend]:
    backend = sdk_backend(start_api())
    yield backend
    backend.close()


def write_requests(path: Path, texts: list[str]) -> Path:
    lines = (
        orjson.dumps(
            {
                "custom_id": f"req-{i}",
                "method": "POST",
                "url": CHAT,
                "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": t}]},
            }
        )
        + b"\n"
        for i, t in enumerate(texts)
    )
    path.write_bytes(b"".join(lines))
    return path


def submit(backend: BatchBackend, tmp_path: Path, texts: list[str], **metadata: str) -> BatchInfo:
    upload = backend.upload_file(write_requests(tmp_path / "in.jsonl", texts), "in.jsonl")
    return backend.create_batch(input_file_id=upload.id, endpoint=CHAT, metadata=metadata)


def wait_terminal(backend: BatchBackend, batch_id: str, timeout: float = 30.0) -> BatchInfo:
    deadline = time.monotonic() + timeout
    while True:
        batch = backend.retrieve_batch(batch_id)
        if batch.status.is_terminal or time.monotonic() > deadline:
            return batch
        time.sleep(0.05)


@pytest.mark.slow
def test_the_backend_implements_the_protocol(backend: OpenAIBackend) -> None:
    assert isinstance(backend, BatchBackend)


@pytest.mark.slow
def test_upload_then_find_the_upload_by_name(backend: OpenAIBackend, tmp_path: Path) -> None:
    before = int(time.time()) - 1
    path = write_requests(tmp_path / "shard.jsonl", ["one", "two"])
    uploaded = backend.upload_file(path, "pipeline-2026-11-20-shard-0.jsonl")

    assert uploaded.filename == "pipeline-2026-11-20-shard-0.jsonl"
    assert uploaded.bytes == path.stat().st_size and uploaded.purpose == "batch"
    found = backend.find_file("pipeline-2026-11-20-shard-0.jsonl", created_after=before)
    assert found == uploaded
    assert backend.find_file("another-name.jsonl", created_after=before) is None
    assert backend.find_file(uploaded.filename, created_after=uploaded.created_at + 1) is None


@pytest.mark.slow
def test_upload_streams_the_file_from_disk(backend: OpenAIBackend, tmp_path: Path) -> None:
    path = write_requests(tmp_path / "big.jsonl", ["x" * 2000] * 12_000)  # about 24 MB
    size = path.stat().st_size
    tracemalloc.start()
    try:
        uploaded = backend.upload_file(path, "big.jsonl")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert uploaded.bytes == size
    assert peak < size / 4  # the server runs in this process too, so allow it some


@pytest.mark.slow
def test_create_then_find_the_batch_by_its_metadata(backend: OpenAIBackend, tmp_path: Path) -> None:
    before = int(time.time()) - 1
    created = submit(backend, tmp_path, ["hi"], batch_pipeline_shard="tickets/2026-11-20/0")
    submit(backend, tmp_path, ["hi"], batch_pipeline_shard="tickets/2026-11-20/1")

    assert created.endpoint == CHAT and created.status is BatchStatus.VALIDATING
    assert created.metadata == {"batch_pipeline_shard": "tickets/2026-11-20/0"}
    found = backend.find_batch(
        metadata_key="batch_pipeline_shard",
        metadata_value="tickets/2026-11-20/0",
        created_after=before,
    )
    assert found is not None and found.id == created.id
    assert (
        backend.find_batch(
            metadata_key="batch_pipeline_shard", metadata_value="other", created_after=before
        )
        is None
    )


@pytest.mark.slow
def test_iter_batches_pages_newest_first_and_stops_at_created_after(
    start_api, tmp_path: Path
) -> None:
    list_requests: list[str] = []

    def count(request: httpx2.Request) -> None:
        if request.method == "GET" and request.url.path.endswith("/batches"):
            list_requests.append(str(request.url))

    client = openai.OpenAI(
        base_url=start_api(),
        api_key="sk-test",
        max_retries=0,
        http_client=httpx2.Client(event_hooks={"request": [count]}),
    )
    backend = OpenAIBackend(client)
    older = [submit(backend, tmp_path, ["old"], n=str(i)).id for i in range(3)]
    time.sleep(1.1)  # created_at has a one-second resolution
    newer = [submit(backend, tmp_path, ["new"], n=str(i)).id for i in range(4)]
    newest_second = backend.retrieve_batch(newer[0]).created_at

    every = list(backend.iter_batches(page_size=2))
    assert [b.id for b in every] == [*reversed(newer), *reversed(older)]
    assert len(list_requests) == 4  # pages of 2, 2, 2 and 1

    list_requests.clear()
    recent = list(backend.iter_batches(created_after=newest_second, page_size=2))
    assert [b.id for b in recent] == list(reversed(newer))
    assert len(list_requests) == 3  # the third page holds the first older batch: stop there
    backend.close()


@pytest.mark.slow
def test_retrieve_until_done_then_download_into_a_file(
    backend: OpenAIBackend, tmp_path: Path
) -> None:
    batch = wait_terminal(backend, submit(backend, tmp_path, ["a", "b", "c"]).id)
    assert batch.status is BatchStatus.COMPLETED
    assert (batch.request_counts.total, batch.request_counts.completed) == (3, 3)
    assert batch.output_file_id and batch.error_file_id is None

    dest = tmp_path / "output.jsonl"
    with dest.open("wb") as handle:
        written = backend.download_file(batch.output_file_id, handle)
    assert written == dest.stat().st_size > 0
    lines = [orjson.loads(line) for line in dest.read_bytes().splitlines()]
    assert sorted(line["custom_id"] for line in lines) == ["req-0", "req-1", "req-2"]


# Downloads in a process of their own: tracemalloc there counts the client's allocations
# only, not those of the local service's threads in the test process. The first download
# also imports what a download needs; the next two are measured.
DOWNLOAD_PEAKS = """
import sys, tracemalloc
import openai
from batch_pipeline.core.backends import OpenAIBackend
url, dest, *file_ids = sys.argv[1:]
backend = OpenAIBackend(openai.OpenAI(base_url=url, api_key="sk-test", max_retries=0))
tracemalloc.start()
for file_id in [file_ids[0], *file_ids]:
    tracemalloc.reset_peak()
    with open(dest, "wb") as handle:
        written = backend.download_file(file_id, handle)
    print(written, tracemalloc.get_traced_memory()[1])
"""


@pytest.mark.slow
def test_download_memory_does_not_grow_with_the_file(start_api, tmp_path: Path) -> None:
    url = start_api()
    backend = sdk_backend(url)
    files = []
    for count in (1500, 9000):
        batch = wait_terminal(backend, submit(backend, tmp_path, ["y" * 1500] * count).id, 60)
        assert batch.status is BatchStatus.COMPLETED
        files.append(batch.output_file_id)
    run = subprocess.run(
        [sys.executable, "-c", DOWNLOAD_PEAKS, url, str(tmp_path / "out.jsonl"), *files],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    (_, _), (small, small_peak), (large, large_peak) = (
        map(int, line.split()) for line in run.stdout.splitlines()
    )
    # Six times the bytes, about the same memory: a few of the download's chunks at most.
    chunk = DOWNLOAD_CHUNK_BYTES
    assert large > 5 * small and large > 18 * chunk
    assert large_peak < small_peak + 3 * chunk
    assert large_peak < 6 * chunk


@pytest.mark.slow
def test_cancel_an_unfinished_batch(backend: OpenAIBackend, tmp_path: Path) -> None:
    batch = submit(backend, tmp_path, ["fine", "<<hang>>"])
    cancelling = backend.cancel_batch(batch.id)
    assert cancelling.status in (BatchStatus.CANCELLING, BatchStatus.CANCELLED)
    assert wait_terminal(backend, batch.id).status is BatchStatus.CANCELLED


@pytest.mark.slow
def test_delete_file_then_it_is_not_found(backend: OpenAIBackend, tmp_path: Path) -> None:
    uploaded = backend.upload_file(write_requests(tmp_path / "x.jsonl", ["x"]), "x.jsonl")
    backend.delete_file(uploaded.id)
    with pytest.raises(NotFound):
        backend.delete_file(uploaded.id)


@pytest.mark.slow
@pytest.mark.parametrize(
    "call",
    [
        lambda b: b.retrieve_batch("batch_does_not_exist"),
        lambda b: b.cancel_batch("batch_does_not_exist"),
        lambda b: b.download_file("file-does-not-exist", open("/dev/null", "wb")),  # noqa: SIM115
    ],
    ids=["retrieve", "cancel", "download"],
)
def test_unknown_ids_raise_not_found(backend: OpenAIBackend, call) -> None:
    with pytest.raises(NotFound) as info:
        call(backend)
    assert info.value.status_code == 404


@pytest.mark.slow
def test_429_on_create_is_transient_and_never_retried_inside(start_api, tmp_path: Path) -> None:
    # Even with SDK retries on, a create is sent once: a retry could pay for a second batch.
    backend = sdk_backend(start_api(fault_create_429_every=2), max_retries=3)
    upload = backend.upload_file(write_requests(tmp_path / "in.jsonl", ["hi"]), "in.jsonl")
    first = backend.create_batch(input_file_id=upload.id, endpoint=CHAT, metadata={})
    with pytest.raises(TransientBackendError) as info:
        backend.create_batch(input_file_id=upload.id, endpoint=CHAT, metadata={})
    assert info.value.status_code == 429
    assert [b.id for b in backend.iter_batches()] == [first.id]


@pytest.mark.slow
def test_500_on_download_and_refused_connections_are_transient(start_api, tmp_path: Path) -> None:
    backend = sdk_backend(start_api(fault_download_500_every=1))
    batch = wait_terminal(backend, submit(backend, tmp_path, ["hi"]).id)
    with pytest.raises(TransientBackendError) as info:
        backend.download_file(batch.output_file_id, (tmp_path / "o").open("wb"))
    assert info.value.status_code == 500

    unreachable = sdk_backend("http://127.0.0.1:9/v1", timeout=2)
    with pytest.raises(TransientBackendError, match="connection error"):
        unreachable.retrieve_batch("batch_x")


@pytest.mark.slow
def test_a_refused_key_is_a_backend_error_that_never_shows_a_key(start_api, tmp_path: Path) -> None:
    right, wrong = "sk-right-7f3a9c1e55d04b2a", "sk-wrong-0c1d2e3f4a5b6c7d"
    backend = sdk_backend(start_api(api_key=right), key=wrong)
    with pytest.raises(BackendError) as info:
        backend.upload_file(write_requests(tmp_path / "in.jsonl", ["hi"]), "in.jsonl")
    error = info.value
    assert not isinstance(error, TransientBackendError | NotFound)
    assert error.status_code == 401
    shown = "".join(traceback.format_exception(error)) + repr(error) + repr(backend)
    for secret in (right, wrong, "0c1d2e3f4a5b6c7d", "7f3a9c1e55d04b2a"):
        assert secret not in shown
    assert error.__cause__ is None and error.__context__ is None  # the SDK error holds the key


@pytest.mark.slow
def test_make_backend_reads_the_key_from_the_variable_it_names(start_api, tmp_path: Path) -> None:
    key = "sk-from-env-93be1c"
    url = start_api(api_key=key)
    spec = BackendSpec(provider="local", base_url=url, api_key_env="BP_TEST_BATCH_KEY")

    backend = make_backend(spec, env={"BP_TEST_BATCH_KEY": key})
    assert backend.upload_file(write_requests(tmp_path / "a.jsonl", ["hi"]), "a.jsonl").id
    assert key not in repr(backend)

    # A variable the spec names but the environment lacks is named, as for openai.
    with pytest.raises(BackendError, match="BP_TEST_BATCH_KEY is not set"):
        make_backend(spec, env={})

    # The default variable (OPENAI_API_KEY, a real key) is not sent to a local service.
    unnamed = make_backend(BackendSpec(provider="local", base_url=url), env={"OPENAI_API_KEY": key})
    with pytest.raises(BackendError) as info:
        unnamed.upload_file(tmp_path / "a.jsonl", "a.jsonl")
    assert info.value.status_code == 401


def test_make_backend_defaults_for_local_and_builds_azure() -> None:
    local = make_backend(BackendSpec(provider="local"), env={})
    assert LOCAL_BASE_URL in repr(local)

    azure = make_backend(
        BackendSpec(
            provider="azure",
            azure_endpoint="https://example-resource.openai.azure.com",
            api_version="2025-03-01-preview",
            api_key_env="AZURE_OPENAI_API_KEY",
            max_retries=5,
        ),
        env={"AZURE_OPENAI_API_KEY": "azure-key-123"},
    )
    assert isinstance(azure, OpenAIBackend) and isinstance(azure.client, openai.AzureOpenAI)
    assert azure.client.max_retries == 5
    assert "azure-key-123" not in repr(azure)


@pytest.mark.parametrize("provider", ["openai", "azure"])
def test_make_backend_refuses_a_missing_key_naming_only_the_variable(provider: str) -> None:
    spec = BackendSpec(
        provider=provider,
        api_key_env="BP_TEST_MISSING_KEY",
        azure_endpoint="https://example-resource.openai.azure.com",
        api_version="2025-03-01-preview",
    )
    with pytest.raises(BackendError, match="BP_TEST_MISSING_KEY"):
        make_backend(spec, env={"OPENAI_API_KEY": "sk-unrelated-value"})
    with pytest.raises(BackendError, match="BP_TEST_MISSING_KEY"):
        make_backend(spec, env={"BP_TEST_MISSING_KEY": ""})


def failed_batch(*codes: str) -> BatchInfo:
    return BatchInfo(
        id="batch_1",
        status=BatchStatus.FAILED,
        endpoint=CHAT,
        input_file_id="file-1",
        created_at=0,
        errors=tuple(BatchError(code=code, message="...") for code in codes),
    )


def test_transient_batch_failures() -> None:
    assert is_transient_batch_failure(failed_batch("token_limit_exceeded"))
    assert is_transient_batch_failure(failed_batch("rate_limit_exceeded"))
    assert not is_transient_batch_failure(failed_batch("invalid_request"))
    assert not is_transient_batch_failure(failed_batch("token_limit_exceeded", "duplicate_id"))
    assert not is_transient_batch_failure(failed_batch())
    completed = BatchInfo(
        id="b", status=BatchStatus.COMPLETED, endpoint=CHAT, input_file_id="f", created_at=0
    )
    assert not is_transient_batch_failure(completed)
