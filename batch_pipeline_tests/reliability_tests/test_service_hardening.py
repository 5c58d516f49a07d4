"""The local Batch API under hostile input, property-based: requests without the key, ids that
try to leave the state dir, list parameters of any size, batch bodies of any shape, uploads cut
short or too large. Each is refused with the status an oracle written from the API's contract
predicts, never a 5xx, the key never echoed, and the service keeps running batches.

The core local-API tests try a fixed list of such inputs; here hypothesis generates them (raw
HTTP, so paths reach the server as written)."""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from batch_pipeline.local_api.server import run_local_batch_api
from batch_pipeline.local_api.validation import SUPPORTED_ENDPOINTS
from batch_pipeline_tests.reliability_tests.helpers import LEAK_KEY, sdk, wait_until

pytestmark = [pytest.mark.reliability, pytest.mark.slow]

UPLOAD_LIMIT = 4096
LIST_LIMITS = {"/v1/files": 10_000, "/v1/batches": 100}
CREATE_FIELDS = {"input_file_id", "endpoint", "completion_window", "metadata"}
FUZZ = settings(
    max_examples=60,
    derandomize=True,  # the same examples every run: a finding never comes and goes
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
TEXT = st.text(st.characters(exclude_categories=("Cs",)), max_size=20)
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
    max_leaves=6,
)


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Hardened:
    """The service under attack: its URL, its state dir and one real batch input file."""

    url: str
    state: Path
    file_id: str

    def call(
        self,
        method: str,
        path: str,
        body: bytes = b"",
        headers: dict[str, str] | None = None,
        *,
        key: str | None = LEAK_KEY,
    ) -> Answer:
        """One raw HTTP request; the path goes out exactly as given."""
        parts = urlsplit(self.url)
        connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=15)
        sent = {"authorization": f"Bearer {key}"} if key is not None else {}
        sent.update(headers or {})
        try:
            connection.request(method, path, body=body, headers=sent)
            response = connection.getresponse()
            return Answer(response.status, dict(response.getheaders()), response.read())
        finally:
            connection.close()

    def is_up(self) -> bool:
        return self.call("GET", "/v1/batches?limit=1").status == 200

    def leftovers(self) -> list[Path]:
        """Upload temporaries that stayed behind."""
        return list((self.state / "tmp").iterdir())


@pytest.fixture(scope="module")
def hardened(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hardened]:
    state = tmp_path_factory.mktemp("hardened_state")
    with run_local_batch_api(
        state,
        port=0,
        api_key=LEAK_KEY,
        max_upload_bytes=UPLOAD_LIMIT,
        completion_window_seconds=5,
        progress_interval_seconds=0.2,
    ) as url:
        line = {
            "custom_id": "a",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
        }
        file_id = (
            sdk(url)
            .files.create(file=("in.jsonl", json.dumps(line).encode() + b"\n"), purpose="batch")
            .id
        )
        yield Hardened(url, state, file_id)


def assert_refused(answer: Answer, status: int) -> None:
    """The expected status, in OpenAI's error shape, without the key in it."""
    assert answer.status == status, (answer.status, answer.body[:300])
    assert set(json.loads(answer.body)["error"]) == {"message", "type", "param", "code"}
    assert LEAK_KEY.encode() not in answer.body


# -- authentication ---------------------------------------------------------------------------

ROUTES = [
    ("GET", "/v1/files"),
    ("POST", "/v1/files"),
    ("GET", "/v1/batches"),
    ("POST", "/v1/batches"),
    ("GET", "/v1/files/{id}"),
    ("DELETE", "/v1/files/{id}"),
    ("GET", "/v1/files/{id}/content"),
    ("GET", "/v1/batches/{id}"),
    ("POST", "/v1/batches/{id}/cancel"),
    ("GET", "/v1/nowhere"),
]
HEADER_TEXT = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=60)
CREDENTIALS = st.one_of(
    st.none(),
    HEADER_TEXT,
    HEADER_TEXT.map(lambda t: f"Bearer {t}"),
    st.sampled_from(
        [
            f"Basic {LEAK_KEY}",
            LEAK_KEY,
            f"Bearer {LEAK_KEY[:-1]}",
            f"Bearer {LEAK_KEY}x",
            f"Token {LEAK_KEY}",
        ]
    ),
)


@FUZZ
@given(route=st.sampled_from(ROUTES), credential=CREDENTIALS)
def test_without_the_key_every_route_is_401(
    hardened: Hardened, route: tuple[str, str], credential: str | None
) -> None:
    method, template = route
    path = template.format(id=hardened.file_id)
    headers = {"authorization": credential} if credential else {}
    answer = hardened.call(method, path, b"{}", headers, key=None)
    assert_refused(answer, 401)
    if credential and len(credential) > 8:
        assert credential.encode() not in answer.body  # a refused credential is not echoed


# -- ids in paths -----------------------------------------------------------------------------

