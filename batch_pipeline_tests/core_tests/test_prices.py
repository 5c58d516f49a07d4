import pytest

from batch_pipeline.core.prices import BATCH_DISCOUNT, cost_usd, price_for
from batch_pipeline.core.spec import ModelPrice


@pytest.mark.parametrize(
    ("model", "input_price", "output_price"),
    [
        ("gpt-4o", 2.50, 10.00),
        ("gpt-4o-mini", 0.15, 0.60),
        ("gpt-4o-mini-2024-07-18", 0.15, 0.60),
        ("gpt-4o-2024-08-06", 2.50, 10.00),
        ("gpt-4.1-mini-2025-04-14", 0.40, 1.60),
        ("gpt-5-nano", 0.05, 0.40),
        ("o4-mini", 1.10, 4.40),
        ("o3", 2.00, 8.00),
        ("o3-2025-04-16", 2.00, 8.00),
        ("o3-mini", 1.10, 4.40),
        ("text-embedding-3-small", 0.02, 0.0),
    ],
)
def test_live_prices_are_found_for_models_and_their_dated_snapshots(
    model, input_price, output_price
):
    assert price_for(model) == ModelPrice(input=input_price, output=output_price)


@pytest.mark.parametrize("model", ["my-local-llama", "o3-pro", "gpt-5-pro", "gpt-4o-audio"])
def test_unknown_model_or_variant_has_no_price_and_no_cost(model):
    assert price_for(model) is None
    assert cost_usd(model, 1000, 1000, batch=True) is None


def test_cost_live_and_batch():
    live = cost_usd("gpt-4o-mini", 1_000_000, 2_000_000, batch=False)
    batch = cost_usd("gpt-4o-mini", 1_000_000, 2_000_000, batch=True)
    assert live == pytest.approx(0.15 + 1.20)
    assert batch == pytest.approx(live * BATCH_DISCOUNT)
    assert BATCH_DISCOUNT == 0.5


def test_overrides_replace_a_family_and_add_unknown_models():
    overrides = {"gpt-4o": ModelPrice(input=1.0, output=2.0), "my-llama": ModelPrice(input=0.5)}
    assert price_for("gpt-4o-2024-08-06", overrides) == ModelPrice(input=1.0, output=2.0)
    # An override of gpt-4o is not one of gpt-4o-mini, another model.
    assert price_for("gpt-4o-mini", overrides) == ModelPrice(input=0.15, output=0.60)
    assert cost_usd("my-llama", 2_000_000, 0, batch=False, overrides=overrides) == 1.0
