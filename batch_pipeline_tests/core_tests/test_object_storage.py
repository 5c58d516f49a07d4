"""Pipelines whose source and output live in an object store: the S3-compatible server for S3,
the GCS emulator for gs://, and the routing of az:// URIs to pyarrow's Azure filesystem (no
Azure emulator comes from PyPI)."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import uuid
from collections.abc import Callable

import pandas as pd
import polars as pl
import pyarrow.fs
import pytest
import yaml

from batch_pipeline.core.pipeline import read_results
from batch_pipeline.core.sources import source_for
from batch_pipeline.core.spec import PipelineSpec, SpecError
from batch_pipeline.core.storage import storage_for
from batch_pipeline.core.storage_uri import RemoteLocation, StorageLocationError, filesystem_for
from batch_pipeline_tests.batch_apis import HttpApi, on_both_apis
from batch_pipeline_tests.conftest import ticket_spec
from batch_pipeline_tests.core_tests.test_pipeline import DAY, EXPECTED, mixed_rows
from batch_pipeline_tests.s3_server import SECRET_KEY


def parquet_of(rows: list[dict]) -> bytes:
    """The rows as the bytes of a Parquet file."""
    body = io.BytesIO()
    pd.DataFrame(rows).to_parquet(body, index=False)
    return body.getvalue()


def upload_tickets(s3, bucket: str, key: str, rows: list[dict]) -> str:
    """The rows as a Parquet object; its URI."""
    s3.client().put_object(Bucket=bucket, Key=key, Body=parquet_of(rows))
    return f"s3://{bucket}/{key}"


def store_spec(tmp_path, api, root: str, source: str, ledger_url: str) -> PipelineSpec:
    """The tickets pipeline reading `source`, with its output under `root` (a bucket's URI)."""
    spec = ticket_spec(
        tmp_path,
        api.base_url,
        source={"path": source},
        output={"dir": f"{root}/out"},
        ledger={"url": ledger_url},
        request={"context_window": 2000},
    )
    return PipelineSpec.from_dict(spec, base_dir=tmp_path)


def run_every_row_once(
    api, spec: PipelineSpec, root: str, keys: Callable[[], list[str]]
) -> pd.DataFrame:
    """Run the day; every row ends once with its expected status, read back from the store,
    whose `keys` (listed by the server after the run) hold the results and the shards. The
    results as read back."""
    with api.pipeline(spec) as pipeline:
        summary = pipeline.run(DAY, poll_interval=0.3, timeout=90)
    results = read_results(spec, DAY)
    assert len(results) == 15 and summary.rows == 15  # every row of the day, once
    for key, (status, attempts) in EXPECTED.items():
        row = results[results["ticket_id"] == key].iloc[0]
        assert (row["status"], row["attempts"]) == (status, attempts), key
    results_key = f"out/tickets/results/partition={DAY}/part-0.parquet"
    assert summary.path == f"{root}/{results_key}"
    listed = keys()
    assert results_key in listed
    assert any(key.startswith("out/tickets/requests/") for key in listed)
    return results


@on_both_apis
@pytest.mark.slow
@pytest.mark.postgres
def test_a_pipeline_on_s3_ends_with_every_row_once_read_back_from_the_store(
    tmp_path, api, s3, s3_bucket, own_postgres_database
):
    source = upload_tickets(s3, s3_bucket, "src/tickets.parquet", mixed_rows())
    root = f"s3://{s3_bucket}"
    spec = store_spec(tmp_path, api, root, source, own_postgres_database)
    results = run_every_row_once(api, spec, root, lambda: s3.keys(s3_bucket))
    assert s3.pending_uploads(s3_bucket) == []
    assert not list(tmp_path.glob("out*"))  # nothing went to a local folder
    # Any S3 reader sees the same file, with the same environment: pandas through pyarrow, and
    # Polars through its own client, as the README shows them.
    assert len(pd.read_parquet(f"{root}/out/tickets/results/partition={DAY}/part-0.parquet")) == 15
    frame = pl.scan_parquet(
        f"s3://{s3_bucket}/out/tickets/results/**/*.parquet", hive_partitioning=True
    ).collect()
    assert sorted(frame["ticket_id"].to_list()) == sorted(results["ticket_id"])
    assert {str(day) for day in frame["partition"].to_list()} == {DAY}


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.parametrize("api", ["http"], indirect=True)
def test_a_pipeline_on_gcs_ends_with_every_row_once_read_back_from_the_store(
    tmp_path, api, gcs, gcs_bucket, own_postgres_database
):
    """The same run with its source and output on gs://, reached through
    STORAGE_EMULATOR_HOST as a user reaches an emulator."""
    storage_for(f"gs://{gcs_bucket}").write_bytes("src/tickets.parquet", parquet_of(mixed_rows()))
    root = f"gs://{gcs_bucket}"
    spec = store_spec(tmp_path, api, root, f"{root}/src/tickets.parquet", own_postgres_database)
    run_every_row_once(api, spec, root, lambda: gcs.keys(gcs_bucket))
    assert not list(tmp_path.glob("out*"))  # nothing went to a local folder


@pytest.mark.slow
def test_csv_and_jsonl_sources_in_a_bucket_folder_read_like_local_ones(tmp_path, s3, s3_bucket):
    client = s3.client()
    at = f"{DAY} 09:00:00"
    client.put_object(
        Bucket=s3_bucket,
        Key="csv/region=eu/a.csv",
        Body=f"ticket_id,subject,body,created_at\n007,s,b,{at}\n".encode(),
    )
    client.put_object(
        Bucket=s3_bucket,
        Key="csv/region=us/b.csv",
        Body=f"ticket_id,subject,body,created_at\n8,t,c,{at}\n".encode(),
    )
    client.put_object(Bucket=s3_bucket, Key="csv/_SUCCESS", Body=b"")
    spec = PipelineSpec.from_dict(
        ticket_spec(tmp_path, "http://127.0.0.1:9/v1", source={"path": f"s3://{s3_bucket}/csv/"})
    )
    source = source_for(spec)
    rows = pd.concat(
        batch.to_pandas() for batch in source.batches(pd.Timestamp(DAY).date(), batch_size=10)
    )
    assert sorted(rows["ticket_id"]) == ["007", "8"]  # the key stays text
    assert sorted(rows["region"]) == ["eu", "us"]  # Hive folders become a column

    client.put_object(
        Bucket=s3_bucket,
        Key="bad/t.jsonl",
        Body=b'{"ticket_id": "1", "n": 1, "created_at": "2026-11-20"}\n'
        + b'{"ticket_id": "2", "n": "two", "created_at": "2026-11-20"}\n',
    )
    spec = PipelineSpec.from_dict(
        ticket_spec(tmp_path, "http://127.0.0.1:9/v1", source={"path": f"s3://{s3_bucket}/bad"})
    )
    with pytest.raises(Exception, match=f"s3://{s3_bucket}/bad"):
        list(source_for(spec).batches(pd.Timestamp(DAY).date(), batch_size=10))


@pytest.mark.slow
def test_a_missing_source_bucket_or_object_is_named(tmp_path, s3, s3_bucket):
    for path in (f"s3://{s3_bucket}/nothing.parquet", "s3://no-such-bucket-here/t.parquet"):
        spec = PipelineSpec.from_dict(
            ticket_spec(tmp_path, "http://127.0.0.1:9/v1", source={"path": path})
        )
        with pytest.raises(SpecError, match=f"source.path: {path} does not exist"):
            source_for(spec).schema()


def test_a_remote_output_without_a_postgresql_ledger_is_refused_at_load(tmp_path):
    for ledger in ({}, {"url": "sqlite:///ledger.db"}):
        spec = ticket_spec(tmp_path, "http://x", output={"dir": "s3://b/out"}, ledger=ledger)
        with pytest.raises(SpecError, match=r"set ledger\.url or ledger\.url_env"):
            PipelineSpec.from_dict(spec)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"secret_access_key": "abc"}, "secret_access_key: a credential never goes in the spec"),
        ({"aws_session_token": "abc"}, "a credential never goes in the spec"),
        ({"sas_token": "abc"}, "a credential never goes in the spec"),
        ({"bucket_owner": "me"}, "bucket_owner: unknown option for s3://"),
    ],
)
def test_storage_options_refuse_secrets_and_unknown_settings(tmp_path, options, message):
    spec = ticket_spec(
        tmp_path,
        "http://x",
        output={"dir": "s3://b/out", "storage_options": options},
        ledger={"url": "postgresql://h/db"},
    )
    with pytest.raises(SpecError, match=message) as error:
        PipelineSpec.from_dict(spec)
    assert "abc" not in str(error.value)


