"""Token counts with the encodings that ship inside `bpe-openai` (works offline).

Exact tokenization of every row costs more than building the whole request file, so there
are three tiers, each used where it is good enough:

- `upper_bound_tokens`: the UTF-8 byte count (every BPE token is at least one byte) plus the
  request's framing overhead. Free; it decides the context-window check for nearly every row.
- `estimate_tokens`: ceil(bytes / 4) plus the overhead, OpenAI's rule of thumb for English
  (close for code and European languages, low for CJK text). Free; used for the manifest's
  token and cost estimates when no enqueued-token budget is set.
- `count_tokens`: the real count (about 10 µs for a 300-character row), for rows whose upper
  bound does not fit the context window (a row near the limit), where the answer decides
  whether the row is rejected, and for every row under an enqueued-token budget
  (`limits.enqueued_tokens`), which the provider enforces on its own count.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import lru_cache
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from batch_pipeline.core.types import Endpoint

if TYPE_CHECKING:
    import bpe_openai

DEFAULT_ENCODING = "o200k_base"
BYTES_PER_TOKEN = 4
DEFAULT_CONTEXT_WINDOW = 128_000

# Chat formatting: each message costs its role plus ~3 framing tokens, and the reply is primed
# with 3 more (OpenAI's cookbook figures); generous enough to be used in the upper bound too.
TOKENS_PER_MESSAGE = 4
TOKENS_PER_REPLY = 3
# The instructions Anthropic puts before a request's tools, in input tokens (its figures for
# Claude 4 models): fewer when the call is forced (`tool_choice` any or tool).
TOOL_PROMPT_TOKENS = 346
FORCED_TOOL_PROMPT_TOKENS = 313

CONTEXT_WINDOWS: dict[str, int] = {
    "gpt-4o": 128_000,
    "gpt-4o-mini": 128_000,
    "gpt-4.1": 1_047_576,
    "gpt-4.1-mini": 1_047_576,
    "gpt-4.1-nano": 1_047_576,
    "gpt-5": 400_000,
    "gpt-5-mini": 400_000,
    "gpt-5-nano": 400_000,
    "o1": 200_000,
    "o1-mini": 128_000,
    "o3": 200_000,
    "o3-mini": 200_000,
    "o4-mini": 200_000,
    "text-embedding-3-small": 8_191,
    "text-embedding-3-large": 8_191,
    # Claude models (Anthropic publishes no tokenizer: their counts here are estimates).
    "claude-opus-4-5": 200_000,
    "claude-opus-4-1": 200_000,
    "claude-opus-4": 200_000,
    "claude-sonnet-4-5": 200_000,
    "claude-sonnet-4": 200_000,
    "claude-haiku-4-5": 200_000,
    "claude-3-7-sonnet": 200_000,
    "claude-3-5-haiku": 200_000,
    "claude-3-haiku": 200_000,
}

T = TypeVar("T")
_SNAPSHOT = re.compile(r"\d{4}-\d{2}-\d{2}|\d{8}|\d{4}")


@lru_cache(maxsize=64)
def encoding_for_model(model: str) -> bpe_openai.Encoding:
    """The model's tokenizer; models the package does not know (newer or self-hosted) get o200k.

    `bpe_openai` is imported here, on first use, not with the module: its import alone takes
    about a third of a second, which every CLI call and Dagster run would pay for nothing.
    """
    import bpe_openai

    try:
        return bpe_openai.encoding_for_model(model)
    except Exception:  # the package raises its own errors for unknown names
        return default_encoding()


@lru_cache(maxsize=1)
def default_encoding() -> bpe_openai.Encoding:
    """The encoding of models the package does not know, loaded once (and with it the
    package): a service that counts every request's tokens calls this as it starts, so that
    its first batch does not wait for it."""
    import bpe_openai

    return bpe_openai.get_encoding(DEFAULT_ENCODING)


def count_tokens(text: str, model: str) -> int:
    """The exact number of tokens `text` makes for `model` (as `encode_ordinary` counts)."""
    return _counter(model)(text)


def exact_tokens_batch(texts: Sequence[str], model: str) -> np.ndarray:
    """Exact token counts of many texts."""
    count = _counter(model)
    return np.fromiter((count(text) for text in texts), dtype=np.int64, count=len(texts))


@lru_cache(maxsize=64)
def _counter(model: str) -> Callable[[str], int]:
    """The model's token counter: the native tokenizer's `count`, which builds no token list
    (about 6 times faster here than `encode_ordinary`) and has no length limit, so a row of
    millions of characters is counted, not refused. The Python wrapper serves only texts the
    native one cannot take (lone surrogates, which it replaces)."""
    encoding = encoding_for_model(model)
    native = getattr(getattr(encoding, "_backend", None), "count", None)

    def by_wrapper(text: str) -> int:
        return len(encoding.encode_ordinary(text))

    if native is None:
        return by_wrapper

    def count(text: str) -> int:
        try:
            return native(text)
        except UnicodeEncodeError:
            return by_wrapper(text)

    return count


def match_model(model: str, names: Iterable[str]) -> str | None:
    """The one of `names` that is `model` itself, or whose snapshot it is: a dated one
    (`gpt-4o-mini-2024-07-18` is `gpt-4o-mini`, `claude-haiku-4-5-20251001` is
    `claude-haiku-4-5`) or a numbered one (`gpt-4-0613`). Another
    suffix names another model with prices and limits of its own (`o3-mini`, `o3-pro`)."""
    for name in names:
        if model == name or (
            model.startswith(f"{name}-") and _SNAPSHOT.fullmatch(model[len(name) + 1 :])
        ):
            return name
    return None


def lookup_model(table: Mapping[str, T], model: str) -> T | None:
    """`table`'s entry for `model` by `match_model`, or None."""
    name = match_model(model, table)
    return None if name is None else table[name]


