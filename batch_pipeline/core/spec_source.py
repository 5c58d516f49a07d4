"""The spec's `source` section: where the rows come from (files, a query, or a Dagster
asset) and which columns key and partition them."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, ValidationInfo, WithJsonSchema, field_validator, model_validator

from batch_pipeline.core._spec_base import STORAGE_OPTIONS_HELP, _env_name, _Section, _url_from_env
from batch_pipeline.core.storage_uri import check_options


class SqlSource(_Section):
    url: str | None = Field(default=None, description="SQLAlchemy URL of the database.")
    url_env: str | None = Field(
        default=None,
        description="The NAME of an environment variable holding the URL, so that a "
        "password stays out of the spec.",
    )
    query: str = Field(description="A SELECT returning the source rows.")

    _check_env = field_validator("url_env")(_env_name)

    @model_validator(mode="after")
    def _one_url(self) -> SqlSource:
        if (self.url is None) == (self.url_env is None):
            raise ValueError("give exactly one of url and url_env")
        return self

    @property
    def resolved_url(self) -> str:
        """The URL, read from `url_env` when the spec names a variable."""
        return self.url or _url_from_env(self.url_env or "", "source.sql.url_env")


# `source.asset_key` as written: one key (its parts joined by '/') or a list of them.
_ASSET_KEYS_SCHEMA = {
    "anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}],
    "default": [],
}


class SourceSpec(_Section):
    path: str | None = Field(
        default=None,
        description="A file or folder of .parquet, .csv or .jsonl files: a local path or an "
        "object store's URI (s3://, gs://, az://, abfs://, file://).",
    )
    storage_options: dict[str, Any] = Field(default_factory=dict, description=STORAGE_OPTIONS_HELP)
    sql: SqlSource | None = Field(
        default=None, description="A database query instead of files: {url or url_env, query}."
    )
    key: str = Field(description="The column holding each row's unique key.")
    partition_column: str | None = Field(
        default=None,
        description="A date, timestamp or ISO text column: a row belongs to the partition "
        "holding its day. Required unless `partitions` is none.",
    )
    asset_key: Annotated[tuple[str, ...], WithJsonSchema(_ASSET_KEYS_SCHEMA)] = Field(
        default=(),
        description="The Dagster asset (or assets) the source rows come from, each as a "
        "key's parts joined by '/' (e.g. raw/tickets); in Python also an AssetKey or an "
        "AssetSpec. The requests asset depends on them; without path or sql, the rows are "
        "the one named asset's partition, loaded through that asset's IO manager.",
    )
    automation: Literal["eager", "on_cron"] | None = Field(
        default=None,
        description="Materialize requests and batches when the source asset updates: eager "
        "(as soon as it does) or on_cron (at schedule.cron, once it has updated since); the "
        "nightly schedule stays. Needs asset_key.",
    )

    @field_validator("asset_key", mode="before")
    @classmethod
    def _keys_as_text(cls, value: Any) -> Any:
        return tuple(asset_key_text(key) for key in _one_or_many(value))

    @model_validator(mode="after")
    def _one_location(self) -> SourceSpec:
        if self.path is not None and self.sql is not None:
            raise ValueError("give exactly one of source.path and source.sql")
        if self.path is None and self.sql is None and len(self.asset_key) != 1:
            raise ValueError(
                "give source.path or source.sql, or name the one asset the rows come from "
                "in source.asset_key"
            )
        if self.automation is not None and not self.asset_key:
            raise ValueError(
                "source.automation reacts to the source asset's updates: name it in "
                "source.asset_key"
            )
        return self

    @property
    def from_asset(self) -> str | None:
        """The asset key (as text) whose partition the rows are loaded from, when the spec
        names neither a path nor a query."""
        if self.path is None and self.sql is None:
            return self.asset_key[0]
        return None

    @field_validator("storage_options")
    @classmethod
    def _options_fit_the_store(cls, options: dict[str, Any], info: ValidationInfo) -> Any:
        check_options(info.data.get("path") or "", options)
        return options


def _one_or_many(value: Any) -> list[Any]:
    """One asset key, or a list or tuple of them."""
    if value is None:
        return []
    one = isinstance(value, str) or hasattr(getattr(value, "key", value), "path")
    return [value] if one or not isinstance(value, list | tuple) else list(value)


def asset_key_text(key: Any) -> str:
    """An asset key as its parts joined by '/': from that text itself, or from an object
    with a `path` (Dagster's AssetKey) or a `key.path` (an AssetSpec, an AssetsDefinition)."""
    path = getattr(getattr(key, "key", key), "path", None)
    if isinstance(path, list | tuple) and path and all(isinstance(p, str) for p in path):
        return "/".join(path)
    if isinstance(key, str) and key.strip("/") and "//" not in key:
        return key.strip("/")
    raise ValueError(
        f"{key!r} is not an asset key: give its parts joined by '/', an AssetKey or an AssetSpec"
    )
