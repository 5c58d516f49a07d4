"""The Files API served as OpenAI's spec says, driven through the official SDK."""

from __future__ import annotations

import time
from pathlib import Path

import httpx2
import openai
import pytest
from openai import OpenAI

from batch_pipeline.local_api.store import Store
from batch_pipeline_tests.local_api_tests.helpers import (
    EMPTY_PAGE,
    assert_empty_list,
    chat_line,
    jsonl,
    submit,
    wait_for,
    wait_until,
)

pytestmark = pytest.mark.slow


def test_upload_retrieve_download_delete(client: OpenAI) -> None:
    content = jsonl([chat_line("a", "hello"), chat_line("b", "world")])
    created = client.files.create(file=("requests.jsonl", content), purpose="batch")

    assert created.id.startswith("file-")
    assert created.object == "file"
    assert created.bytes == len(content)
    assert created.filename == "requests.jsonl"
    assert created.purpose == "batch"
    assert created.status == "processed"
    assert created.created_at > 1_600_000_000

    assert client.files.retrieve(created.id) == created
    assert client.files.content(created.id).content == content

    deleted = client.files.delete(created.id)
    assert (deleted.id, deleted.object, deleted.deleted) == (created.id, "file", True)
    with pytest.raises(openai.NotFoundError) as info:
        client.files.retrieve(created.id)
    assert info.value.body["type"] == "invalid_request_error"  # type: ignore[index]
    with pytest.raises(openai.NotFoundError):
        client.files.content(created.id)
    with pytest.raises(openai.NotFoundError):
        client.files.delete(created.id)


def test_other_purposes_are_stored(client: OpenAI) -> None:
    created = client.files.create(file=("notes.txt", b"anything"), purpose="user_data")
    assert created.purpose == "user_data"
    assert [f.id for f in client.files.list(purpose="user_data")] == [created.id]
    assert list(client.files.list(purpose="batch")) == []


def test_expires_after_sets_expires_at(client: OpenAI) -> None:
    created = client.files.create(
        file=("x.jsonl", b"{}\n"),
        purpose="batch",
        expires_after={"anchor": "created_at", "seconds": 3600},
    )
    assert created.expires_at is not None
    assert 3599 <= created.expires_at - created.created_at <= 3601


def test_batch_files_expire_after_30_days_by_default_and_others_are_kept(
    client: OpenAI,
) -> None:
    """As OpenAI's files: a purpose=batch upload, and a batch's output and error files,
    expire after 30 days unless they say otherwise; other files are kept."""
    month = 30 * 86400
    upload = client.files.create(file=("in.jsonl", b"{}\n"), purpose="batch")
    assert upload.expires_at is not None and upload.expires_at - upload.created_at == month
    kept = client.files.create(file=("notes.txt", b"kept"), purpose="user_data")
    assert kept.expires_at is None
    started = submit(client, [chat_line("a", "hi"), chat_line("b", "<<hang>>")])
    wait_until(lambda: client.batches.retrieve(started.id).request_counts.completed == 1)
    client.batches.cancel(started.id)
    batch = wait_for(client, started.id)
    for file_id in (batch.output_file_id, batch.error_file_id):
        made = client.files.retrieve(file_id)
        assert made.expires_at is not None and made.expires_at - made.created_at == month


def test_an_expired_batch_file_is_gone(start_api) -> None:
    client = OpenAI(base_url=start_api(batch_file_expiry_seconds=1), api_key="k", max_retries=0)
    upload = client.files.create(file=("in.jsonl", b"{}\n"), purpose="batch")
    time.sleep(1.5)
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(upload.id)


def test_list_orders_and_auto_paginates(client: OpenAI, api_url: str) -> None:
    ids = [client.files.create(file=(f"f{i}.jsonl", b"{}\n"), purpose="batch").id for i in range(7)]

    newest_first = [f.id for f in client.files.list(limit=3)]  # SDK follows `after`
    assert newest_first == ids[::-1]
    oldest_first = [f.id for f in client.files.list(limit=2, order="asc")]
    assert oldest_first == ids

    page = httpx2.get(f"{api_url}/files", params={"limit": 3}).json()
    assert page["object"] == "list"
    assert [f["id"] for f in page["data"]] == ids[:-4:-1]
    assert page["has_more"] is True
    assert (page["first_id"], page["last_id"]) == (ids[-1], ids[-3])
    last = httpx2.get(f"{api_url}/files", params={"limit": 10, "after": ids[1]}).json()
    assert [f["id"] for f in last["data"]] == [ids[0]]
    assert last["has_more"] is False


