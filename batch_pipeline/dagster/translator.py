"""`BatchPipelineTranslator`: a pipeline spec and a role -> the Dagster `AssetSpec`."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Literal

import dagster as dg

from batch_pipeline.core.spec import PipelineSpec

Role = Literal["requests", "batches", "results"]
ROLES: tuple[Role, ...] = ("requests", "batches", "results")

_UPSTREAM: dict[str, Role | None] = {"requests": None, "batches": "requests", "results": "batches"}

_DESCRIPTIONS = {
    "requests": "JSONL request shards built and validated from the source rows of the day, "
    "within the Batch API's limits, with a manifest and a cost estimate.",
    "batches": "The day's shards submitted to the Batch API; the run returns at once and the "
    "sensor watches the batches.",
    "results": "Every source row of the day with its status and answer, as Parquet, joined "
    "on custom_id once all of the day's batches have settled.",
}


@dataclass(frozen=True)
class BatchPipelineTranslator:
    """Turns a pipeline spec into the spec of each of its three assets.

    Subclass and override `get_asset_spec`, starting from
    `super().get_asset_spec(spec, role).replace_attributes(...)`.
    """

    def get_asset_spec(self, spec: PipelineSpec, role: str) -> dg.AssetSpec:
        """The asset spec of `role` (requests, batches or results) of the pipeline `spec`."""
        if role not in _UPSTREAM:
            raise ValueError(
                f"unknown role {role!r} for pipeline {spec.name!r}; use one of {list(ROLES)}"
            )
        upstream = _UPSTREAM[role]
        return dg.AssetSpec(
            key=dg.AssetKey([spec.name, role]),
            deps=[self.get_asset_spec(spec, upstream).key]
            if upstream
            else [dg.AssetKey.from_user_string(key) for key in spec.source.asset_key],
            description=_DESCRIPTIONS[role],
            group_name=spec.name,
            kinds={provider_kind(spec.backend.provider)},
            code_version=spec_version(spec),
            metadata={
                "provider": spec.backend.provider,
                "model": spec.request.model,
                "endpoint": spec.request.endpoint.value,
                "batch_pipeline/spec": dg.MetadataValue.json(spec_as_json(spec)),
            },
        )


def provider_kind(provider: str) -> str:
    """The Dagster kind an asset shows for the Batch API it runs on: the provider's name
    (`openai`, `azure`, `anthropic` get Dagster's icons; `local` is the local Batch API),
    reduced to the characters a kind tag allows."""
    return re.sub(r"[^a-z0-9_-]+", "_", provider.lower()) or "batch_api"


def spec_as_json(spec: PipelineSpec) -> dict:
    """The spec as plain JSON, database passwords masked (the API key is only named in it)."""
    data = spec.model_dump(mode="json")
    if (data["source"].get("sql") or {}).get("url"):
        data["source"]["sql"]["url"] = _without_password(data["source"]["sql"]["url"])
    if data["ledger"].get("url"):
        data["ledger"]["url"] = _without_password(data["ledger"]["url"])
    return data


# Query parameters of database URLs shown as they are; every other one is masked, since
# drivers take credentials under many names (odbc_connect, credentials_base64, ...).
_SHOWN_QUERY_KEYS = frozenset(
    {
        "host",
        "hostaddr",
        "port",
        "dbname",
        "database",
        "sslmode",
        "application_name",
        "connect_timeout",
        "target_session_attrs",
        "charset",
        "driver",
    }
)


def _without_password(url: str) -> str:
    """The URL with its password masked, and every query parameter but a few harmless ones
    (host, port, database, TLS mode...). SQLAlchemy loads only for a spec that names a
    database."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except ArgumentError:
        return "***"  # not a URL SQLAlchemy understands: show nothing of it
    hidden = [name for name in parsed.query if name.lower() not in _SHOWN_QUERY_KEYS]
    if hidden:
        parsed = parsed.update_query_dict(dict.fromkeys(hidden, "***"))
    return parsed.render_as_string(hide_password=True)


def spec_version(spec: PipelineSpec) -> str:
    """A short hash of the spec: the assets' code version, so a changed spec shows as such.
    Where the Batch API is served from is left out: moving it changes no result."""
    data = spec_as_json(spec)
    data["backend"].pop("base_url", None)
    text = json.dumps(data, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
