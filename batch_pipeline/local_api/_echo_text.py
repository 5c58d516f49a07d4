"""The echo responder's text: the echoed text cut to a token limit, and exact token counts
from the model's real tokenizer (core.tokens)."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from batch_pipeline.core.tokens import count_tokens as _count_tokens
from batch_pipeline.core.tokens import encoding_for_model

# Batches repeat the same system prompt on every line: count each distinct text once.
count_tokens = lru_cache(maxsize=8192)(_count_tokens)


def max_tokens(body: dict[str, Any], *names: str) -> int | None:
    """The first of `names` that the body sets to a token limit (a non-negative int)."""
    for name in names:
        value = body.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return value
    return None


def _token_ids(encoding: Any, text: str) -> list[int]:
    """`encoding.encode_ordinary(text)`, with a shortcut for plain ASCII text.

    ASCII text needs none of the wrapper's care (no surrogates to replace), so the native
    tokenizer is called directly; any other text, or one the wrapper would refuse (too long,
    too many tokens), takes the public method, with its errors.
    """
    backend = getattr(encoding, "_backend", None)
    runtime = getattr(encoding, "_runtime", None)
    if backend is not None and runtime is not None and len(text) < 100_000 and text.isascii():
        ids = backend.encode(text)
        if isinstance(ids, list) and len(ids) <= (runtime.chunk_limit or 0):
            return ids
    return encoding.encode_ordinary(text)


def _decode(encoding: Any, tokens: list[int]) -> str:
    """The text of `tokens`, as `encoding.decode` gives it (invalid UTF-8 replaced).

    The tokenizer's native decoder is tried first: it is strict, so when it succeeds its
    text is the very one `decode` would build (byte by byte, in Python) from the same bytes.
    """
    backend = getattr(encoding, "_backend", None)
    if backend is not None:
        try:
            text = backend.decode(tokens)
        except Exception:  # invalid UTF-8 at the cut (or no such method): the slow path
            pass
        else:
            if isinstance(text, str):
                return text
    return encoding.decode(tokens)


def echo(text: str, limit: int | None, model: str) -> tuple[str, int, int, bool]:
    """The echoed text cut to `limit` tokens.

    Returns (text, the exact token count of the whole text, that of the echo, whether it
    was cut). A text that may be cut is tokenized once, for both counts and the cut.
    """
    if not text:
        return text, 0, 0, False
    if limit is None:
        tokens = count_tokens(text, model)
        return text, tokens, tokens, False
    encoding = encoding_for_model(model)
    ids = _token_ids(encoding, text)
    if len(ids) <= limit:
        return text, len(ids), len(ids), False
    return _decode(encoding, ids[:limit]), len(ids), limit, True


def echo_last_user(
    texts: list[tuple[Any, str]], limit: int | None, model: str
) -> tuple[str, int, int, bool]:
    """Echo the last text of role `user` among (role, text) pairs, cut to `limit` tokens.

    Returns (the echo, the prompt tokens of all texts, the tokens of the echo, whether it
    was cut); no user text gives an empty echo.
    """
    echo_index = max((i for i, (role, _) in enumerate(texts) if role == "user"), default=-1)
    text, prompt_tokens, echo_tokens, cut = "", 0, 0, False
    for index, (_role, content) in enumerate(texts):
        if index == echo_index:
            text, tokens, echo_tokens, cut = echo(content, limit, model)
        else:
            tokens = count_tokens(content, model) if content else 0
        prompt_tokens += tokens
    return text, prompt_tokens, echo_tokens, cut
