"""The `custom_id` of a source row: derived from its partition and key, never random.

A result line carries only its `custom_id`, so the id must lead back to the row, and a rerun
must produce the same ids. Short, safe keys stay readable (`2024-05-01:order-17`); anything
else (long, spaces, quotes, non-ASCII) becomes a hash (`2024-05-01:h3f2a...`, 24 hex digits).
A safe key that happens to look like a hash is hashed too, so the two forms never collide.
"""

from __future__ import annotations

import hashlib
import re

import pyarrow as pa
import pyarrow.compute as pc

SAFE_KEY = r"[A-Za-z0-9_.\-]{1,64}"
HASH_DIGITS = 24
_LOOKS_HASHED = rf"h[0-9a-f]{{{HASH_DIGITS}}}"
_SAFE_RE = re.compile(SAFE_KEY)
_LOOKS_HASHED_RE = re.compile(_LOOKS_HASHED)

# Key types whose Arrow cast to string gives exactly Python's `str()` of the value.
_CASTS_LIKE_STR = (
    pa.types.is_string,
    pa.types.is_large_string,
    pa.types.is_integer,
    pa.types.is_date32,
)


def key_text(key: object) -> str:
    """The text of a key as ids and rejection records show it: `str(key)`."""
    return str(key)


def _is_readable(text: str) -> bool:
    return bool(_SAFE_RE.fullmatch(text)) and not _LOOKS_HASHED_RE.fullmatch(text)


def _hashed(partition: str, text: str) -> str:
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
    return f"{partition}:h{digest[:HASH_DIGITS]}"


def custom_id_for(partition: str, key: object) -> str:
    """The deterministic `custom_id` of the row with `key` in `partition`."""
    text = key_text(key)
    return f"{partition}:{text}" if _is_readable(text) else _hashed(partition, text)


def key_texts(keys: pa.Array | pa.ChunkedArray) -> pa.Array:
    """`key_text` of every key, as a string array (nulls stay null), vectorised where Arrow
    renders the type exactly as Python does."""
    if isinstance(keys, pa.ChunkedArray):
        keys = keys.combine_chunks()
    if pa.types.is_dictionary(keys.type):
        keys = keys.dictionary_decode()
    if any(check(keys.type) for check in _CASTS_LIKE_STR):
        texts = pc.cast(keys, pa.string())
        try:
            texts.validate(full=True)
        except pa.ArrowInvalid:  # text written outside Arrow may hold bytes that are not UTF-8
            return utf8_or_null(texts).cast(pa.string())
        return texts
    return pa.array(
        [None if value is None else key_text(value) for value in keys.to_pylist()], pa.string()
    )


def utf8_or_null(values: pa.Array) -> pa.Array:
    """Text or bytes values as `large_string`, null where the bytes are not UTF-8; row by row,
    for the rare column holding such bytes (a key no id can be made of, a text no request)."""
    decoded: list[str | None] = []
    for value in pc.cast(values, pa.large_binary()).to_pylist():
        try:
            decoded.append(None if value is None else value.decode("utf-8"))
        except UnicodeDecodeError:
            decoded.append(None)
    return pa.array(decoded, pa.large_string())


def custom_ids_for(partition: str, keys: pa.Array | pa.ChunkedArray) -> pa.Array:
    """`custom_id_for` over an array of keys (null keys give null ids); only the keys that
    need a hash go through Python."""
    texts = key_texts(keys)
    readable = pc.binary_join_element_wise(f"{partition}:", texts, "")
    safe = pc.and_(
        pc.match_substring_regex(texts, f"^{SAFE_KEY}$"),
        pc.invert(pc.match_substring_regex(texts, f"^{_LOOKS_HASHED}$")),
    )
    needs_hash = pc.invert(pc.fill_null(safe, True))
    if not pc.any(needs_hash).as_py():
        return readable
    to_hash = texts.filter(needs_hash).to_pylist()
    hashed = pa.array([_hashed(partition, text) for text in to_hash], pa.string())
    return pc.replace_with_mask(readable, needs_hash, hashed)
