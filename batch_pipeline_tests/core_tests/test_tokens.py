import numpy as np
import pyarrow as pa
import pytest

from batch_pipeline.core.tokens import (
    context_window,
    count_tokens,
    encoding_for_model,
    estimate_tokens,
    exact_tokens_batch,
    match_model,
    request_overhead_tokens,
    upper_bound_tokens,
)
from batch_pipeline.core.types import Endpoint

TEXTS = [
    "Hello, world!",
    "Classify this review: the product arrived broken and support never answered.",
    "日本語のテキストも数えます。",
    "def f(x):\n    return {'a': x ** 2}\n",
    "",
]


def test_existing_functions_keep_their_behaviour():
    assert count_tokens("Hello, world!", "gpt-4o") == 4
    assert encoding_for_model("a-self-hosted-model").name == "o200k_base"


@pytest.mark.parametrize("model", ["gpt-4o-mini", "gpt-4", "a-self-hosted-model"])
def test_counts_equal_the_length_of_the_tokenizers_encoding(model):
    """The native counter gives what `encode_ordinary` would, special-token text and lone
    surrogates included (the latter through the wrapper, which replaces them)."""
    encoding = encoding_for_model(model)
    texts = [*TEXTS, "<|endoftext|> is plain text here", "a lone \ud800 surrogate"]
    assert [count_tokens(text, model) for text in texts] == [
        len(encoding.encode_ordinary(text)) for text in texts
    ]


def test_exact_batch_equals_one_by_one():
    counts = exact_tokens_batch(TEXTS, "gpt-4o-mini")
    assert counts.tolist() == [count_tokens(text, "gpt-4o-mini") for text in TEXTS]


def test_upper_bound_is_never_below_the_exact_count():
    bounds = upper_bound_tokens(TEXTS, overhead=3)
    exact = exact_tokens_batch(TEXTS, "gpt-4o")
    assert np.all(bounds >= exact + 3)
    assert bounds.tolist() == [len(text.encode()) + 3 for text in TEXTS]


def test_estimate_is_a_quarter_of_the_bytes_rounded_up_plus_overhead():
    texts = pa.array(["abcd", "abcde", "", None, "é"])
    assert estimate_tokens(texts, "gpt-4o", overhead=7).tolist() == [8, 9, 7, 7, 8]
    assert estimate_tokens(["abcd"] * 3, "gpt-4o").tolist() == [1, 1, 1]


def test_estimate_is_close_to_exact_for_english_text():
    text = " ".join(["The quick brown fox jumps over the lazy dog."] * 40)
    estimate = int(estimate_tokens([text], "gpt-4o")[0])
    exact = count_tokens(text, "gpt-4o")
    assert 0.7 * exact <= estimate <= 1.5 * exact


@pytest.mark.parametrize(
    ("model", "window"),
    [
        ("gpt-4o", 128_000),
        ("gpt-4o-mini-2024-07-18", 128_000),
        ("gpt-4.1-nano-2025-04-14", 1_047_576),
        ("gpt-5-mini", 400_000),
        ("o3", 200_000),
        ("o4-mini-2025-04-16", 200_000),
        ("text-embedding-3-large", 8_191),
        ("my-local-llama", 128_000),
    ],
)
def test_context_window_table(model, window):
    assert context_window(model) == window


def test_context_window_override_wins():
    assert context_window("gpt-4o", 50) == 50


def test_a_snapshot_finds_its_model_but_a_variant_does_not():
    names = ["gpt-4o", "gpt-4o-mini", "o3", "gpt-4"]
    assert match_model("gpt-4o-mini-2024-07-18", names) == "gpt-4o-mini"
    assert match_model("gpt-4o-2024-08-06", names) == "gpt-4o"
    assert match_model("gpt-4-0613", names) == "gpt-4"
    assert match_model("gpt-4oxyz", names) is None
    assert match_model("o3-pro", names) is None
    assert match_model("o3-mini", names) is None
    assert match_model("gpt-4o-mini-2024-07-18-ft", names) is None


def test_request_overhead_by_endpoint():
    assert request_overhead_tokens(Endpoint.EMBEDDINGS, 1) == 0
    assert request_overhead_tokens(Endpoint.CHAT_COMPLETIONS, 2) > request_overhead_tokens(
        "/v1/chat/completions", 1
    )
