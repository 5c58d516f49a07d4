"""What a pipeline's batches cost and saved: per partition and in total, from the ledger.

Each partition's figures are those its results were written with (the summary the ledger keeps
of the Parquet: rows per status, the tokens of its answered rows, the cost at batch and at live
price), so the report adds up the results files as they are, and needs neither the source nor
the provider. A rebuilt partition counts its current generation, the one its results hold. A
partition is placed on the day its key starts with (`2026-11-20`, a week's or a month's first
day); a key naming no day (an unpartitioned pipeline's) is placed on the day its results were
written. The same `Spend` gives the Dagster metadata of the `results` asset its figures.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import TYPE_CHECKING, Any, Protocol

from batch_pipeline.core.types import ResultsSummary, RowStatus

if TYPE_CHECKING:
    from batch_pipeline.core.ledger_records import PartitionRecord

_LEADING_DAY = re.compile(r"(\d{4})-(\d{2})(?:-(\d{2}))?(?!\d)")


class PartitionLister(Protocol):
    """What the report reads: the ledger's partitions of a pipeline."""

    def list_partitions(self, pipeline: str) -> list[PartitionRecord]: ...


def _add(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a + b


@dataclass(frozen=True)
class Spend:
    """Rows per status, tokens, and USD at batch and live price; a cost is None when the
    model's price is unknown (then so is any sum it is part of)."""

    rows: int = 0
    counts: Mapping[str, int] = field(default_factory=dict)
    input_tokens: int = 0
    output_tokens: int = 0
    cost_batch_usd: float | None = 0.0
    cost_live_usd: float | None = 0.0

    @classmethod
    def of(cls, summary: ResultsSummary | Mapping[str, Any]) -> Spend:
        """The spend of one partition's results summary (as written, or as the ledger keeps
        it)."""
        values = summary.to_dict() if isinstance(summary, ResultsSummary) else summary
        counts = values.get("counts") or {}
        return cls(
            rows=int(values.get("rows") or 0),
            counts={status.value: int(counts.get(status.value, 0)) for status in RowStatus},
            input_tokens=int(values.get("input_tokens") or 0),
            output_tokens=int(values.get("output_tokens") or 0),
            cost_batch_usd=values.get("cost_batch_usd"),
            cost_live_usd=values.get("cost_live_usd"),
        )

    @property
    def saved_usd(self) -> float | None:
        """What the same calls would have cost more at live price."""
        if self.cost_batch_usd is None or self.cost_live_usd is None:
            return None
        return self.cost_live_usd - self.cost_batch_usd

    @property
    def saved_percent(self) -> float | None:
        """The saving as a share of the live price (0 when nothing was paid)."""
        saved = self.saved_usd
        if saved is None:
            return None
        return 100 * saved / self.cost_live_usd if self.cost_live_usd else 0.0

    def __add__(self, other: Spend) -> Spend:
        statuses = dict.fromkeys([*self.counts, *other.counts])
        return Spend(
            rows=self.rows + other.rows,
            counts={s: self.counts.get(s, 0) + other.counts.get(s, 0) for s in statuses},
            input_tokens=self.input_tokens + other.input_tokens,
            output_tokens=self.output_tokens + other.output_tokens,
            cost_batch_usd=_add(self.cost_batch_usd, other.cost_batch_usd),
            cost_live_usd=_add(self.cost_live_usd, other.cost_live_usd),
        )

    def fields(self) -> dict[str, Any]:
        """Flat named values, in a stable order: rows, each status, tokens, USD."""
        return {
            "rows": self.rows,
            **{status.value: self.counts.get(status.value, 0) for status in RowStatus},
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cost_usd": self.cost_batch_usd,
            "live_cost_usd": self.cost_live_usd,
            "saved_usd": self.saved_usd,
            "saved_percent": None if self.saved_percent is None else round(self.saved_percent, 1),
        }


def total(spends: Iterable[Spend]) -> Spend:
    """The sum of `spends` (nothing spent for none)."""
    result = Spend()
    for spend in spends:
        result = result + spend
    return result


@dataclass(frozen=True)
class PartitionSpend:
    """One partition's spend, its generation and the day it is placed on."""

    partition: str
    day: date | None
    generation: int
    spend: Spend


@dataclass(frozen=True)
class SpendReport:
    """The spend of a pipeline's partitions whose results are written, in key order, and the
    keys of those built but not written yet (nothing of them counted)."""

    pipeline: str
    partitions: list[PartitionSpend]
    pending: list[str]
    start: date | None = None
    end: date | None = None

    @property
    def total(self) -> Spend:
        return total(p.spend for p in self.partitions)

    def daily(self) -> list[tuple[date, Spend]]:
        """The spend per day (see the module's note on a partition's day), by day."""
        days: dict[date, Spend] = {}
        for item in self.partitions:
            if item.day is not None:
                days[item.day] = days.get(item.day, Spend()) + item.spend
        return sorted(days.items())


def usd(value: float | None) -> str:
    """`$0.001234` (to the millionth: a day of a small model costs fractions of a cent);
    `unknown` for no price."""
    return "unknown" if value is None else f"${value:,.6f}"


def parse_day(text: str, option: str) -> date:
    """`YYYY-MM-DD` as a date; a ValueError naming `option` otherwise."""
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{option} {text!r} is not a date in the form YYYY-MM-DD") from None


def partition_day(record: PartitionRecord) -> date | None:
    """The day a partition is placed on: its key's leading day (a month key's first), else
    the day its results were written (UTC); None if neither."""
    match = _LEADING_DAY.match(record.partition)
    if match:
        year, month, day = match.groups()
        try:
            return date(int(year), int(month), int(day or 1))
        except ValueError:
            pass
    if record.collected_at is None:
        return None
    return datetime.fromtimestamp(record.collected_at, UTC).date()


def spend_report(
    ledger: PartitionLister,
    pipeline: str,
    *,
    start: date | None = None,
    end: date | None = None,
    through: str | None = None,
) -> SpendReport:
    """The spend of `pipeline`'s partitions placed from `start` to `end` (inclusive, either
    open), or of those whose key sorts up to `through`."""
    if start is not None and end is not None and start > end:
        raise ValueError(f"the report's start {start} is after its end {end}")
    written: list[PartitionSpend] = []
    pending: list[str] = []
    for record in ledger.list_partitions(pipeline):
        day = partition_day(record)
        if through is not None and record.partition > through:
            continue
        if (start is not None or end is not None) and not _within(day, start, end):
            continue
        if record.collected_at is None or record.summary is None:
            pending.append(record.partition)
            continue
        spend = Spend.of(record.summary)
        written.append(PartitionSpend(record.partition, day, record.generation, spend))
    return SpendReport(pipeline, written, pending, start, end)


def _within(day: date | None, start: date | None, end: date | None) -> bool:
    if day is None:
        return False
    return (start is None or day >= start) and (end is None or day <= end)