ID_ROUTES = [
    ("GET", "/v1/files/{id}"),
    ("DELETE", "/v1/files/{id}"),
    ("GET", "/v1/files/{id}/content"),
    ("GET", "/v1/batches/{id}"),
    ("POST", "/v1/batches/{id}/cancel"),
]
HOSTILE_IDS = st.one_of(
    st.text(min_size=1, max_size=40),
    st.sampled_from(
        [
            "..",
            ".",
            "../../etc/passwd",
            "..\\..\\state",
            "file-../../batches",
            "%2e%2e",
            "file-" + "0" * 32,
            "batch_" + "0" * 32,
            "/",
            "//",
            "~",
        ]
    ),
)


def assert_id_refused(hardened: Hardened, route: tuple[str, str], hostile: str) -> None:
    method, template = route
    answer = hardened.call(method, template.format(id=quote(hostile, safe="")))
    assert_refused(answer, 404)
    assert b"root:" not in answer.body and b'"custom_id"' not in answer.body


@FUZZ
@given(
    route=st.sampled_from(ID_ROUTES),
    hostile=HOSTILE_IDS.filter(lambda text: not text.endswith("/")),
)
def test_hostile_ids_are_404_and_reach_nothing(
    hardened: Hardened, route: tuple[str, str], hostile: str
) -> None:
    assert_id_refused(hardened, route, hostile)


def test_ids_ending_in_a_slash_are_404_not_a_redirect(hardened: Hardened) -> None:
    """Found by the property above (which leaves them out): an id ending in "/" ends the
    decoded path in "/"; it must be refused, not redirected (GET /v1/files/%2F went to the
    list of every file)."""
    answers = {
        (method, template, hostile): hardened.call(
            method, template.format(id=quote(hostile, safe=""))
        )
        for method, template in (ID_ROUTES[0], ID_ROUTES[1], ID_ROUTES[3])
        for hostile in ("/", "a/", hardened.file_id + "/")
    }
    redirected = {
        f"{method} {template.format(id=quote(hostile, safe=''))}": (
            f"{answer.status} -> {answer.headers.get('location')}"
        )
        for (method, template, hostile), answer in answers.items()
        if answer.status != 404
    }
    assert not redirected, redirected


# -- list parameters --------------------------------------------------------------------------

LIMIT_TEXT = st.one_of(
    st.integers(min_value=-(10**40), max_value=10**40).map(str),
    st.sampled_from(["1e3", "nan", "", " 7 ", "0x10", "1_0", "\u0661\u0660"]),
    TEXT,
)


def parse_limit(text: str) -> int | None:
    try:
        return int(text)
    except ValueError:
        return None


@FUZZ
@given(
    endpoint=st.sampled_from(list(LIST_LIMITS)),
    limit=LIMIT_TEXT,
    order=st.one_of(st.none(), st.sampled_from(["asc", "desc"]), TEXT),
    after=st.one_of(st.none(), TEXT),
)
def test_list_parameters_are_checked_whatever_their_size(
    hardened: Hardened, endpoint: str, limit: str, order: str | None, after: str | None
) -> None:
    query = {"limit": limit}
    if order is not None and endpoint == "/v1/files":
        query["order"] = order
    if after is not None:
        query["after"] = after
    answer = hardened.call("GET", f"{endpoint}?{urlencode(query)}")
    value = parse_limit(limit)
    in_range = limit == "" or (value is not None and 1 <= value <= LIST_LIMITS[endpoint])
    valid = (
        in_range
        and (order in (None, "", "asc", "desc") or endpoint != "/v1/files")
        and after in (None, "")
    )
    if not valid:
        assert_refused(answer, 400)
        return
    assert answer.status == 200, answer.body[:300]
    assert len(answer.json()["data"]) <= (value or LIST_LIMITS[endpoint])


# -- batch bodies -----------------------------------------------------------------------------


def metadata_is_valid(metadata: Any) -> bool:
    if metadata is None:
        return True
    return (
        isinstance(metadata, dict)
        and len(metadata) <= 16
        and all(len(k) <= 64 and isinstance(v, str) and len(v) <= 512 for k, v in metadata.items())
    )


def create_status(body: dict[str, Any], real_file: str) -> int:
    """What the Batches API contract says a create with this body gets."""
    required = ("input_file_id", "endpoint", "completion_window")
    if (
        set(body) - CREATE_FIELDS
        or any(not isinstance(body.get(name), str) for name in required)
        or body["endpoint"] not in SUPPORTED_ENDPOINTS
        or body["completion_window"] != "24h"
        or not metadata_is_valid(body.get("metadata"))
    ):
        return 400
    return 200 if body["input_file_id"] == real_file else 404


