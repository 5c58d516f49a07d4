"""The custom_ids of a shard's requests on Anthropic, and the way back to the pipeline's.

Anthropic takes `^[a-zA-Z0-9_-]{1,64}$` only, so the pipeline's ids (`2024-05-01:key`, or a
hash of an awkward key) cannot travel as they are. A request's id there is
`<tag>-<line>`: `tag`, 20 hex digits of the hash of the shard's submission identity
(`shard_id#submission`), and its line in the shard. That is deterministic, unique in the batch
whatever the keys (two lines never share a number), and leads back to the row through the
shard's ids in line order (`_shard_ids`). The tag also lets a batch found after a crash be
told apart from anyone else's, by its results, once it has ended.
"""

from __future__ import annotations

import hashlib

import pyarrow as pa
import pyarrow.compute as pc

TAG_DIGITS = 20
_ID_PATTERN = rf"^[0-9a-f]{{{TAG_DIGITS}}}-(?P<line>[0-9]{{1,9}})$"


def submission_tag(submission_key: str) -> str:
    """The tag of a submission's custom_ids."""
    return hashlib.sha256(submission_key.encode("utf-8")).hexdigest()[:TAG_DIGITS]


def request_id(tag: str, line: int) -> str:
    """The custom_id of the request on line `line` (from 0) of the shard."""
    return f"{tag}-{line}"


def tag_of(custom_id: str) -> str | None:
    """The tag of a custom_id made here, or None."""
    tag, _, line = custom_id.partition("-")
    return tag if len(tag) == TAG_DIGITS and line.isdigit() else None


def pipeline_ids(custom_ids: pa.Array | pa.ChunkedArray, expected: pa.Array) -> pa.Array:
    """The pipeline's ids of Anthropic's `custom_ids`, given the shard's ids in line order;
    an id not made here, or of no line of the shard, is kept as it is (no row asked for it)."""
    if isinstance(custom_ids, pa.ChunkedArray):
        custom_ids = custom_ids.combine_chunks()
    numbers = pc.cast(
        pc.struct_field(pc.extract_regex(custom_ids, _ID_PATTERN), "line"), pa.int64()
    )
    valid = pc.and_(pc.is_valid(numbers), pc.less(numbers, len(expected)))
    taken = pc.take(expected, pc.if_else(valid, numbers, 0)) if len(expected) else None
    if taken is None:
        return pc.cast(custom_ids, pa.string())
    return pc.if_else(pc.fill_null(valid, False), taken, pc.cast(custom_ids, pa.string()))
