"""Token counts with the encodings that ship inside `bpe-openai` (works offline)."""

from __future__ import annotations

from functools import lru_cache

import bpe_openai

DEFAULT_ENCODING = "o200k_base"


@lru_cache(maxsize=64)
def encoding_for_model(model: str) -> bpe_openai.Encoding:
    """The model's tokenizer; models the package does not know (newer or self-hosted) get o200k."""
    try:
        return bpe_openai.encoding_for_model(model)
    except Exception:  # the package raises its own errors for unknown names
        return bpe_openai.get_encoding(DEFAULT_ENCODING)


def count_tokens(text: str, model: str) -> int:
    """The exact number of tokens `text` makes for `model`."""
    return len(encoding_for_model(model).encode_ordinary(text))
