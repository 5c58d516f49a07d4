"""The join of a partition's source chunks, in order, with their rejections and the outcome
groups that cover its accepted rows, and the checks that every source row has exactly one of
them (what does not add up is counted over the whole partition, then raised)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from batch_pipeline.core._threads import Prefetch
from batch_pipeline.core.outcomes import OUTCOME_SCHEMA, one_chunk
from batch_pipeline.core.types import RowStatus

REJECTED_CODE = "rejected"
READ_AHEAD_THREAD = "results-read-ahead"
_MAX_NAMED = 10


class ResultsError(ValueError):
    """The inputs of a results file do not add up; nothing was written."""


class ResultsIncompleteError(ResultsError):
    """Source rows that have neither an outcome nor a rejection."""


class ResultsMismatchError(ResultsError):
    """Outcomes or rejections that do not match the source rows one to one."""


@dataclass(frozen=True)
class OrderedOutcomes:
    """A group's outcomes in the order of its source rows: every custom_id at once, the rows
    themselves as a stream of tables, read as the join reaches them."""

    ids: pa.Array
    tables: Iterator[pa.Table]
    close: Callable[[], None] = lambda: None  # lets go of the file, read through or not


@dataclass(frozen=True)
class OutcomeGroup:
    """The outcomes of `rows` consecutive accepted source rows (one request shard with its
    retries), read by `load` only when the join is about to reach them (one group ahead): a
    partition's outcomes are never all in memory at once.

    `open_ordered`, where given, reads them in the order of the source rows instead (None
    if they are not stored so; `load` then gives the same rows in the same order). While the
    source rows follow them one by one, the join holds no more of the group than its
    custom_ids and a chunk of rows; it takes `load`'s whole table only if they stop doing so.
    """

    rows: int
    load: Callable[[], pa.Table]
    open_ordered: Callable[[], OrderedOutcomes | None] | None = None


def _refuse_repeated_outcomes(ids: pa.ChunkedArray | pa.Array) -> None:
    repeated = _duplicates(ids)
    if repeated:
        raise ResultsMismatchError(
            f"{len(repeated)} custom_ids have more than one outcome, e.g. {repeated[:_MAX_NAMED]}"
        )


def _duplicates(values: pa.ChunkedArray | pa.Array) -> list[Any]:
    """The values occurring more than once (cheap when there are none)."""
    if pc.count_distinct(values, mode="all").as_py() == len(values):
        return []
    counts = pc.value_counts(values)
    return counts.filter(pc.greater(counts.field("counts"), 1)).field("values").to_pylist()


def prepare_rejected(rejected: pa.Table | None) -> pa.Table:
    """`rejected` sorted by row number, with the expected types and a `code` column (default
    "rejected"); rows rejected twice or before the first row are refused."""
    if rejected is None or not rejected.num_rows:
        rejected = pa.table({"row_number": pa.array([], pa.int64())})
    if "row_number" not in rejected.schema.names:
        raise ValueError("the rejected table lacks the column 'row_number'")
    if "reason" not in rejected.schema.names and rejected.num_rows:
        raise ValueError("the rejected table lacks the column 'reason'")
    count = rejected.num_rows

    def column(name: str, type_: pa.DataType, default: Any = None) -> pa.Array:
        if name not in rejected.schema.names:
            return pa.array([default] * count, type_)
        values = rejected.column(name).cast(type_)
        return values.fill_null(default) if default is not None else values

    table = pa.table(
        {
            "row_number": column("row_number", pa.int64()),
            "key": column("key", pa.string()),
            "custom_id": column("custom_id", pa.string()),
            "reason": column("reason", pa.string()),
            "code": column("code", pa.string(), REJECTED_CODE),
        }
    ).sort_by("row_number")
    repeated = _duplicates(table.column("row_number"))
    if repeated:
        raise ResultsMismatchError(f"rows rejected more than once: {repeated[:_MAX_NAMED]}")
    negative = pc.filter(table.column("row_number"), pc.less(table.column("row_number"), 0))
    if len(negative):
        raise ResultsMismatchError(
            f"{len(negative)} rejections name rows before the first source row, "
            f"e.g. {negative.to_pylist()[:_MAX_NAMED]}"
        )
    return table.combine_chunks()


class _Problems:
    """What does not add up, counted over the whole partition, with the first examples."""

    def __init__(self) -> None:
        self.found: dict[str, tuple[int, list[str]]] = {}

    def add(self, kind: str, examples: Callable[[], list[str]], count: int) -> None:
        if count:
            seen, named = self.found.get(kind, (0, []))
            if len(named) < _MAX_NAMED:
                named = named + examples()[: _MAX_NAMED - len(named)]
            self.found[kind] = (seen + count, named)

    def __bool__(self) -> bool:
        return bool(self.found)

    def raise_first(self, source_rows: int) -> None:
        for kind, (error, template) in _PROBLEMS.items():
            if kind in self.found:
                count, named = self.found[kind]
                message = template.format(count=count, named=", ".join(named), rows=source_rows)
                raise error(message)


_PROBLEMS: dict[str, tuple[type[ResultsError], str]] = {
    "rejection_beyond": (
        ResultsMismatchError,
        "{count} rejections name rows beyond the {rows} source rows, e.g. {named}",
    ),
    "rejection_key": (
        ResultsMismatchError,
        "{count} rejections do not match the source row they name: {named}",
    ),
    "claimed_twice": (
        ResultsMismatchError,
        "{count} outcomes are claimed by several source rows (duplicate keys not rejected), "
        "e.g. {named}",
    ),
    "no_outcome": (
        ResultsIncompleteError,
        "{count} source rows have no outcome and no rejection, e.g. the keys {named}; "
        "refusing to write results that would lose them",
    ),
    "unclaimed": (
        ResultsMismatchError,
        "{count} outcomes match no accepted source row of the partition, e.g. {named}",
    ),
}


@dataclass(frozen=True)
class _Opened:
    """A group as the read-ahead opened it: its custom_ids and, unless its rows follow in the
    stream (an ordered group), its whole prepared table."""

    group: OutcomeGroup
    ids: pa.Array
    table: pa.Table | None


def _read_groups(
    groups: Sequence[OutcomeGroup], prepare: Callable[[pa.Table], pa.Table]
) -> Iterator[_Opened | pa.Table]:
    """Each group opened, then, for an ordered group, its prepared outcome tables in order."""
    for group in groups:
        ordered = group.open_ordered() if group.open_ordered is not None else None
        if ordered is None:
            table = prepare(group.load())
            ids = one_chunk(table.column("custom_id"))
        else:
            table, ids = None, one_chunk(ordered.ids)
        try:
            _refuse_repeated_outcomes(ids)
            yield _Opened(group, ids, table)
            if ordered is not None:
                yield from map(prepare, ordered.tables)
        finally:
            if ordered is not None:
                ordered.close()


class _GroupStream:
    """The outcome groups read one item ahead on a thread of their own (Parquet decoding
    releases the GIL), so reading the next rows overlaps with joining the current ones: at
    most one opened group or one table of rows waits beside the ones being joined."""

    def __init__(
        self, groups: Sequence[OutcomeGroup], prepare: Callable[[pa.Table], pa.Table]
    ) -> None:
        self.count = len(groups)
        self._items = Prefetch(_read_groups(groups, prepare), depth=0, name=READ_AHEAD_THREAD)

    def next_group(self) -> _Opened:
        """The next group, past the rows of the current one the join did not take."""
        for item in self._items:
            if isinstance(item, _Opened):
                return item
        raise RuntimeError("more groups asked for than given")

    def next_table(self) -> pa.Table:
        """The next rows of the current ordered group."""
        item = next(self._items, None)
        if not isinstance(item, pa.Table):
            raise ResultsMismatchError("an ordered outcome file ended before its ids")
        return item

    def close(self) -> None:
        """Stop reading ahead (closing the file being read)."""
        self._items.close()


class _GroupOutcomes:
    """One group's outcome rows as the join takes them: streamed in order while the source
    rows follow an ordered group one by one, else (or from the first row that does not) its
    whole table, loaded once."""

    def __init__(
        self, opened: _Opened, stream: _GroupStream, prepare: Callable[[pa.Table], pa.Table]
    ) -> None:
        self._group, self._prepare = opened.group, prepare
        self._table = opened.table
        self.ids = opened.ids
        self._stream: _GroupStream | None = stream if opened.table is None else None
        self._read = 0  # rows of the stream read so far
        self._pending: pa.Table | None = None  # the part of the last table not yet taken
        self._following: pa.Array | None = None  # what `find` gave for the next rows

    def _load(self) -> pa.Table:
        self._table = self._prepare(self._group.load())
        self._stream, self._pending = None, None
        return self._table

    def find(self, ids: pa.Array) -> pa.Array:
        """The position of each id among the group's outcomes, null where it has none."""
        if self._table is None:
            following = self.ids.slice(self._read, len(ids))
            if (
                len(following) == len(ids)
                and pc.all(pc.fill_null(pc.equal(ids, following), False)).as_py()
            ):
                self._following = pa.array(np.arange(self._read, self._read + len(ids)), pa.int32())
                return self._following
        return pc.index_in(ids, value_set=self.ids)

    def take(self, found: pa.Array) -> pa.Table:
        """The outcome rows at these positions (null rows where `found` is null)."""
        if self._table is None:
            if found is self._following:
                return self._next_rows(len(found))
            self._load()  # the rows stopped following the group: take from all of it
        assert self._table is not None
        return self._table.take(found)

    def _next_rows(self, count: int) -> pa.Table:
        pieces = [self._prepare(OUTCOME_SCHEMA.empty_table())] if not count else []
        while count:
            if self._pending is None or not self._pending.num_rows:
                assert self._stream is not None
                self._pending = self._stream.next_table()
            piece = self._pending.slice(0, count)
            self._pending = self._pending.slice(piece.num_rows)
            pieces.append(piece)
            count -= piece.num_rows
            self._read += piece.num_rows
        return pieces[0] if len(pieces) == 1 else pa.concat_tables(pieces)