def test_storage_options_of_a_local_folder_are_refused(tmp_path):
    spec = ticket_spec(tmp_path, "http://x", output={"dir": "out", "storage_options": {"a": 1}})
    with pytest.raises(SpecError, match=r"output\.storage_options: they apply to object storage"):
        PipelineSpec.from_dict(spec)


def test_an_unknown_scheme_is_named_with_the_ones_taken():
    with pytest.raises(StorageLocationError, match=r"ftp://h/x: unknown storage scheme ftp://"):
        storage_for("ftp://h/x")


def test_file_urls_and_plain_paths_stay_local(tmp_path):
    spec = PipelineSpec.from_dict(
        ticket_spec(tmp_path, "http://x", output={"dir": f"file://{tmp_path}/o"}),
        base_dir=tmp_path,
    )
    assert spec.pipeline_root == str(tmp_path / "o" / "tickets")
    assert spec.pipeline_dir == tmp_path / "o" / "tickets"


def _settings(filesystem) -> dict:
    """The settings a pyarrow filesystem was made with (what it pickles)."""
    return filesystem.__reduce__()[1][0]


def test_s3_takes_endpoint_and_region_from_the_environment_or_the_options(monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9000")
    monkeypatch.setenv("AWS_REGION", "eu-west-3")
    filesystem = filesystem_for(RemoteLocation.parse("s3://b/p"))
    assert isinstance(filesystem, pyarrow.fs.S3FileSystem)
    settings = _settings(filesystem)
    assert (settings["endpoint_override"], settings["scheme"]) == ("127.0.0.1:9000", "http")
    assert settings["region"] == "eu-west-3" and settings["access_key"] is None
    options = {"endpoint_url": "https://minio.internal:9443", "region": "us-west-2"}
    settings = _settings(filesystem_for(RemoteLocation.parse("s3://b/p"), options))
    assert (settings["endpoint_override"], settings["scheme"]) == ("minio.internal:9443", "https")
    assert settings["region"] == "us-west-2"


@pytest.mark.parametrize("uri", ["gs://bucket/prefix", "gcs://bucket/prefix"])
def test_gs_uris_go_to_pyarrows_gcs_filesystem_with_the_options(uri):
    location = RemoteLocation.parse(uri)
    assert location.path == "bucket/prefix"
    options = {"endpoint_url": "http://127.0.0.1:4443", "project_id": "p", "anonymous": True}
    filesystem = filesystem_for(location, options)
    assert isinstance(filesystem, pyarrow.fs.GcsFileSystem)
    settings = _settings(filesystem)
    assert (settings["endpoint_override"], settings["scheme"]) == ("127.0.0.1:4443", "http")
    assert (settings["project_id"], settings["anonymous"]) == ("p", True)


def test_an_emulator_named_by_storage_emulator_host_is_reached_anonymously(monkeypatch):
    """As Google's own clients do: an emulator takes no credentials, and looking for them off
    Google Cloud waits on a metadata server that is not there."""
    location = RemoteLocation.parse("gs://bucket/prefix")
    monkeypatch.delenv("STORAGE_EMULATOR_HOST", raising=False)
    assert _settings(filesystem_for(location))["anonymous"] is False
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", "http://127.0.0.1:4443")
    settings = _settings(filesystem_for(location))
    assert (settings["endpoint_override"], settings["anonymous"]) == ("127.0.0.1:4443", True)
    assert _settings(filesystem_for(location, {"anonymous": False}))["anonymous"] is False
    # A store named in the spec is not the emulator: its requests keep their credentials.
    real = _settings(filesystem_for(location, {"endpoint_url": "https://storage.example.com"}))
    assert (real["endpoint_override"], real["anonymous"]) == ("storage.example.com", False)


def test_az_and_abfs_uris_go_to_pyarrows_azure_filesystem_with_the_account(monkeypatch):
    monkeypatch.delenv("AZURE_STORAGE_ACCOUNT_KEY", raising=False)
    monkeypatch.setenv("AZURE_STORAGE_ACCOUNT_NAME", "fromenv")
    filesystem = filesystem_for(RemoteLocation.parse("az://container/prefix"))
    assert isinstance(filesystem, pyarrow.fs.AzureFileSystem)
    assert _settings(filesystem)["account_name"] == "fromenv"
    location = RemoteLocation.parse("abfs://data@acct.dfs.core.windows.net/pipelines")
    assert (location.container, location.account, location.path) == (
        "data",
        "acct",
        "data/pipelines",
    )
    options = {"endpoint_url": "http://127.0.0.1:10000"}
    settings = _settings(filesystem_for(location, options))
    assert settings["account_name"] == "acct"
    assert (settings["blob_storage_authority"], settings["blob_storage_scheme"]) == (
        "127.0.0.1:10000",
        "http",
    )


def test_an_azure_uri_without_an_account_says_where_to_give_one(monkeypatch):
    monkeypatch.delenv("AZURE_STORAGE_ACCOUNT_NAME", raising=False)
    with pytest.raises(StorageLocationError, match="az://c/p: names no storage account"):
        filesystem_for(RemoteLocation.parse("az://c/p"))


@pytest.mark.parametrize(
    "uri, name, extra",
    [
        ("s3://b/p", "S3FileSystem", "s3"),
        ("gs://b/p", "GcsFileSystem", "gcs"),
        ("az://c/p", "AzureFileSystem", "azure"),
    ],
)
def test_a_pyarrow_without_the_stores_filesystem_names_the_extra(monkeypatch, uri, name, extra):
    monkeypatch.delattr(pyarrow.fs, name)
    monkeypatch.setenv("AZURE_STORAGE_ACCOUNT_NAME", "a")
    with pytest.raises(StorageLocationError) as error:
        storage_for(uri)
    assert str(error.value) == (
        f"{uri}: {uri.split(':')[0]}:// needs pyarrow with {name}: "
        f"pip install 'batch_pipeline[{extra}]'"
    )


def test_store_errors_never_quote_a_credential(monkeypatch):
    from batch_pipeline.core.storage_uri import describe

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    text = describe(OSError(f"AWS Error ACCESS_DENIED signing with {SECRET_KEY} (Request ID: 1)"))
    assert SECRET_KEY not in text and "Request ID" not in text
    assert text.startswith("access refused (check the credentials in the environment)")


def run_cli(tmp_path, spec: dict, env: dict[str, str]) -> subprocess.CompletedProcess:
    """`batch-pipeline run` in a process of its own, with `env` as its whole environment's
    storage and ledger part."""
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(spec), encoding="utf-8")
    base = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "AZURE_"))}
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "batch_pipeline.cli",
            "run",
            str(path),
            "--partition",
            DAY,
            "--timeout",
            "30",
        ],
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )


