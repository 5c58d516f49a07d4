"""Locations given as URIs (`s3://`, `gs://`, `az://`, `abfs://`, `file://`) or plain paths,
and the pyarrow filesystem that reaches an object store's URI.

Each cloud is reached through pyarrow's own native filesystem, imported only when such a URI is
used; a pyarrow built without it is named by the extra that brings one. Credentials come from
the provider's own environment and credential chain, never from the spec: `storage_options`
holds only non-secret settings (an endpoint, a region), and a secret-looking key there is refused.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

# scheme -> the extra (`pip install 'batch_pipeline[extra]'`) that brings its filesystem
EXTRA_FOR_SCHEME = {
    "s3": "s3",
    "gs": "gcs",
    "gcs": "gcs",
    "az": "azure",
    "abfs": "azure",
    "abfss": "azure",
}

# The settings `storage_options` may hold per extra: none of them is a secret.
OPTIONS_FOR_EXTRA = {
    "s3": ("endpoint_url", "region", "anonymous", "role_arn", "force_virtual_addressing"),
    "gcs": ("endpoint_url", "project_id", "anonymous", "default_bucket_location"),
    "azure": ("account_name", "endpoint_url", "blob_storage_authority", "dfs_storage_authority"),
}
# The AWS SDK's default strategy waits 25 ms * 2**n before its n-th retry: 12 attempts wait
# 25 ms * (2**11 - 1), about 51 s in all, so a store away for under a minute is ridden through.
S3_ATTEMPTS = 12
S3_RETRY_SECONDS = 0.025 * (2 ** (S3_ATTEMPTS - 1) - 1)
_SECRET_LOOKING = re.compile(r"secret|key|token|password|credential|sas|session", re.IGNORECASE)
_URI = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://(.*)$")
_REQUEST_ID = re.compile(r"\s*\(Request ID: [^)]*\)")
# Credential variables whose values are blanked out of any message that would quote them.
_CREDENTIAL_VARIABLES = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AZURE_CLIENT_SECRET",
    "AZURE_STORAGE_ACCOUNT_KEY",
)


class StorageLocationError(ValueError):
    """A location that cannot be used: the message names it and says why (never a credential)."""


def scheme_of(location: str) -> str:
    """The location's URI scheme in lower case, or "" for a plain path."""
    match = _URI.match(location)
    return match.group(1).lower() if match else ""


def is_remote(location: str) -> bool:
    """Whether the location is in an object store (any URI but file://)."""
    return scheme_of(location) not in ("", "file")


def local_path_of(location: str) -> str:
    """A plain path or file:// URI as a path."""
    return location[len("file://") :] if scheme_of(location) == "file" else location


def join(location: str, *parts: str) -> str:
    """The location with `/`-separated parts appended."""
    return "/".join([location.rstrip("/"), *(part.strip("/") for part in parts if part)])


def check_key(rel: str) -> tuple[str, ...]:
    """The parts of a relative key; a key that would leave the root is a ValueError."""
    parts = PurePosixPath(rel.replace("\\", "/")).parts
    if PurePosixPath(rel).is_absolute() or ".." in parts:
        raise ValueError(f"storage paths are relative and stay inside the root, not {rel!r}")
    return parts


def check_options(location: str, options: Mapping[str, Any]) -> None:
    """Refuse storage options that hold a secret or that the location's store does not take
    (ValueError naming the option)."""
    for name in options:
        if _SECRET_LOOKING.search(name):
            raise ValueError(
                f"{name}: a credential never goes in the spec; use the provider's "
                "environment variables or credential chain (AWS_ACCESS_KEY_ID, "
                "GOOGLE_APPLICATION_CREDENTIALS, AZURE_CLIENT_ID, ...)"
            )
    if not options:
        return
    scheme = scheme_of(location)
    if scheme not in EXTRA_FOR_SCHEME:
        raise ValueError(f"they apply to object storage, not to {location!r}")
    allowed = OPTIONS_FOR_EXTRA[EXTRA_FOR_SCHEME[scheme]]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(
            f"{unknown[0]}: unknown option for {scheme}:// (takes {', '.join(allowed)})"
        )


@dataclass(frozen=True)
class RemoteLocation:
    """An object-store URI split into its scheme, container (bucket) and path inside it."""

    uri: str
    scheme: str
    container: str
    path: str  # the pyarrow path: "container/key/prefix", without a trailing slash
    account: str | None = None  # Azure's storage account, where the URI names it

    @classmethod
    def parse(cls, uri: str) -> RemoteLocation:
        match = _URI.match(uri)
        scheme = scheme_of(uri)
        if match is None or scheme not in EXTRA_FOR_SCHEME:
            known = ", ".join(f"{name}://" for name in EXTRA_FOR_SCHEME)
            raise StorageLocationError(
                f"{uri}: unknown storage scheme {scheme}:// (takes a local path, file://, {known})"
            )
        authority, _, key = match.group(2).partition("/")
        container, account = authority, None
        if "@" in authority:  # abfs://container@account.dfs.core.windows.net/path
            container, _, host = authority.partition("@")
            account = host.split(".", 1)[0]
        if not container:
            raise StorageLocationError(f"{uri}: names no bucket or container")
        path = "/".join(part for part in (container, key.strip("/")) if part)
        return cls(
            uri=uri.rstrip("/"), scheme=scheme, container=container, path=path, account=account
        )


def filesystem_for(location: RemoteLocation, options: Mapping[str, Any] | None = None) -> Any:
    """The pyarrow filesystem that reaches `location` with the provider's own credential
    chain, `options` (non-secret settings) and the standard environment variables."""
    extra = EXTRA_FOR_SCHEME[location.scheme]
    options = dict(options or {})
    builders = {"s3": _s3_filesystem, "gcs": _gcs_filesystem, "azure": _azure_filesystem}
    return builders[extra](location, options)