@dataclass
class _Group:
    """The outcome group being joined: its outcomes and which of them are taken."""

    first_row: int  # ordinal of its first accepted source row
    rows: int
    outcomes: _GroupOutcomes
    ids: pa.Array
    claimed: np.ndarray


class Joiner:
    """Joins source chunks, in order, with the rejections and the outcome groups, which it
    reads ahead on a thread from the start: use it as a context manager (or call `close`)."""

    def __init__(
        self,
        groups: Sequence[OutcomeGroup],
        rejected: pa.Table,
        prepare: Callable[[pa.Table], pa.Table],
    ) -> None:
        self._groups = _GroupStream(groups, prepare)
        self._next_group = 0
        self._prepare = prepare
        self._group: _Group | None = None
        self._previous_ids: pa.Array | None = None  # taken in the group before: for messages
        self._rejected = rejected
        self._rejected_rows = rejected.column("row_number").to_numpy()
        self._accepted = 0  # accepted source rows so far
        self.rows = 0  # source rows so far
        self.problems = _Problems()

    def join(
        self, batch: pa.RecordBatch, key: pa.Array, custom_ids: pa.Array, schema: pa.Schema
    ) -> pa.Table | None:
        """The chunk with its results columns; None once a problem has been found.

        The outcome columns stay in the chunks they were read in (a chunk's rows may span two
        of them): the Parquet writer takes them so, and combining them would copy the answers.
        """
        offset, count = self.rows, batch.num_rows
        self.rows += count
        low, high = np.searchsorted(self._rejected_rows, [offset, offset + count])
        rejection_index = np.full(count, -1, dtype=np.int64)
        rejection_index[self._rejected_rows[low:high] - offset] = np.arange(low, high)
        self._check_rejected_keys(key, rejection_index)
        accepted = np.flatnonzero(rejection_index < 0)
        taken = self._take_outcomes(key, custom_ids, accepted)
        if self.problems:
            return None
        columns: dict[str, pa.ChunkedArray | pa.Array] = {}
        if len(accepted) < count:
            columns = self._with_rejections(taken, accepted, rejection_index)
        columns["custom_id"] = custom_ids
        arrays = [pa.chunked_array([column]) for column in batch.columns]
        for f in list(schema)[batch.num_columns :]:
            column = columns[f.name] if f.name in columns else taken.column(f.name)
            arrays.append(column.cast(f.type))
        return pa.Table.from_arrays(arrays, schema=schema)

    def _with_rejections(
        self, taken: pa.Table, accepted: np.ndarray, rejection_index: np.ndarray
    ) -> dict[str, pa.Array]:
        """The outcome columns of a chunk with rejected rows: null rows put in for them, and
        their status, attempts and error taken from the rejection."""
        expand = np.full(len(rejection_index), -1, dtype=np.int64)
        expand[accepted] = np.arange(len(accepted))
        taken = taken.take(pa.array(expand, mask=expand < 0)).combine_chunks()
        is_rejected = pa.array(rejection_index >= 0)
        rejection = self._rejected.take(pa.array(rejection_index, mask=rejection_index < 0))
        in_place = {
            "status": pa.scalar(RowStatus.REJECTED.value),
            "attempts": pa.scalar(0, pa.int32()),
            "error_code": one_chunk(rejection.column("code")),
            "error_message": one_chunk(rejection.column("reason")),
        }
        columns = {name: one_chunk(taken.column(name)) for name in taken.column_names}
        for name, if_rejected in in_place.items():
            columns[name] = pc.if_else(is_rejected, if_rejected, columns[name])
        return columns

    def finish(self) -> None:
        """Raise for what did not add up: rejections past the end, outcomes no row took."""
        beyond = self._rejected_rows[self._rejected_rows >= self.rows]
        self.problems.add(
            "rejection_beyond",
            lambda: [f"row {row} of {self.rows}" for row in beyond.tolist()],
            len(beyond),
        )
        while self._group is not None or self._next_group < self._groups.count:
            if self._group is None:
                self._open_next()
                continue
            self._close(self._group)
            self._group = None
        self.problems.raise_first(self.rows)

    def close(self) -> None:
        """Stop reading outcomes ahead (after `finish`, or in place of it on an error)."""
        self._groups.close()

    def __enter__(self) -> Joiner:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # -- outcomes ---------------------------------------------------------------------------

    def _take_outcomes(self, key: pa.Array, custom_ids: pa.Array, accepted: np.ndarray) -> pa.Table:
        """The outcome rows of the accepted rows, in their order."""
        pieces = []
        done = 0
        while done < len(accepted):
            rows, piece = self._take_from_group(key, custom_ids, accepted[done:])
            done += rows
            if piece is not None:
                pieces.append(piece)
        if not pieces:
            return self._empty_outcomes()
        return pa.concat_tables(pieces)

    def _take_from_group(
        self, key: pa.Array, custom_ids: pa.Array, accepted: np.ndarray
    ) -> tuple[int, pa.Table | None]:
        """How many of the leading accepted rows fall in one group, and their outcome rows
        (None past the last group).

        A group is referenced from here only until this returns, so the join holds no group
        but the current one when the next one is read ahead.
        """
        group = self._current()
        rows = (
            accepted if group is None else accepted[: group.first_row + group.rows - self._accepted]
        )
        self._accepted += len(rows)
        ids = custom_ids.take(pa.array(rows))
        if group is None:
            self._no_outcome(key, ids, rows, np.ones(len(rows), dtype=bool))
            return len(rows), None
        found = group.outcomes.find(ids)
        missing = found.is_null().to_numpy(zero_copy_only=False)
        self._no_outcome(key, ids, rows, missing)
        self._claim(group, found.drop_null().to_numpy().astype(np.int64))
        return len(rows), group.outcomes.take(found)

    def _claim(self, group: _Group, positions: np.ndarray) -> None:
        """Mark these outcome rows taken; note those taken before or twice here."""
        order = np.sort(positions)
        again = order[1:][order[1:] == order[:-1]]
        twice = np.union1d(again, positions[group.claimed[positions]])
        group.claimed[positions] = True
        self.problems.add(
            "claimed_twice",
            lambda: group.ids.take(pa.array(twice[:_MAX_NAMED])).to_pylist(),
            len(twice),
        )

    def _current(self) -> _Group | None:
        """The group the next accepted row falls in (None: past the last one)."""
        while self._group is None or self._accepted >= self._group.first_row + self._group.rows:
            if self._group is not None:
                self._close(self._group)
                self._previous_ids, self._group = self._claimed_ids(self._group), None
            if self._next_group >= self._groups.count:
                return None
            self._open_next()
        return self._group

    def _open_next(self) -> None:
        opened = self._groups.next_group()
        self._next_group += 1
        outcomes = _GroupOutcomes(opened, self._groups, self._prepare)
        first_row = (
            self._accepted if self._group is None else self._group.first_row + self._group.rows
        )
        self._group = _Group(
            first_row=first_row,
            rows=opened.group.rows,
            outcomes=outcomes,
            ids=outcomes.ids,
            claimed=np.zeros(len(outcomes.ids), dtype=bool),
        )

    def _close(self, group: _Group) -> None:
        unclaimed = np.flatnonzero(~group.claimed)
        self.problems.add(
            "unclaimed",
            lambda: group.ids.take(pa.array(unclaimed[:_MAX_NAMED])).to_pylist(),
            len(unclaimed),
        )

    def _no_outcome(
        self, key: pa.Array, ids: pa.Array, rows: np.ndarray, missing: np.ndarray
    ) -> None:
        """Note accepted rows without an outcome in their group: a key repeated without a
        rejection when an outcome of the current or previous group has it, else lost rows."""
        if not missing.any():
            return
        where = np.flatnonzero(missing)
        missing_ids = ids.take(pa.array(where))
        repeated = np.zeros(len(where), dtype=bool)
        for known in (self._claimed_ids(self._group), self._previous_ids):
            if known is not None:
                repeated |= pc.is_in(missing_ids, value_set=known).to_numpy(zero_copy_only=False)
        self.problems.add(
            "claimed_twice",
            lambda: missing_ids.filter(pa.array(repeated)).to_pylist(),
            int(repeated.sum()),
        )
        lost = rows[where[~repeated]]
        self.problems.add(
            "no_outcome",
            lambda: [
                f"{key[i].as_py()!r} ({ids[j].as_py()})"
                for i, j in zip(
                    lost[:_MAX_NAMED].tolist(), where[~repeated][:_MAX_NAMED].tolist(), strict=True
                )
            ],
            len(lost),
        )

    @staticmethod
    def _claimed_ids(group: _Group | None) -> pa.Array | None:
        return None if group is None else group.ids.filter(pa.array(group.claimed))

    def _empty_outcomes(self) -> pa.Table:
        """No outcome rows, in the columns a prepared group has (for a chunk all rejected)."""
        return self._prepare(OUTCOME_SCHEMA.empty_table())

    # -- rejections -------------------------------------------------------------------------

    def _check_rejected_keys(self, key: pa.Array, rejection_index: np.ndarray) -> None:
        """A rejection must carry the key of the row it names."""
        rows = np.flatnonzero(rejection_index >= 0)
        if not len(rows) or not (pa.types.is_string(key.type) or pa.types.is_integer(key.type)):
            return  # other key types print differently here and in the request builder
        source_keys = key.take(pa.array(rows)).cast(pa.string())
        given = self._rejected.column("key").take(pa.array(rejection_index[rows])).combine_chunks()
        same = pc.fill_null(pc.equal(source_keys, given), pc.is_null(given))
        wrong = np.flatnonzero(~same.to_numpy(zero_copy_only=False))
        self.problems.add(
            "rejection_key",
            lambda: [
                f"row {self.rows - len(key) + rows[i]}: key {given[i].as_py()!r} in the "
                f"rejection, {source_keys[i].as_py()!r} in the source"
                for i in wrong[:_MAX_NAMED].tolist()
            ],
            len(wrong),
        )