def assert_one_line_and_nothing_submitted(done, api, name: str, *expected: str) -> None:
    assert done.returncode == 1, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    for text in expected:
        assert text in lines[0]
    assert SECRET_KEY not in done.stderr + done.stdout
    assert api.batches(name) == []


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.parametrize("case", ["missing bucket", "wrong credentials"])
def test_run_on_a_bucket_it_cannot_use_exits_with_one_line_naming_it(
    tmp_path, batch_api, s3, s3_bucket, postgres_database, case
):
    """Nothing is built or submitted: the store is reached before anything else."""
    api = HttpApi(batch_api)
    name = f"tickets_{uuid.uuid4().hex[:8]}"
    source = upload_tickets(s3, s3_bucket, "src/t.parquet", mixed_rows())
    bucket = "no-such-bucket-here" if case == "missing bucket" else s3_bucket
    spec = ticket_spec(
        tmp_path,
        batch_api,
        name=name,
        source={"path": source},
        output={"dir": f"s3://{bucket}/out"},
        ledger={"url_env": "BP_TEST_LEDGER"},
    )
    env = {**s3.env(), "BP_TEST_LEDGER": postgres_database}
    if case == "missing bucket":
        done = run_cli(tmp_path, spec, env)
        expected = [f"s3://{bucket}/out/{name}", "'no-such-bucket-here' does not exist"]
    else:
        with s3.checking_credentials():
            done = run_cli(tmp_path, spec, env)
        expected = [f"s3://{bucket}/out/{name}", "access refused"]
    assert_one_line_and_nothing_submitted(done, api, name, *expected)
    assert s3.keys(s3_bucket) == ["src/t.parquet"]


