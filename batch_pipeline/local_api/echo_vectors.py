"""The echo responder's vector and classifier endpoints: embeddings are deterministic unit
vectors seeded from the text, moderations flag nothing."""

from __future__ import annotations

import base64
import hashlib
from typing import Any

import numpy as np

from batch_pipeline.local_api._echo_text import count_tokens
from batch_pipeline.local_api.answers import Answer, bad_request

DEFAULT_EMBEDDING_DIMENSIONS = 256
MAX_EMBEDDING_DIMENSIONS = 8192
MODERATION_CATEGORIES = (
    "harassment",
    "harassment/threatening",
    "hate",
    "hate/threatening",
    "illicit",
    "illicit/violent",
    "self-harm",
    "self-harm/instructions",
    "self-harm/intent",
    "sexual",
    "sexual/minors",
    "violence",
    "violence/graphic",
)


def unit_vector(text: str, dimensions: int) -> list[float]:
    """A deterministic unit vector seeded from a hash of `text`."""
    seed = int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")
    vector = np.random.default_rng(seed).standard_normal(dimensions)
    vector /= np.linalg.norm(vector)
    return vector.tolist()


class _BadInput(Exception):
    """An embeddings body the endpoint refuses (its 400 answer)."""

    def __init__(self, message: str, param: str, code: str | None = None) -> None:
        super().__init__(message)
        self.answer = bad_request(message, param, code)


def _embedding_inputs(value: Any) -> list[Any]:
    """The inputs of an embeddings body: one string, one token array, or a list of them."""
    if isinstance(value, str) or (
        isinstance(value, list) and value and all(isinstance(v, int) for v in value)
    ):
        return [value]
    if isinstance(value, list) and value:
        return value
    raise _BadInput(
        "'input' must be a string or a non-empty array.", "input", "missing_required_parameter"
    )


def _dimensions(body: dict[str, Any]) -> int:
    dimensions = body.get("dimensions", DEFAULT_EMBEDDING_DIMENSIONS)
    if (
        not isinstance(dimensions, int)
        or isinstance(dimensions, bool)
        or not 1 <= dimensions <= MAX_EMBEDDING_DIMENSIONS
    ):
        raise _BadInput(
            f"'dimensions' must be an integer from 1 to {MAX_EMBEDDING_DIMENSIONS}.", "dimensions"
        )
    return dimensions


def _encoding_format(body: dict[str, Any]) -> str:
    encoding_format = body.get("encoding_format", "float")
    if encoding_format not in ("float", "base64"):
        raise _BadInput("'encoding_format' must be 'float' or 'base64'.", "encoding_format")
    return encoding_format


def _text_and_tokens(item: Any, model: str) -> tuple[str, int]:
    """The text an input's vector is seeded from, and its prompt tokens."""
    if isinstance(item, str):
        return item, count_tokens(item, model) if item else 0
    if isinstance(item, list) and all(isinstance(t, int) for t in item):
        return " ".join(map(str, item)), len(item)
    raise _BadInput("Each input must be a string or an array of tokens.", "input")


def _encoded(vector: list[float], encoding_format: str) -> Any:
    if encoding_format == "base64":
        return base64.b64encode(np.asarray(vector, "<f4").tobytes()).decode()
    return vector


def embeddings(body: dict[str, Any], key: str) -> Answer:
    """Answer a `/v1/embeddings` body."""
    model = str(body.get("model") or "echo")
    try:
        inputs = _embedding_inputs(body.get("input"))
        dimensions = _dimensions(body)
        encoding_format = _encoding_format(body)
        data = []
        prompt_tokens = 0
        for index, item in enumerate(inputs):
            text, tokens = _text_and_tokens(item, model)
            prompt_tokens += tokens
            embedding = _encoded(unit_vector(text, dimensions), encoding_format)
            data.append({"object": "embedding", "index": index, "embedding": embedding})
    except _BadInput as exc:
        return exc.answer
    return 200, {
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    }


def moderations(body: dict[str, Any], key: str) -> Answer:
    """Answer a `/v1/moderations` body: nothing flagged."""
    value = body.get("input")
    inputs = value if isinstance(value, list) else [value]
    if value is None or not inputs:
        return bad_request("'input' is required.", "input", "missing_required_parameter")
    result = {
        "flagged": False,
        "categories": dict.fromkeys(MODERATION_CATEGORIES, False),
        "category_scores": dict.fromkeys(MODERATION_CATEGORIES, 0.0),
        "category_applied_input_types": {c: ["text"] for c in MODERATION_CATEGORIES},
    }
    return 200, {
        "id": f"modr-{key}",
        "model": str(body.get("model") or "omni-moderation-latest"),
        "results": [dict(result) for _ in inputs],
    }