def create_bodies(real_file: str) -> st.SearchStrategy[dict[str, Any]]:
    metadata = st.dictionaries(
        st.text(max_size=70), st.one_of(st.text(max_size=520), JSON), max_size=18
    )
    return st.fixed_dictionaries(
        {},
        optional={
            "input_file_id": st.one_of(st.just(real_file), st.just("file-" + "0" * 32), JSON),
            "endpoint": st.one_of(st.sampled_from(SUPPORTED_ENDPOINTS), JSON),
            "completion_window": st.one_of(st.just("24h"), JSON),
            "metadata": st.one_of(st.none(), metadata, JSON),
            "surprise": JSON,
        },
    ).filter(lambda body: "surprise" not in body or len(body) > 1)


@FUZZ
@given(data=st.data())
def test_batch_bodies_get_the_status_the_contract_says(
    hardened: Hardened, data: st.DataObject
) -> None:
    body = data.draw(create_bodies(hardened.file_id))
    encoded = json.dumps(body, ensure_ascii=False).encode("utf-8", "surrogatepass")
    answer = hardened.call("POST", "/v1/batches", encoded, {"content-type": "application/json"})
    expected = create_status(body, hardened.file_id)
    if expected == 200:
        assert answer.status == 200, answer.body[:300]
        assert answer.json()["metadata"] == body.get("metadata")
    else:
        assert_refused(answer, expected)


@FUZZ
@given(garbage=st.binary(max_size=300))
def test_garbage_bodies_are_400(hardened: Hardened, garbage: bytes) -> None:
    try:
        parsed = json.loads(garbage)
    except ValueError:
        parsed = None
    answer = hardened.call("POST", "/v1/batches", garbage, {"content-type": "application/json"})
    if isinstance(parsed, dict):
        assert answer.status in (400, 404), answer.body[:300]
    else:
        assert_refused(answer, 400)


# -- uploads ----------------------------------------------------------------------------------

BOUNDARY = "rel1abilityB0undary"
FRAMINGS = ("whole", "cut-short", "no-file", "two-files")


def multipart(size: int, purpose: str | None, filename: str, framing: str) -> bytes:
    fields = []
    if purpose is not None:
        fields.append(f'Content-Disposition: form-data; name="purpose"\r\n\r\n{purpose}')
    quoted = filename.replace("\\", "\\\\").replace('"', '\\"')  # an HTTP quoted-string
    file_part = (
        f'Content-Disposition: form-data; name="file"; filename="{quoted}"\r\n'
        "Content-Type: application/jsonl\r\n\r\n" + "x" * size
    )
    if framing != "no-file":
        fields.append(file_part)
    if framing == "two-files":
        fields.append(file_part)
    body = "".join(f"--{BOUNDARY}\r\n{field}\r\n" for field in fields) + f"--{BOUNDARY}--\r\n"
    if framing == "cut-short":
        body = body[: -len(f"\r\n--{BOUNDARY}--\r\n")]
    return body.encode()


def upload_status(size: int, purpose: str | None, framing: str, filename: str) -> int:
    if framing != "no-file" and size > UPLOAD_LIMIT:
        return 413  # refused while streaming, before anything else is looked at
    if framing == "whole" and purpose == "batch" and not filename.lower().endswith(".jsonl"):
        return 400  # the Batch API takes .jsonl files only
    if framing != "whole" or purpose not in (
        "batch",
        "fine-tune",
        "assistants",
        "vision",
        "user_data",
        "evals",
    ):
        return 400
    return 200


@FUZZ
@given(
    size=st.one_of(st.integers(0, 64), st.integers(UPLOAD_LIMIT - 8, UPLOAD_LIMIT + 8)),
    purpose=st.one_of(st.none(), st.sampled_from(["batch", "fine-tune", "", "nope", "BATCH"])),
    filename=st.text(st.sampled_from('ab./\\-_~"'), min_size=1, max_size=20).flatmap(
        lambda name: st.sampled_from([name, f"{name}.jsonl"])
    ),
    framing=st.sampled_from(FRAMINGS),
)
def test_uploads_are_stored_whole_or_refused_without_leftovers(
    hardened: Hardened, size: int, purpose: str | None, filename: str, framing: str
) -> None:
    answer = hardened.call(
        "POST",
        "/v1/files",
        multipart(size, purpose, filename, framing),
        {"content-type": f"multipart/form-data; boundary={BOUNDARY}"},
    )
    expected = upload_status(size, purpose, framing, filename)
    if expected == 200:
        assert answer.status == 200, answer.body[:300]
        stored = answer.json()
        assert (stored["bytes"], stored["filename"]) == (size, filename)
        assert hardened.call("DELETE", f"/v1/files/{stored['id']}").status == 200
    else:
        assert_refused(answer, expected)
    assert hardened.leftovers() == []


def test_the_service_still_runs_batches_after_all_that(hardened: Hardened) -> None:
    client = sdk(hardened.url)
    batch = client.batches.create(
        input_file_id=hardened.file_id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    done = wait_until(
        lambda: (b := client.batches.retrieve(batch.id)).status == "completed" and b,
        "a batch on the service after the fuzzing",
    )
    assert done.request_counts.completed == 1
    assert hardened.is_up()