def test_a_ledger_variable_naming_sqlite_is_refused_for_a_remote_output(tmp_path, monkeypatch):
    monkeypatch.setenv("BP_TEST_LEDGER", "sqlite:///ledger.db")
    spec = PipelineSpec.from_dict(
        ticket_spec(
            tmp_path, "http://x", output={"dir": "s3://b/o"}, ledger={"url_env": "BP_TEST_LEDGER"}
        )
    )
    with pytest.raises(SpecError, match="BP_TEST_LEDGER names a SQLite database"):
        _ = spec.ledger_url


@pytest.mark.parametrize("case", ["unknown scheme", "missing extra"])
def test_run_with_a_store_it_cannot_reach_exits_with_one_line(tmp_path, capsys, monkeypatch, case):
    """Before the ledger is opened (its URL here leads nowhere) or anything is built."""
    from batch_pipeline.cli import EXIT_ERROR
    from batch_pipeline.cli import main as cli_main

    out = "ftp://host/out" if case == "unknown scheme" else "s3://bucket/out"
    if case == "missing extra":
        monkeypatch.delattr(pyarrow.fs, "S3FileSystem")
    spec = ticket_spec(
        tmp_path,
        "http://127.0.0.1:9/v1",
        output={"dir": out},
        ledger={"url": "postgresql+psycopg2://127.0.0.1:1/never"},
    )
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(spec), encoding="utf-8")
    assert cli_main(["run", str(path), "--partition", DAY]) == EXIT_ERROR
    lines = capsys.readouterr().err.strip().splitlines()
    expected = {
        "unknown scheme": "error: ftp://host/out/tickets: unknown storage scheme ftp://",
        "missing extra": "error: s3://bucket/out/tickets: s3:// needs pyarrow with "
        "S3FileSystem: pip install 'batch_pipeline[s3]'",
    }[case]
    assert len(lines) == 1 and lines[0].startswith(expected), lines


