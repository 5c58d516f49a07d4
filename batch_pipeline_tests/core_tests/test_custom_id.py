import hashlib
from datetime import date

import pyarrow as pa
import pytest

from batch_pipeline.core.custom_id import custom_id_for, custom_ids_for


def test_short_safe_keys_stay_readable():
    assert custom_id_for("2024-05-01", "order-17") == "2024-05-01:order-17"
    assert custom_id_for("2024-05-01", 17) == "2024-05-01:17"
    assert custom_id_for("2024-05-01", "a_b.c-D") == "2024-05-01:a_b.c-D"


@pytest.mark.parametrize(
    "key", ["has space", "x" * 65, 'quote"d', "naïve", "", "a/b", "h0123456789abcdef01234567"]
)
def test_unsafe_long_or_hash_like_keys_are_hashed(key):
    digest = hashlib.sha256(key.encode()).hexdigest()[:24]
    assert custom_id_for("2024-05-01", key) == f"2024-05-01:h{digest}"


def test_ids_are_deterministic_and_depend_on_partition_and_key():
    # The same in every process and every release (results are joined back by it): pinned.
    assert custom_id_for("2024-05-01", "k 1") == "2024-05-01:hca786f1e02cd1fa6858ba7d9"
    assert custom_id_for("2024-05-01", "k 1") != custom_id_for("2024-05-02", "k 1")
    assert custom_id_for("2024-05-01", "k 1") != custom_id_for("2024-05-01", "k 2")


def test_many_distinct_keys_give_distinct_ids():
    keys = [f"key {i}" for i in range(20_000)] + [f"k{i}" for i in range(20_000)]
    ids = {custom_id_for("2024-05-01", key) for key in keys}
    assert len(ids) == len(keys)


@pytest.mark.parametrize(
    "keys",
    [
        pa.array(["a", "b c", None, "x" * 80, "h0123456789abcdef01234567"]),
        pa.array([1, -2, None, 30_000_000_000], pa.int64()),
        pa.array([1.0, 2.5, None]),
        pa.array([date(2024, 5, 1), None]),
        pa.array(["a", "b", "a"]).dictionary_encode(),
        pa.chunked_array([["a", "b"], ["c d"]], pa.large_string()),
    ],
)
def test_vectorised_ids_equal_one_by_one_ids(keys):
    expected = [
        None if key is None else custom_id_for("2024-05-01", key) for key in keys.to_pylist()
    ]
    ids = custom_ids_for("2024-05-01", keys)
    assert pa.types.is_string(ids.type)
    assert ids.to_pylist() == expected