def test_empty_list_has_the_spec_shape(client: OpenAI, api_url: str) -> None:
    # ListFilesResponse requires object, data, first_id, last_id and has_more, the ids as
    # strings (not nullable).
    assert_empty_list(api_url, "files", client.files.list)

    only = client.files.create(file=("x.jsonl", b"{}\n"), purpose="batch").id
    assert httpx2.get(f"{api_url}/files", params={"purpose": "user_data"}).json() == EMPTY_PAGE
    past_the_end = httpx2.get(f"{api_url}/files", params={"after": only}).json()
    assert past_the_end == EMPTY_PAGE
    assert httpx2.get(f"{api_url}/files", params={"after": ""}).json()["first_id"] == only


def test_cursor_of_a_deleted_file_still_pages(client: OpenAI) -> None:
    ids = [client.files.create(file=(f"f{i}.jsonl", b"{}\n"), purpose="batch").id for i in range(3)]
    client.files.delete(ids[1])
    after_deleted = client.files.list(after=ids[1])
    assert [f.id for f in after_deleted.data] == [ids[0]]


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"limit": "abc"}, "limit"),
        ({"limit": "0"}, "limit"),
        ({"limit": "10001"}, "limit"),
        ({"order": "sideways"}, "order"),
        ({"after": "../../etc/passwd"}, "after"),
    ],
)
def test_bad_list_params_are_400(shared_url: str, params: dict[str, str], param: str) -> None:
    response = httpx2.get(f"{shared_url}/files", params=params)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == param


@pytest.mark.parametrize(
    ("data", "files", "param"),
    [
        ({}, {"file": ("x.jsonl", b"{}\n")}, "purpose"),
        ({"purpose": "nonsense"}, {"file": ("x.jsonl", b"{}\n")}, "purpose"),
        ({"purpose": "batch"}, None, "file"),
        ({"purpose": "batch"}, {"file": ("requests.txt", b"{}\n")}, "file"),
    ],
)
def test_bad_uploads_are_400(
    shared_url: str, data: dict[str, str], files: dict[str, object] | None, param: str
) -> None:
    if files is None:  # still multipart, just without the file part
        files = {"other": (None, b"x")}
    response = httpx2.post(f"{shared_url}/files", data=data, files=files)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == param
    assert error["type"] == "invalid_request_error"


def test_upload_that_is_not_multipart_is_400(shared_url: str) -> None:
    response = httpx2.post(f"{shared_url}/files", json={"purpose": "batch"})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_content_type"
    broken = httpx2.post(
        f"{shared_url}/files",
        content=b"--xyz\r\nnot a part",
        headers={"content-type": "multipart/form-data; boundary=xyz"},
    )
    assert broken.status_code == 400


def test_a_download_reads_a_name_of_its_own_that_a_delete_leaves_whole(
    tmp_path: Path, client: OpenAI, api_url: str
) -> None:
    store = Store(tmp_path / "store")
    upload = tmp_path / "upload.part"
    content = bytes(range(256)) * 4096
    upload.write_bytes(content)
    record = store.add_file(upload, filename="big.jsonl", purpose="batch")
    sending = store.download_path(record["id"])
    assert sending is not None

    assert store.delete_file(record["id"])
    assert sending.read_bytes() == content  # what a download under way still sends
    assert store.download_path(record["id"]) is None  # a later one: 404
    store.close()

    file_id = client.files.create(file=("small.jsonl", b"{}\n"), purpose="batch").id
    assert client.files.content(file_id).content == b"{}\n"
    service_tmp = tmp_path / "state" / "tmp"  # the service's own state dir (`api_url`)
    wait_until(lambda: not list(service_tmp.glob("*.download")))  # removed once sent
