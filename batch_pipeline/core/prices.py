"""What a batch will cost: OpenAI's and Anthropic's list prices in USD per 1M tokens, and the
Batch API discount (half, at both).

The table holds live (synchronous) prices; the Batch API charges `BATCH_DISCOUNT` of them.
A spec's `prices` override or extend the table per model. A model found in neither (a
variant such as `o3-pro` is not `o3`) has no price: costs are then None ("unknown"), never
a guess.
"""

from __future__ import annotations

from collections.abc import Mapping

from batch_pipeline.core.spec import ModelPrice
from batch_pipeline.core.tokens import lookup_model

BATCH_DISCOUNT = 0.5

# Keep in step with https://openai.com/api/pricing (standard tier, text tokens).
LIVE_PRICES: dict[str, ModelPrice] = {
    "gpt-4o": ModelPrice(input=2.50, output=10.00),
    "gpt-4o-mini": ModelPrice(input=0.15, output=0.60),
    "gpt-4.1": ModelPrice(input=2.00, output=8.00),
    "gpt-4.1-mini": ModelPrice(input=0.40, output=1.60),
    "gpt-4.1-nano": ModelPrice(input=0.10, output=0.40),
    "gpt-5": ModelPrice(input=1.25, output=10.00),
    "gpt-5-mini": ModelPrice(input=0.25, output=2.00),
    "gpt-5-nano": ModelPrice(input=0.05, output=0.40),
    "o1": ModelPrice(input=15.00, output=60.00),
    "o1-mini": ModelPrice(input=1.10, output=4.40),
    "o3": ModelPrice(input=2.00, output=8.00),
    "o3-mini": ModelPrice(input=1.10, output=4.40),
    "o4-mini": ModelPrice(input=1.10, output=4.40),
    "text-embedding-3-small": ModelPrice(input=0.02),
    "text-embedding-3-large": ModelPrice(input=0.13),
    # Keep in step with https://www.anthropic.com/pricing (base input and output tokens); the
    # Message Batches API charges the same BATCH_DISCOUNT of them.
    "claude-opus-4-5": ModelPrice(input=5.00, output=25.00),
    "claude-opus-4-1": ModelPrice(input=15.00, output=75.00),
    "claude-opus-4": ModelPrice(input=15.00, output=75.00),
    "claude-sonnet-4-5": ModelPrice(input=3.00, output=15.00),
    "claude-sonnet-4": ModelPrice(input=3.00, output=15.00),
    "claude-haiku-4-5": ModelPrice(input=1.00, output=5.00),
    "claude-3-7-sonnet": ModelPrice(input=3.00, output=15.00),
    "claude-3-5-haiku": ModelPrice(input=0.80, output=4.00),
    "claude-3-haiku": ModelPrice(input=0.25, output=1.25),
}


def price_for(model: str, overrides: Mapping[str, ModelPrice] | None = None) -> ModelPrice | None:
    """The live price of `model` (a dated snapshot finds its model's); an override for the
    model wins over the built-in table."""
    return lookup_model({**LIVE_PRICES, **(overrides or {})}, model)


def cost_usd(
    model: str,
    input_tokens: int,
    output_tokens: int,
    *,
    batch: bool,
    overrides: Mapping[str, ModelPrice] | None = None,
) -> float | None:
    """USD for the tokens at live or Batch API prices; None when the model's price is unknown."""
    price = price_for(model, overrides)
    if price is None:
        return None
    live = (input_tokens * price.input + output_tokens * price.output) / 1_000_000
    return live * BATCH_DISCOUNT if batch else live
