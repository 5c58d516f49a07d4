"""The tests' S3-compatible server behaves as S3 does where the tests rely on it."""

import os

import botocore.exceptions
import pytest

from batch_pipeline_tests.s3_server import _decoded_body


@pytest.mark.slow
def test_the_environment_points_at_a_server_holding_the_bucket(s3, s3_bucket, monkeypatch):
    assert os.environ["AWS_ENDPOINT_URL"] == s3.endpoint
    s3.client().put_object(Bucket=s3_bucket, Key="a/b.txt", Body=b"x")
    assert s3.keys(s3_bucket) == ["a/b.txt"]
    assert s3.pending_uploads(s3_bucket) == []


@pytest.mark.slow
def test_checking_credentials_refuses_keys_the_server_never_issued(s3, s3_bucket):
    with s3.checking_credentials(), pytest.raises(botocore.exceptions.ClientError) as error:
        s3.client().list_objects_v2(Bucket=s3_bucket)
    assert error.value.response["Error"]["Code"] == "InvalidAccessKeyId"
    assert s3.keys(s3_bucket) == []  # served again once the block ends


def test_an_aws_chunked_body_is_decoded_to_its_bytes_without_framing_or_trailer():
    chunks = [b"a" * 65536, b"\r\n0\r\n" * 7, b"z"]
    framed = b"".join(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n" for chunk in chunks)
    trailer = b"0\r\nx-amz-checksum-crc64nvme:AAAAAAAAAAA=\r\n\r\n"
    assert _decoded_body(None, framed + trailer) == b"".join(chunks)
    assert _decoded_body(None, b"") == b""


@pytest.mark.slow
def test_what_the_aws_sdk_uploads_in_chunks_is_stored_byte_for_byte(s3, s3_bucket, monkeypatch):
    """pyarrow's AWS SDK sends aws-chunked bodies with a checksum trailer, as one PUT (under
    a part) and as a multipart upload; the server decodes them with `_decoded_body`, and
    boto3 reads back exactly what was written."""
    from moto.s3.responses import S3Response

    from batch_pipeline.core.storage_uri import RemoteLocation, filesystem_for

    decoded: list[int] = []

    def counted(self, body):
        decoded.append(1)
        return _decoded_body(self, body)

    monkeypatch.setattr(S3Response, "_handle_encoded_body", counted)

    filesystem = filesystem_for(RemoteLocation.parse(f"s3://{s3_bucket}"))
    for key, size in (("small.bin", 3 * 1024 * 1024 + 17), ("large.bin", 23 * 1024 * 1024)):
        data = os.urandom(size)
        with filesystem.open_output_stream(f"{s3_bucket}/{key}") as stream:
            stream.write(data)
        stored = s3.client().get_object(Bucket=s3_bucket, Key=key)["Body"].read()
        assert stored == data, key
    assert len(decoded) >= 4  # the PUT, and the large file's three parts
    assert s3.pending_uploads(s3_bucket) == []
