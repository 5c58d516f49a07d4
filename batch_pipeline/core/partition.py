"""A partition: the source rows of one day, week or month, or the whole data set.

A pipeline's `partitions.kind` says how its rows are split (`Partitioning`):

- `daily` (the default): one partition per day, keyed `YYYY-MM-DD`;
- `weekly`: seven days from the key, `YYYY-MM-DD` of the week's first day (weeks begin on the
  weekday of `partitions.start`, on Monday without one);
- `monthly`: a calendar month, keyed `YYYY-MM-DD` of its first day;
- `none`: one partition holding every row, keyed `all`.

Dated keys are the ones Dagster's Daily, Weekly and Monthly partitions definitions produce,
so a key means the same in the ledger, the storage layout and the Dagster UI.

A key is parsed once, where it enters (the CLI, a Dagster asset, a notebook's call of the
`Pipeline`), into a `Partition`; the steps below take that value and use its days and its
`key` without parsing the text again. Keys read back from the ledger were checked when the
partition was built.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, timedelta
from enum import StrEnum

PARTITION_PATTERN = re.compile(r"\d{4}-\d{2}-\d{2}")
WHOLE_KEY = "all"  # the one partition of a pipeline with `partitions: none`
RANGE_SEPARATOR = ".."


class PartitionKind(StrEnum):
    """How a pipeline's source rows are split into partitions."""

    NONE = "none"
    DAILY = "daily"
    WEEKLY = "weekly"
    MONTHLY = "monthly"


@dataclass(frozen=True)
class Partition:
    """Some of a pipeline's rows: its `key` (as the ledger and the storage layout spell it),
    its first `day` and `end`, the day after its last; both None for the whole data set."""

    key: str
    day: date | None
    end: date | None = None

    def __post_init__(self) -> None:
        if self.day is not None and self.end is None:  # one day unless told otherwise
            object.__setattr__(self, "end", self.day + timedelta(days=1))

    @classmethod
    def parse(cls, text: str) -> Partition:
        """The day `text` names; anything but a real `YYYY-MM-DD` is a ValueError."""
        if not isinstance(text, str) or not PARTITION_PATTERN.fullmatch(text):
            raise ValueError(f"partition {text!r} is not a day in the form YYYY-MM-DD")
        try:
            return cls(text, date.fromisoformat(text))
        except ValueError as exc:
            raise ValueError(f"partition {text!r} is not a valid date: {exc}") from None

    @classmethod
    def of(cls, value: str | Partition) -> Partition:
        """`value` as a Partition: parsed as a day if it is text, else as it is."""
        return value if isinstance(value, Partition) else cls.parse(value)

    @property
    def is_whole(self) -> bool:
        """Whether it holds every row of the source (a pipeline with `partitions: none`)."""
        return self.day is None

    @property
    def last_day(self) -> date | None:
        """Its last day (None for the whole data set)."""
        return None if self.end is None else self.end - timedelta(days=1)

    def __str__(self) -> str:
        return self.key


def partition_key(value: str | Partition) -> str:
    """The key of `value`, without parsing text (for lookups that take any key as it is)."""
    return value.key if isinstance(value, Partition) else value


@dataclass(frozen=True)
class Partitioning:
    """How one pipeline's rows are split, and its partitions' bounds: `start` is the first
    partition's first day, `end` the last day a partition covers (both optional)."""

    kind: PartitionKind = PartitionKind.DAILY
    start: date | None = None
    end: date | None = None

    def containing(self, day: date) -> Partition:
        """The partition holding `day`."""
        if self.kind is PartitionKind.NONE:
            return Partition(WHOLE_KEY, None, None)
        if self.kind is PartitionKind.DAILY:
            first, end = day, day + timedelta(days=1)
        elif self.kind is PartitionKind.WEEKLY:
            first = day - timedelta(days=(day.weekday() - self._week_start) % 7)
            end = first + timedelta(days=7)
        else:
            first = day.replace(day=1)
            end = (first + timedelta(days=31)).replace(day=1)
        return Partition(first.isoformat(), first, end)

    @property
    def _week_start(self) -> int:
        return self.start.weekday() if self.start is not None else 0  # Monday

    def parse(self, text: str) -> Partition:
        """The partition `text` names: ValueError unless it is a key of this kind."""
        if self.kind is PartitionKind.NONE:
            if text != WHOLE_KEY:
                raise ValueError(
                    f"partition {text!r}: this pipeline is not partitioned (partitions: none); "
                    f"its one partition is {WHOLE_KEY!r}"
                )
            return Partition(WHOLE_KEY, None)
        partition = self.containing(Partition.parse(text).day)
        if partition.key != text:
            raise ValueError(
                f"partition {text!r} is not the first day of a {self.kind} partition; "
                f"the day falls in {partition.key}"
            )
        return partition

    def of(self, value: str | Partition) -> Partition:
        """`value` as a partition of this kind: parsed if it is text, else as it is (a value
        of another kind, such as a day of a weekly pipeline, is looked at again)."""
        if not isinstance(value, Partition):
            return self.parse(value)
        whole = self.kind is PartitionKind.NONE
        if value.is_whole == whole and (whole or self.containing(value.day) == value):
            return value
        return self.parse(value.key)

    def check_bounds(self, partition: Partition) -> Partition:
        """`partition` if it lies within `start` and `end`, else a ValueError naming them."""
        if partition.is_whole:
            return partition
        before = self.start is not None and partition.day < self.start
        after = self.end is not None and partition.day > self.end
        if before or after:
            raise ValueError(
                f"partition {partition.key} is outside the pipeline's partitions, which run "
                f"from {self.start or 'any day'} to {self.end or 'now'}"
            )
        return partition

    def parse_range(self, text: str) -> list[Partition]:
        """The partitions `FIRST..LAST` names (both included), or the one `text` names; each
        within the bounds. ValueError for a range of an unpartitioned pipeline, an end before
        its start, or a key outside the bounds."""
        first, separator, last = text.partition(RANGE_SEPARATOR)
        if not separator:
            return [self.check_bounds(self.parse(text))]
        if self.kind is PartitionKind.NONE:
            raise ValueError(
                f"partition range {text!r}: this pipeline is not partitioned (partitions: none)"
            )
        start, end = self.parse(first), self.parse(last)
        if end.day < start.day:
            raise ValueError(f"partition range {text!r} ends before it starts")
        partitions = [self.check_bounds(start)]
        self.check_bounds(end)
        while partitions[-1].key != end.key:
            partitions.append(self.containing(partitions[-1].end))
        return partitions
