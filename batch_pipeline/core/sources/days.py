"""Which day a source row falls on: the days of a partition, and the filter that keeps their
rows, pushed down to the scan.

The partition column may be a date, a timestamp (naive: the day as it reads; tz-aware: the
day in the spec's `schedule.timezone`, the zone the partitions count days in) or an ISO text
(its first 10 characters are the day).
"""

from __future__ import annotations

from datetime import date, datetime, timedelta

import pyarrow as pa
import pyarrow.dataset as ds

from batch_pipeline.core.partition import PARTITION_PATTERN, Partition
from batch_pipeline.core.spec import SpecError

DAY_PREFIX = "^" + PARTITION_PATTERN.pattern  # a text that starts with a day


def parse_partition(partition: str | Partition) -> date:
    """The day a partition key names; anything but a real `YYYY-MM-DD` is a ValueError
    (`Partition.parse`, which entry points call once; this keeps the older name working)."""
    return Partition.of(partition).day


def day_span(days: date | Partition) -> tuple[date, date] | None:
    """The first day and the day after the last of `days` (one day, or a partition's days);
    None for a partition holding every row."""
    if isinstance(days, Partition):
        return None if days.day is None or days.end is None else (days.day, days.end)
    return days, days + timedelta(days=1)


def is_text(column_type: pa.DataType) -> bool:
    return pa.types.is_string(column_type) or pa.types.is_large_string(column_type)


def decoded(column: str, column_type: pa.DataType) -> tuple[ds.Expression, pa.DataType]:
    """The column as an expression over its values, and their type (a dictionary column's
    values, not its indices)."""
    field = ds.field(column)
    if pa.types.is_dictionary(column_type):
        return field.cast(column_type.value_type), column_type.value_type
    return field, column_type


def partition_filter(
    column: str,
    column_type: pa.DataType,
    day: date,
    *,
    timezone: str = "UTC",
    end: date | None = None,
) -> ds.Expression:
    """A dataset filter keeping the rows of `column` that fall on `day`, or on the days from
    `day` up to `end` (excluded) when it is given (pushed down to scans).

    A timezone-aware timestamp falls on the day it is in `timezone` (the spec's
    `schedule.timezone`, which the Dagster partitions and the nightly schedule count days
    in too); naive timestamps, dates and ISO strings are taken as they read.
    """
    field, column_type = decoded(column, column_type)
    end = end or day + timedelta(days=1)
    if pa.types.is_date(column_type):
        return (field >= pa.scalar(day, column_type)) & (field < pa.scalar(end, column_type))
    if pa.types.is_timestamp(column_type):
        zone = timezone if column_type.tz else None
        start, stop = _midnight(day, zone), _midnight(end, zone)
        return (field >= pa.scalar(start, column_type)) & (field < pa.scalar(stop, column_type))
    if is_text(column_type):
        # The same as "first 10 characters are one of the days", but as a range the scan can
        # push down: the upper end is the last day with its last character bumped.
        last = (end - timedelta(days=1)).isoformat()
        return (field >= day.isoformat()) & (field < last[:-1] + chr(ord(last[-1]) + 1))
    raise SpecError(
        f"source.partition_column: column {column!r} has type {column_type}; "
        "it must be a date, a timestamp or an ISO date string"
    )


def _midnight(day: date, tz: str | None) -> datetime:
    """Midnight at the start of `day`, as wall time (naive) or in the zone `tz`."""
    start = datetime.combine(day, datetime.min.time())
    if tz is None:
        return start
    import pandas as pd  # only for a zone: its rules for ambiguous and missing wall times

    localized = pd.Timestamp(start).tz_localize(tz, ambiguous=True, nonexistent="shift_forward")
    return localized.to_pydatetime()
