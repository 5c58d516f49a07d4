"""What a results table's unanswered rows failed with: rows per status and error code, with one
sample message each, read chunk by chunk (the results writer) or from a whole table (checks).

The groups are whatever error codes the rows carry, so a new code shows without a change here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from batch_pipeline.core.types import RowStatus

COLUMNS = ("status", "error_code", "error_message")
MAX_GROUPS = 20  # past this many (status, code) pairs, the rest are counted as one group
SAMPLE_CHARS = 120


@dataclass
class FailureTally:
    """Rows per (status, error code) of everything but `succeeded`, with a sample message."""

    _groups: dict[tuple[str, str | None], list[Any]] = field(default_factory=dict)

    def add(self, chunk: pa.RecordBatch | pa.Table) -> None:
        """Count the unanswered rows of `chunk` (it needs the `COLUMNS`)."""
        table = pa.Table.from_batches([chunk]) if isinstance(chunk, pa.RecordBatch) else chunk
        table = table.select(list(COLUMNS))
        unanswered = table.filter(pc.not_equal(table.column("status"), RowStatus.SUCCEEDED.value))
        if not unanswered.num_rows:
            return
        grouped = unanswered.group_by(["status", "error_code"], use_threads=False).aggregate(
            [([], "count_all"), ("error_message", "first")]
        )
        for row in grouped.to_pylist():
            key = (row["status"], row["error_code"])
            entry = self._groups.setdefault(key, [0, None])
            entry[0] += row["count_all"]
            entry[1] = entry[1] or row["error_message_first"]

    def groups(self) -> list[dict[str, Any]]:
        """The groups, most rows first: `status`, `error_code`, `rows`, `sample_message`."""
        ordered = sorted(self._groups.items(), key=lambda item: (-item[1][0], item[0][0]))
        rows = [
            {
                "status": status,
                "error_code": code,
                "rows": count,
                "sample_message": _shortened(message),
            }
            for (status, code), (count, message) in ordered
        ]
        if len(rows) > MAX_GROUPS:
            rest = sum(row["rows"] for row in rows[MAX_GROUPS - 1 :])
            rows = rows[: MAX_GROUPS - 1]
            rows.append(
                {"status": "other", "error_code": None, "rows": rest, "sample_message": None}
            )
        return rows


def failure_groups(table: pa.Table) -> list[dict[str, Any]]:
    """The failure groups of a whole results table (see `FailureTally.groups`)."""
    tally = FailureTally()
    tally.add(table)
    return tally.groups()


def _shortened(message: str | None) -> str | None:
    if message is None or len(message) <= SAMPLE_CHARS:
        return message
    return message[: SAMPLE_CHARS - 1] + "…"
