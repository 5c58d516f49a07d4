"""The reliability checks of a pipeline on `backend.provider: anthropic`, whose batches carry
no metadata: a batch is told to be a shard's by the tag of its results' custom_ids."""

from __future__ import annotations

from collections import Counter
from typing import Any

from batch_pipeline.core.backends._anthropic_ids import submission_tag, tag_of
from batch_pipeline.core.pipeline import Pipeline

MODEL = "claude-haiku-4-5"


def anthropic_overrides(base_url: str) -> dict[str, Any]:
    """The spec sections that move the ticket pipeline to Anthropic's Message Batches."""
    return {
        "request": {
            "endpoint": "/v1/messages",
            "model": MODEL,
            "system": "You label support tickets.",
            "prompt": "Subject: {subject}\n\n{body}",
            "params": {"max_tokens": 200},
        },
        "backend": {"provider": "anthropic", "base_url": base_url},
    }


def anthropic_batches_by_shard(
    base_url: str, key: str, pipeline: Pipeline
) -> tuple[Counter[str], set[str]]:
    """How many ended batches on the service each shard of the pipeline has (by the tags of
    all its submissions), and those batches' ids."""
    tags = {
        submission_tag(f"{shard.shard_id}#{n}"): shard.shard_id
        for shard in pipeline.ledger.shards(pipeline.spec.name)
        for n in range(1, shard.submissions + 1)
    }
    import anthropic  # only the Anthropic scenarios need the SDK

    client = anthropic.Anthropic(base_url=base_url.removesuffix("/v1"), api_key=key)
    per_shard: Counter[str] = Counter()
    ids = set()
    for batch in client.messages.batches.list(limit=100):
        assert batch.processing_status == "ended", f"{batch.id} still {batch.processing_status}"
        first = next(iter(client.messages.batches.results(batch.id)), None)
        owner = tags.get(tag_of(first.custom_id) or "") if first else None
        if owner is not None:
            per_shard[owner] += 1
            ids.add(batch.id)
    return per_shard, ids
