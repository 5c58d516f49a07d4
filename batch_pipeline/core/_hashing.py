"""Keyed 64-bit hashes of the values of an Arrow string or binary array, in bulk.

The hashes are computed from the array's buffers with numpy (no Python object per value), so
a million keys hash in milliseconds. Used to tell keys apart (the build's duplicate-key set)
and to find repeated custom_ids among outcome lines.
"""

from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

SEEDS_PER_HASH = 4
_TAIL_MASKS = np.array([(1 << (8 * size)) - 1 for size in range(9)], dtype=np.uint64)
_MIX_1, _MIX_2 = np.uint64(0xFF51AFD7ED558CCD), np.uint64(0xC4CEB9FE1A85EC53)
_MIX_SHIFT = np.uint64(33)


def _mix(values: np.ndarray) -> np.ndarray:
    """MurmurHash3's 64-bit finaliser, in place: a bijection that spreads each input bit over
    the whole output."""
    values ^= values >> _MIX_SHIFT
    values *= _MIX_1
    values ^= values >> _MIX_SHIFT
    values *= _MIX_2
    values ^= values >> _MIX_SHIFT
    return values


def random_seeds(hashes: int) -> np.ndarray:
    """Fresh random keys for `hashes` independent hashes (no fixed set of values collides under
    every key)."""
    return np.frombuffer(os.urandom(8 * SEEDS_PER_HASH * hashes), dtype=np.uint64).copy()


def keyed_hashes(keys: pa.Array, seeds: np.ndarray) -> list[np.ndarray]:
    """Independent keyed 64-bit hashes (one per `SEEDS_PER_HASH` seeds) of each value of a
    string or binary array without nulls, computed in bulk from its Arrow buffers.

    A value is read as little-endian 8-byte words, the last one zero-padded. Each hash is
    `mix(seed ^ (sum of mix(word ^ key of its position) + mix(length ^ seed)))`, with
    position keys mixed from seeds, so values that differ anywhere (or only in length)
    differ in each hash but with a chance of about 2^-64.
    """
    if not (pa.types.is_large_string(keys.type) or pa.types.is_large_binary(keys.type)):
        keys = pc.cast(keys, pa.large_binary())
    count = len(keys)
    if count == 0:
        return [np.zeros(0, dtype=np.uint64) for _ in range(len(seeds) // SEEDS_PER_HASH)]
    offsets = np.frombuffer(keys.buffers()[1], dtype=np.int64)[
        keys.offset : keys.offset + count + 1
    ]
    start, stop = int(offsets[0]), int(offsets[-1])
    padded = np.zeros(stop - start + 8, dtype=np.uint8)  # a whole word can be read anywhere
    if stop > start:
        padded[: stop - start] = np.frombuffer(
            keys.buffers()[2], dtype=np.uint8, count=stop - start, offset=start
        )
    lengths = np.diff(offsets)
    words_of = np.maximum((lengths + 7) >> 3, 1)  # an empty value: one word, of zeros
    last = np.cumsum(words_of) - 1  # each value's last word
    # Each word's byte position in `padded`, and its index within its value: running sums
    # of steps (8 bytes and 1 word along a value, a jump where the next value starts).
    begins = last[:-1] + 1
    at = np.full(int(last[-1]) + 1, 8, dtype=np.int64)
    at[0] = 0
    at[begins] = lengths[:-1] - 8 * words_of[:-1] + 8
    np.cumsum(at, out=at)
    within = np.ones(at.size, dtype=np.int64)
    within[0] = 0
    within[begins] = 1 - words_of[:-1]
    np.cumsum(within, out=within)
    unaligned = np.ndarray((padded.size - 7,), dtype="<u8", buffer=padded, strides=(1,))
    words = unaligned[at].astype(np.uint64, copy=False)
    words[last] &= _TAIL_MASKS[lengths - 8 * (words_of - 1)]
    positions = np.arange(int(words_of.max()), dtype=np.uint64)
    sized = lengths.astype(np.uint64)
    hashes = []
    for multiplier, offset, length_key, final_key in seeds.reshape(-1, SEEDS_PER_HASH):
        mixed = _mix(positions * (multiplier | np.uint64(1)) + offset)[within]
        mixed ^= words
        sums = np.diff(np.cumsum(_mix(mixed))[last], prepend=np.uint64(0))
        sums += _mix(sized ^ length_key)
        sums ^= final_key
        hashes.append(_mix(sums))
    return hashes