def context_window(model: str, override: int | None = None) -> int:
    """The model's context window in tokens: `override` (spec.request.context_window) if given,
    else the built-in table, else 128k."""
    if override is not None:
        return override
    window = lookup_model(CONTEXT_WINDOWS, model)
    return DEFAULT_CONTEXT_WINDOW if window is None else window


def request_overhead_tokens(endpoint: Endpoint | str, messages: int) -> int:
    """Tokens a request costs beyond its texts: the framing of messages, or nothing where
    the text is sent bare (embeddings, completions, moderations)."""
    if not Endpoint(endpoint).takes_system:
        return 0
    return TOKENS_PER_MESSAGE * messages + TOKENS_PER_REPLY


def tool_tokens(endpoint: Endpoint | str, body: Mapping[str, Any], model: str) -> int:
    """Input tokens the `tools` of a Messages request add (Anthropic's): their JSON and its
    tool-use instructions, estimated; 0 without tools, and on OpenAI's endpoints."""
    tools = body.get("tools")
    if Endpoint(endpoint) is not Endpoint.MESSAGES or not tools:
        return 0
    choice = body.get("tool_choice")
    forced = isinstance(choice, Mapping) and choice.get("type") in ("any", "tool")
    prompt = FORCED_TOOL_PROMPT_TOKENS if forced else TOOL_PROMPT_TOKENS
    return _json_tokens(orjson.dumps(tools), model) + prompt


@lru_cache(maxsize=64)
def _json_tokens(text: bytes, model: str) -> int:
    """Tokens of a JSON text (a pipeline's lines repeat the same tools: counted once)."""
    return count_tokens(text.decode(), model)


def byte_lengths(texts: pa.Array | pa.ChunkedArray | Sequence[str]) -> np.ndarray:
    """UTF-8 byte length of each text (0 for nulls)."""
    if not isinstance(texts, pa.Array | pa.ChunkedArray):
        texts = pa.array(texts, pa.large_string())
    lengths = pc.fill_null(pc.binary_length(texts), 0)
    return lengths.to_numpy().astype(np.int64, copy=False)


def upper_bound_tokens(
    texts: pa.Array | pa.ChunkedArray | Sequence[str], *, overhead: int = 0
) -> np.ndarray:
    """A count no text can exceed: its byte length plus `overhead`."""
    return byte_lengths(texts) + overhead


def estimate_from_byte_lengths(lengths: np.ndarray, *, overhead: int = 0) -> np.ndarray:
    """ceil(bytes / 4) + overhead, for each length."""
    return (np.asarray(lengths, dtype=np.int64) + BYTES_PER_TOKEN - 1) // BYTES_PER_TOKEN + overhead


def estimate_tokens(
    texts: pa.Array | pa.ChunkedArray | Sequence[str],
    model: str | None = None,
    *,
    overhead: int = 0,
) -> np.ndarray:
    """Estimated tokens of each text, from its UTF-8 length alone.

    `model` is accepted for symmetry with `count_tokens`; one ratio serves OpenAI's current
    encodings (o200k, cl100k), so it does not change the estimate.
    """
    return estimate_from_byte_lengths(byte_lengths(texts), overhead=overhead)
