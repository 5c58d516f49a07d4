"""A build's manifest: what one attempt of a partition's generation holds (its shards, counts
and cost estimates), written after its shards so that a missing manifest means "not built"."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from batch_pipeline.core.layout import manifest_path
from batch_pipeline.core.prices import cost_usd, price_for
from batch_pipeline.core.requests import MAX_OUTPUT_PARAMS, max_output_tokens
from batch_pipeline.core.spec import PipelineSpec
from batch_pipeline.core.storage import StorageRoot
from batch_pipeline.core.types import ShardInfo


@dataclass(frozen=True)
class ShardEstimate:
    """What a shard is estimated to cost; None where the model's price is unknown."""

    shard_id: str
    estimated_output_tokens: int
    estimated_cost_live_usd: float | None
    estimated_cost_batch_usd: float | None


# The ShardInfo fields a manifest lists per shard; the rest are the manifest's own.
_SHARD_FIELDS = ("shard_id", "index", "path", "rows", "bytes", "sha256", "estimated_input_tokens")
_COMMON_FIELDS = ("pipeline", "partition", "generation", "attempt", "model", "endpoint")


@dataclass(frozen=True)
class Manifest:
    """What one attempt of a partition's generation holds: its shards, counts and estimates."""

    pipeline: str
    partition: str
    generation: int
    attempt: int
    model: str
    endpoint: str
    source_rows: int
    requests: int
    rejected: int
    shards: tuple[ShardInfo, ...]
    estimates: tuple[ShardEstimate, ...]
    path: str  # where this manifest is stored, relative to the storage root
    notes: tuple[str, ...] = ()
    rows_without_day: int = 0  # source rows of no partition at all (counted by first builds)

    @property
    def bytes(self) -> int:
        return sum(shard.bytes for shard in self.shards)

    @property
    def estimated_input_tokens(self) -> int:
        return sum(shard.estimated_input_tokens for shard in self.shards)

    @property
    def estimated_output_tokens(self) -> int:
        return sum(estimate.estimated_output_tokens for estimate in self.estimates)

    @property
    def estimated_cost_live_usd(self) -> float | None:
        return _total([estimate.estimated_cost_live_usd for estimate in self.estimates])

    @property
    def estimated_cost_batch_usd(self) -> float | None:
        return _total([estimate.estimated_cost_batch_usd for estimate in self.estimates])

    @property
    def totals(self) -> dict[str, Any]:
        return {
            "shards": len(self.shards),
            "requests": self.requests,
            "bytes": self.bytes,
            "estimated_input_tokens": self.estimated_input_tokens,
            "estimated_output_tokens": self.estimated_output_tokens,
            "estimated_cost_live_usd": self.estimated_cost_live_usd,
            "estimated_cost_batch_usd": self.estimated_cost_batch_usd,
        }

    def to_json(self) -> bytes:
        shards = [
            {
                **{name: getattr(shard, name) for name in _SHARD_FIELDS},
                **{k: v for k, v in dataclasses.asdict(estimate).items() if k != "shard_id"},
            }
            for shard, estimate in zip(self.shards, self.estimates, strict=True)
        ]
        document = {
            **{
                f.name: getattr(self, f.name)
                for f in dataclasses.fields(self)
                if f.name not in ("shards", "estimates", "notes")
            },
            "shards": shards,
            "totals": self.totals,
            "notes": list(self.notes),
        }
        return orjson.dumps(document, option=orjson.OPT_INDENT_2) + b"\n"

    @classmethod
    def from_json(cls, data: bytes | str) -> Manifest:
        document = orjson.loads(data)
        common = {name: document[name] for name in _COMMON_FIELDS}
        shards = tuple(
            ShardInfo(**common, **{name: shard[name] for name in _SHARD_FIELDS})
            for shard in document["shards"]
        )
        estimates = tuple(
            ShardEstimate(
                shard_id=shard["shard_id"],
                **{
                    f.name: shard[f.name]
                    for f in dataclasses.fields(ShardEstimate)
                    if f.name != "shard_id"
                },
            )
            for shard in document["shards"]
        )
        return cls(
            **common,
            source_rows=document["source_rows"],
            requests=document["requests"],
            rejected=document["rejected"],
            shards=shards,
            estimates=estimates,
            path=document["path"],
            notes=tuple(document.get("notes", ())),
            rows_without_day=document.get("rows_without_day", 0),
        )


def _total(costs: list[float | None]) -> float | None:
    """The sum of the costs, or None if any is unknown."""
    return None if None in costs else round(sum(costs), 6)  # type: ignore[arg-type]


def load_manifest(
    storage: StorageRoot,
    partition: str,
    generation: int,
    attempt: int,
    first_index: int | None = None,
) -> Manifest:
    """A stored manifest (FileNotFoundError if that build never completed)."""
    path = manifest_path(partition, generation, attempt, first_index)
    return Manifest.from_json(storage.read_bytes(path))


def write_manifest(
    spec: PipelineSpec,
    storage: StorageRoot,
    path: str,
    shards: Sequence[ShardInfo],
    *,
    partition: str,
    generation: int,
    attempt: int,
    source_rows: int,
    rejected: int,
    rows_without_day: int = 0,
) -> Manifest:
    """Estimate the shards' costs and write their manifest (atomically, after the shards)."""
    request = spec.request
    output_per_request = max_output_tokens(request.params)
    manifest = Manifest(
        pipeline=spec.name,
        partition=partition,
        generation=generation,
        attempt=attempt,
        model=request.model,
        endpoint=request.endpoint.value,
        source_rows=source_rows,
        requests=sum(shard.rows for shard in shards),
        rejected=rejected,
        shards=tuple(shards),
        estimates=tuple(_estimate(spec, shard, output_per_request or 0) for shard in shards),
        path=path,
        notes=_notes(spec, rows_without_day, output_per_request),
        rows_without_day=rows_without_day,
    )
    storage.write_bytes(path, manifest.to_json())
    return manifest


def _notes(
    spec: PipelineSpec, rows_without_day: int, output_per_request: int | None
) -> tuple[str, ...]:
    """What a reader of the manifest must know to read its counts and estimates right."""
    notes = []
    if rows_without_day:
        notes.append(
            f"{rows_without_day} source rows fall on no day (column "
            f"{spec.source.partition_column!r} is null, or text not starting with a date): "
            "no partition's requests or results hold them"
        )
    if output_per_request is None:
        notes.append(
            f"request.params sets none of {', '.join(MAX_OUTPUT_PARAMS)}: estimated output "
            "tokens are 0, so the estimated costs cover input tokens only"
        )
    if price_for(spec.request.model, spec.prices) is None:
        notes.append(f"no price is known for model {spec.request.model!r}: costs are unknown")
    return tuple(notes)


def _estimate(spec: PipelineSpec, shard: ShardInfo, output_per_request: int) -> ShardEstimate:
    """A shard's output tokens (at most `output_per_request` a row) and its costs."""
    output_tokens = shard.rows * output_per_request
    live, batch = (
        cost_usd(
            spec.request.model,
            shard.estimated_input_tokens,
            output_tokens,
            batch=batch,
            overrides=spec.prices,
        )
        for batch in (False, True)
    )
    return ShardEstimate(
        shard.shard_id,
        output_tokens,
        None if live is None else round(live, 6),
        None if batch is None else round(batch, 6),
    )
