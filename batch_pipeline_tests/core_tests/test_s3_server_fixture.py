"""The tests' S3-compatible server behaves as S3 does where the tests rely on it."""

import botocore.exceptions
import pytest

pytestmark = pytest.mark.slow


def test_the_environment_points_at_a_server_holding_the_bucket(s3, s3_bucket, monkeypatch):
    import os

    assert os.environ["AWS_ENDPOINT_URL"] == s3.endpoint
    s3.client().put_object(Bucket=s3_bucket, Key="a/b.txt", Body=b"x")
    assert s3.keys(s3_bucket) == ["a/b.txt"]
    assert s3.pending_uploads(s3_bucket) == []


def test_checking_credentials_refuses_keys_the_server_never_issued(s3, s3_bucket):
    with s3.checking_credentials(), pytest.raises(botocore.exceptions.ClientError) as error:
        s3.client().list_objects_v2(Bucket=s3_bucket)
    assert error.value.response["Error"]["Code"] == "InvalidAccessKeyId"
    assert s3.keys(s3_bucket) == []  # served again once the block ends