def _native(name: str, location: RemoteLocation) -> Any:
    """pyarrow's filesystem class `name`, or a one-line error naming the extra to install."""
    import pyarrow.fs

    try:
        return getattr(pyarrow.fs, name)
    except (ImportError, AttributeError):
        extra = EXTRA_FOR_SCHEME[location.scheme]
        raise StorageLocationError(
            f"{location.uri}: {location.scheme}:// needs pyarrow with {name}: "
            f"pip install 'batch_pipeline[{extra}]'"
        ) from None


def _endpoint(options: dict[str, Any], *env_names: str) -> dict[str, Any]:
    """`endpoint_override` and `scheme` from the option `endpoint_url` or the first of the
    environment variables set (an endpoint is `http(s)://host:port` or `host:port`)."""
    endpoint = options.pop("endpoint_url", None)
    for name in env_names:
        endpoint = endpoint or os.environ.get(name)
    if not endpoint:
        return {}
    scheme, sep, rest = endpoint.partition("://")
    if not sep:
        return {"endpoint_override": endpoint}
    return {"endpoint_override": rest.rstrip("/"), "scheme": scheme}


def _s3_filesystem(location: RemoteLocation, options: dict[str, Any]) -> Any:
    """S3 (and S3-compatible stores): the AWS SDK's chain finds the keys (environment,
    ~/.aws, instance or task roles); endpoint and region as the AWS CLI reads them. A request
    that fails for the network or the store's 5xx/throttling is retried by the SDK for about
    `S3_RETRY_SECONDS` in all before the error reaches the pipeline."""
    s3_filesystem = _native("S3FileSystem", location)
    settings = _endpoint(options, "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
    # Parts go up one after another: with background writes, Arrow queues every part a fast
    # local read hands it, so uploading a finished results file held most of it in memory.
    settings["background_writes"] = False
    # An object smaller than a part (10 MB) goes up in one PUT when it is closed, not as a
    # multipart upload opened at once (three requests): a small day's files, manifests, id
    # files. A store keeps no PUT whose body was cut short, and a write abandoned before its
    # first part leaves nothing at all. A refusal then comes at close (`ObjectStorage` names
    # the location either way).
    settings["allow_delayed_open"] = True
    settings["retry_strategy"] = _native("AwsDefaultS3RetryStrategy", location)(
        max_attempts=S3_ATTEMPTS
    )
    region = options.pop("region", None)
    region = region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region:
        settings["region"] = region
    return s3_filesystem(**settings, **options)


def _gcs_filesystem(location: RemoteLocation, options: dict[str, Any]) -> Any:
    """Google Cloud Storage: Google's default credentials (GOOGLE_APPLICATION_CREDENTIALS,
    the metadata server); an emulator through `endpoint_url` or STORAGE_EMULATOR_HOST. An
    emulator named by STORAGE_EMULATOR_HOST (and no `endpoint_url`) is reached anonymously
    unless the option `anonymous` says otherwise, as in Google's own client libraries: an
    emulator takes no credentials, and looking for them off Google Cloud waits on a metadata
    server that is not there. An emulator named by `endpoint_url` needs `anonymous: true`."""
    gcs_filesystem = _native("GcsFileSystem", location)
    if os.environ.get("STORAGE_EMULATOR_HOST") and "endpoint_url" not in options:
        options.setdefault("anonymous", True)
    return gcs_filesystem(**_endpoint(options, "STORAGE_EMULATOR_HOST"), **options)


def _azure_filesystem(location: RemoteLocation, options: dict[str, Any]) -> Any:
    """Azure Blob Storage / ADLS Gen2: Azure's default credential chain (AZURE_CLIENT_ID,
    AZURE_TENANT_ID, AZURE_CLIENT_SECRET, workload or managed identity), or the account key
    in AZURE_STORAGE_ACCOUNT_KEY; the account from the URI, the option or
    AZURE_STORAGE_ACCOUNT_NAME."""
    azure_filesystem = _native("AzureFileSystem", location)
    account = (
        options.pop("account_name", None)
        or location.account
        or os.environ.get("AZURE_STORAGE_ACCOUNT_NAME")
    )
    if not account:
        raise StorageLocationError(
            f"{location.uri}: names no storage account; use abfs://container@ACCOUNT.dfs."
            "core.windows.net/..., storage_options.account_name or AZURE_STORAGE_ACCOUNT_NAME"
        )
    settings: dict[str, Any] = {"account_name": account}
    endpoint = _endpoint(options, "AZURE_STORAGE_ENDPOINT")
    if endpoint:  # an emulator (Azurite) or a sovereign cloud
        authority = endpoint["endpoint_override"]
        scheme = endpoint.get("scheme", "https")
        settings.update(
            blob_storage_authority=authority,
            dfs_storage_authority=authority,
            blob_storage_scheme=scheme,
            dfs_storage_scheme=scheme,
        )
    key = os.environ.get("AZURE_STORAGE_ACCOUNT_KEY")
    if key:
        settings["account_key"] = key
    return azure_filesystem(**settings, **options)


def describe(error: BaseException) -> str:
    """A store error on one line, without request ids or any credential's value."""
    text = " ".join(str(error).split())
    text = _REQUEST_ID.sub("", text)
    for name in _CREDENTIAL_VARIABLES:
        value = os.environ.get(name)
        if value and len(value) >= 4:
            text = text.replace(value, "***")
    if "ACCESS_DENIED" in text or "InvalidAccessKeyId" in text or "403" in text:
        text = f"access refused (check the credentials in the environment): {text}"
    return text
