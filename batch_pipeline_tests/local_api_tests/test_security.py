"""Authentication, path traversal, upload limits and malformed bodies."""

from __future__ import annotations

import http.client
import logging
import tracemalloc
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx2
import openai
import pytest
from openai import OpenAI

from batch_pipeline.local_api import LocalApiSettings, LocalBatchApi
from batch_pipeline_tests.local_api_tests.conftest import StartApi
from batch_pipeline_tests.local_api_tests.helpers import CHAT, chat_line, submit, upload, wait_for

SECRET = "sk-local-very-secret-1234"


@pytest.mark.slow
def test_auth_on_needs_the_bearer_key(
    start_api: StartApi, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    url = start_api(api_key=SECRET)

    with pytest.raises(openai.AuthenticationError) as info:
        OpenAI(base_url=url, api_key="sk-wrong", max_retries=0).files.list()
    assert info.value.status_code == 401 and info.value.code == "invalid_api_key"
    missing = httpx2.get(f"{url}/batches")
    assert missing.status_code == 401
    assert set(missing.json()["error"]) == {"message", "type", "param", "code"}
    assert httpx2.get(f"{url}/nowhere").status_code == 401  # before routing
    assert (
        httpx2.get(f"{url}/files", headers={"authorization": f"Basic {SECRET}"}).status_code == 401
    )

    client = OpenAI(base_url=url, api_key=SECRET, max_retries=0)
    batch = wait_for(client, submit(client, [chat_line("a", "hi")]).id)
    assert batch.status == "completed"
    assert client.files.content(batch.output_file_id or "").content
    assert SECRET not in caplog.text and "sk-wrong" not in caplog.text


@pytest.mark.slow
def test_auth_key_from_environment(start_api: StartApi, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOCAL_BATCH_KEY", SECRET)
    url = start_api(api_key_env="LOCAL_BATCH_KEY")
    assert httpx2.get(f"{url}/files").status_code == 401
    assert OpenAI(base_url=url, api_key=SECRET).files.list().data == []


@pytest.mark.slow
def test_auth_env_var_unset_refuses_to_start(
    start_api: StartApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("LOCAL_BATCH_KEY_UNSET", raising=False)
    with pytest.raises(ValueError, match="LOCAL_BATCH_KEY_UNSET"):
        start_api(api_key_env="LOCAL_BATCH_KEY_UNSET")


@pytest.mark.slow
def test_auth_off_accepts_any_key(client: OpenAI, api_url: str) -> None:
    assert client.files.list().data == []
    assert httpx2.get(f"{api_url}/files").status_code == 200


TRAVERSALS = [
    ("GET", "/v1/files/../../etc/passwd"),
    ("GET", "/v1/files/%2e%2e%2f%2e%2e%2fetc%2fpasswd"),
    ("GET", "/v1/files/..%2F..%2Fetc%2Fpasswd/content"),
    ("GET", "/v1/files/%2e%2e/content"),
    ("GET", "/v1/files/..%5C..%5Cstate/content"),
    ("GET", "/v1/files/file-..%2f..%2fbatches/content"),
    ("DELETE", "/v1/files/%2e%2e%2fbatches"),
    ("DELETE", "/v1/files/..%2F..%2Fetc%2Fpasswd"),
    ("POST", "/v1/batches/..%2f..%2fetc%2fpasswd/cancel"),
    ("GET", "/v1/batches/..%2ffiles"),
    ("GET", "/v1/files/file-" + "0" * 32 + "/content"),
    ("DELETE", "/v1/files/file-" + "0" * 32),
]
PASSWD = b"root:x:0:0:root:/root:/bin/sh\n"


@dataclass(frozen=True)
class Guarded:
    """A service whose state dir holds a file and a finished batch, next to an `etc/passwd`
    where `../../etc/passwd` from its files folder would land."""

    url: str
    root: Path
    client: OpenAI

    def tree(self) -> dict[str, bytes | None]:
        """Every folder and file under the root, with each file's bytes."""
        return {
            str(path.relative_to(self.root)): path.read_bytes() if path.is_file() else None
            for path in sorted(self.root.rglob("*"))
        }


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Guarded]:
    root = tmp_path_factory.mktemp("guarded")
    (root / "etc").mkdir()
    (root / "etc" / "passwd").write_bytes(PASSWD)
    settings = LocalApiSettings(state_dir=root / "state", port=0, progress_interval_seconds=0.1)
    with LocalBatchApi(settings) as url:
        client = OpenAI(base_url=url, api_key="k", max_retries=0)
        assert wait_for(client, submit(client, [chat_line("a", "hi")]).id).status == "completed"
        yield Guarded(url, root, client)


@pytest.mark.slow
@pytest.mark.parametrize(("method", "path"), TRAVERSALS)
def test_traversal_attempts_are_404_and_touch_nothing_on_disk(
    guarded: Guarded, method: str, path: str
) -> None:
    before = guarded.tree()
    files, batches = guarded.client.files.list().data, guarded.client.batches.list().data
    parts = urlsplit(guarded.url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    connection.request(method, path)  # sent as written, not normalised by a client
    response = connection.getresponse()
    body = response.read()
    connection.close()
    assert response.status == 404
    assert b'"error"' in body and b"root:" not in body
    assert guarded.tree() == before  # nothing written, moved or deleted, inside or out
    assert guarded.client.files.list().data == files  # still serving what it stores
    assert guarded.client.batches.list().data == batches


@pytest.mark.slow
def test_file_names_are_never_paths(client: OpenAI, tmp_path: Path) -> None:
    created = client.files.create(file=("../../../escaped.jsonl", b"{}\n"), purpose="batch")
    assert created.filename == "../../../escaped.jsonl"
    assert not list(tmp_path.rglob("escaped.jsonl"))
    assert client.files.content(created.id).content == b"{}\n"


def _multipart(boundary: str, size: int, chunk: int = 1 << 20) -> Iterator[bytes]:
    """A multipart body streamed in chunks (sent chunked: no Content-Length)."""
    yield (
        f'--{boundary}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.jsonl"'
        f"\r\nContent-Type: application/octet-stream\r\n\r\n"
    ).encode()
    sent = 0
    while sent < size:
        n = min(chunk, size - sent)
        yield b"x" * n
        sent += n
    yield f"\r\n--{boundary}--\r\n".encode()


@pytest.mark.slow
def test_oversize_upload_is_413(start_api: StartApi, tmp_path: Path) -> None:
    url = start_api(max_upload_bytes=1000)
    client = OpenAI(base_url=url, api_key="k", max_retries=0)

    with pytest.raises(openai.APIStatusError) as info:  # Content-Length says too much
        client.files.create(file=("big.jsonl", b"x" * 5000), purpose="batch")
    assert info.value.status_code == 413
    streamed = httpx2.post(  # no Content-Length: refused while counting the bytes
        f"{url}/files",
        content=_multipart("b0undary", 5000, chunk=100),
        headers={"content-type": "multipart/form-data; boundary=b0undary"},
    )
    assert streamed.status_code == 413
    assert streamed.json()["error"]["code"] == "file_too_large"

    exactly = client.files.create(file=("ok.jsonl", b"y" * 1000), purpose="batch")
    assert exactly.bytes == 1000
    assert [f.id for f in client.files.list()] == [exactly.id]
    assert not list((tmp_path / "state" / "tmp").iterdir())  # refused uploads left nothing


@pytest.mark.slow
def test_large_upload_streams_to_disk(start_api: StartApi) -> None:
    url = start_api(max_upload_bytes=64 << 20)
    size = 48 << 20
    tracemalloc.start()
    try:
        response = httpx2.post(
            f"{url}/files",
            content=_multipart("strm", size),
            headers={"content-type": "multipart/form-data; boundary=strm"},
            timeout=60,
        )
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert response.status_code == 200 and response.json()["bytes"] == size
    assert peak < 16 << 20  # never held whole (client and server share this process)


@pytest.mark.slow
@pytest.mark.parametrize(
    "body",
    [b"not json", b"[1, 2, 3]", b'"a string"', b"\xff\xfe\x00", b"", b'{"input_file_id": '],
)
def test_garbage_json_bodies_are_400(shared_url: str, body: bytes) -> None:
    response = httpx2.post(
        f"{shared_url}/batches", content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"


@pytest.mark.slow
def test_wrongly_typed_fields_are_400(shared_client: OpenAI, shared_url: str) -> None:
    file_id = upload(shared_client, [chat_line("a", "hi")])
    for body in (
        {"input_file_id": 5, "endpoint": CHAT, "completion_window": "24h"},
        {
            "input_file_id": file_id,
            "endpoint": CHAT,
            "completion_window": "24h",
            "metadata": ["not", "a", "map"],
        },
        {"input_file_id": file_id, "endpoint": CHAT, "completion_window": "24h", "surprise": True},
        {
            "input_file_id": file_id,
            "endpoint": CHAT,
            "completion_window": "24h",
            "output_expires_after": {"anchor": "created_at", "seconds": 5},
        },
    ):
        assert httpx2.post(f"{shared_url}/batches", json=body).status_code == 400


@pytest.mark.slow
def test_huge_json_body_is_413(shared_url: str) -> None:
    body = b'{"metadata": {"k": "' + b"x" * (2 << 20) + b'"}}'
    assert httpx2.post(f"{shared_url}/batches", content=body).status_code == 413
    assert httpx2.get(f"{shared_url}/batches").status_code == 200


@pytest.mark.slow
def test_unknown_routes_and_methods_answer_in_openai_shape(shared_url: str) -> None:
    missing = httpx2.get(f"{shared_url}/models")
    assert missing.status_code == 404
    assert missing.json()["error"]["message"] == "Invalid URL (GET /v1/models)"
    wrong = httpx2.put(f"{shared_url}/files")
    assert wrong.status_code == 405 and "error" in wrong.json()


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.20", "example.internal"])
def test_a_host_open_to_the_network_needs_a_key_or_an_explicit_insecure_option(
    tmp_path: Path, host: str
) -> None:
    with pytest.raises(ValueError, match="insecure-no-auth"):
        LocalApiSettings(state_dir=tmp_path, host=host)
    assert LocalApiSettings(state_dir=tmp_path, host=host, api_key=SECRET).host == host
    assert LocalApiSettings(state_dir=tmp_path, host=host, api_key_env="SOME_KEY").host == host
    assert LocalApiSettings(state_dir=tmp_path, host=host, insecure_no_auth=True).host == host


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "localhost", "::1"])
def test_loopback_hosts_need_no_key(tmp_path: Path, host: str) -> None:
    assert LocalApiSettings(state_dir=tmp_path, host=host).host == host


@pytest.mark.slow
def test_serving_open_to_all_logs_a_warning(
    start_api: StartApi, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    url = start_api(host="0.0.0.0", insecure_no_auth=True)
    assert httpx2.get(f"{url.replace('0.0.0.0', '127.0.0.1')}/files").status_code == 200
    assert [r for r in caplog.records if "without authentication" in r.getMessage()]
