"""How much one batch may hold on each provider: the caps a shard must stay within, and the
shard limits a pipeline gets when its spec sets none.

- OpenAI (and the local service, which plays it): 50,000 requests and 200 MB in an input file.
- Azure OpenAI's global batch: 100,000 requests and 200 MB in an input file.
- Anthropic's Message Batches: 100,000 requests or 256 MB in one create call. Its requests
  travel inline, each a little smaller than its line in the shard (a shorter envelope), so a
  shard within the cap makes a call within it.

The default byte limit stays some way below each cap, as the providers count a megabyte
their own way (10^6 or 2^20 bytes).
"""

from __future__ import annotations

from dataclasses import dataclass

MB = 1024 * 1024


@dataclass(frozen=True)
class BatchCaps:
    """A provider's most requests and bytes in one batch, and the default byte limit."""

    max_requests: int
    max_bytes: int
    default_bytes: int


OPENAI_CAPS = BatchCaps(max_requests=50_000, max_bytes=200 * MB, default_bytes=190_000_000)
BATCH_CAPS: dict[str, BatchCaps] = {
    "local": OPENAI_CAPS,
    "openai": OPENAI_CAPS,
    "azure": BatchCaps(max_requests=100_000, max_bytes=200 * MB, default_bytes=190_000_000),
    "anthropic": BatchCaps(max_requests=100_000, max_bytes=256 * MB, default_bytes=240_000_000),
}


def batch_caps(provider: str) -> BatchCaps:
    """The caps of `provider`'s batches (OpenAI's for a provider not listed)."""
    return BATCH_CAPS.get(provider, OPENAI_CAPS)
