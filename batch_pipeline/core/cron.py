"""The check of a schedule's cron expression, so a typo is a spec error at load."""

from __future__ import annotations

import re

# The five fields of a cron expression, with the values each takes (day of week: 0 and 7 are
# Sunday), and the shorthands Dagster's schedules take.
_CRON_FIELDS = (
    ("minute", 0, 59),
    ("hour", 0, 23),
    ("day", 1, 31),
    ("month", 1, 12),
    ("weekday", 0, 7),
)
_CRON_SHORTHANDS = frozenset({"@hourly", "@daily", "@weekly", "@monthly", "@yearly", "@annually"})
_CRON_NAMES = re.compile(r"[a-z]{3}", re.IGNORECASE)  # jan..dec, sun..sat
_CRON_ITEM = re.compile(r"(\*|(\w+)(?:-(\w+))?)(?:/(\d+))?")


def cron_errors(cron: str) -> list[str]:
    """What is wrong with a cron expression (nothing for a valid one)."""
    if cron.strip() in _CRON_SHORTHANDS:
        return []
    fields = cron.split()
    if len(fields) != len(_CRON_FIELDS):
        return [f"{len(fields)} fields, not 5 (minute hour day month weekday)"]
    errors = []
    for text, (name, low, high) in zip(fields, _CRON_FIELDS, strict=True):
        for item in text.split(","):
            match = _CRON_ITEM.fullmatch(item)
            values = [v for v in (match.group(2), match.group(3)) if v] if match else []
            if match is None or any(
                not (_CRON_NAMES.fullmatch(v) or (v.isdigit() and low <= int(v) <= high))
                for v in values
            ):
                errors.append(f"{name} {item!r} (takes {low}-{high})")
    return errors
