"""A partition: one day of source rows, named by its key `YYYY-MM-DD`.

A key is parsed once, where it enters (the CLI, a Dagster asset, a notebook's call of the
`Pipeline`), into a `Partition`; the steps below take that value and use its `day` and its
`key` without parsing the text again. Keys read back from the ledger were checked when the
partition was built.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date

PARTITION_PATTERN = re.compile(r"\d{4}-\d{2}-\d{2}")


@dataclass(frozen=True)
class Partition:
    """One day of a pipeline's rows: its `key` (as the ledger and the storage layout spell
    it) and the `day` it names."""

    key: str
    day: date

    @classmethod
    def parse(cls, text: str) -> Partition:
        """The partition `text` names; anything but a real `YYYY-MM-DD` is a ValueError."""
        if not isinstance(text, str) or not PARTITION_PATTERN.fullmatch(text):
            raise ValueError(f"partition {text!r} is not a day in the form YYYY-MM-DD")
        try:
            return cls(text, date.fromisoformat(text))
        except ValueError as exc:
            raise ValueError(f"partition {text!r} is not a valid date: {exc}") from None

    @classmethod
    def of(cls, value: str | Partition) -> Partition:
        """`value` as a Partition: parsed if it is text, else as it is."""
        return value if isinstance(value, Partition) else cls.parse(value)

    def __str__(self) -> str:
        return self.key


def partition_key(value: str | Partition) -> str:
    """The key of `value`, without parsing text (for lookups that take any key as it is)."""
    return value.key if isinstance(value, Partition) else value