UPLOAD_MB = 192
UPLOAD_SCRIPT = """
import os, resource, sys
from batch_pipeline.core.storage import storage_for
storage = storage_for(sys.argv[1])
block = os.urandom(8 << 20)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
with storage.atomic_write("results/part-0.parquet") as handle:
    for _ in range(int(sys.argv[2]) // 8):
        handle.write(block)
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)
"""


@pytest.mark.slow
def test_uploading_a_large_file_holds_a_part_in_memory_not_the_file(s3, s3_bucket):
    # The uploading process is not the server's, so its peak RSS is the upload's own.
    done = subprocess.run(
        [sys.executable, "-c", UPLOAD_SCRIPT, f"s3://{s3_bucket}/out", str(UPLOAD_MB)],
        capture_output=True,
        text=True,
        check=True,
    )
    grown_mb = int(done.stdout.split()[-1])
    head = s3.client().head_object(Bucket=s3_bucket, Key="out/results/part-0.parquet")
    assert head["ContentLength"] == UPLOAD_MB << 20
    assert grown_mb < 32, f"peak RSS grew {grown_mb} MB uploading {UPLOAD_MB} MB"


@pytest.mark.slow
def test_a_small_object_the_store_refuses_is_named_on_one_line(s3, s3_bucket):
    """A small object's only request is its PUT at close: the store's refusal there still
    names the location, on one line, with no credential in it."""
    storage = storage_for(f"s3://{s3_bucket}/out")
    s3.client().delete_bucket(Bucket=s3_bucket)
    with pytest.raises(StorageLocationError) as raised:
        storage.write_bytes("manifest.json", b"{}")
    message = str(raised.value)
    assert message.startswith(f"s3://{s3_bucket}/out/manifest.json: ")
    assert "\n" not in message
    assert os.environ["AWS_SECRET_ACCESS_KEY"] not in message
