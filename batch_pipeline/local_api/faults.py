"""Fault triggers written into a request's user text, for rehearsing failures.

- `<<fail:CODE>>`  the request is answered with HTTP status CODE (400-599) and an OpenAI
                   error body `{"error": {"message", "type", "param", "code"}}`
- `<<hang>>`       the request is never processed (its batch ends only by expiry or cancel)
- `<<slow:SECONDS>>` the request is answered after SECONDS (other work goes on meanwhile)

They are looked for in the text the user wrote: chat `messages` with role `user`, the
responses `input` (a string or user items), completions `prompt`, embeddings and
moderations `input`. The first trigger found wins.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

from batch_pipeline.local_api.errors import ApiError
from batch_pipeline.local_api.request_texts import user_texts

FAULT_RE = re.compile(r"<<(?:fail:([45]\d\d)|(hang)|slow:(\d+(?:\.\d+)?))>>")


@dataclass(frozen=True)
class Fault:
    """A fault trigger found in a request."""

    kind: Literal["fail", "hang", "slow"]
    status: int = 0
    seconds: float = 0.0


def detect_fault(endpoint: str, body: dict[str, Any], raw: bytes | None = None) -> Fault | None:
    """The fault trigger of a request, if any (`raw`, the request's JSON line, speeds it up)."""
    if raw is not None and b"<<" not in raw:
        return None
    for text in user_texts(endpoint, body):
        match = FAULT_RE.search(text)
        if match is None:
            continue
        status, hang, seconds = match.groups()
        if hang:
            return Fault("hang")
        if status:
            return Fault("fail", status=int(status))
        return Fault("slow", seconds=float(seconds))
    return None


class EveryNth:
    """A service-wide fault that strikes on every Nth call (never when N is 0)."""

    def __init__(self, every: int) -> None:
        self.every = every
        self.calls = 0

    def strikes(self) -> bool:
        """Count a call; True if this one is to fail."""
        self.calls += 1
        return bool(self.every) and self.calls % self.every == 0


class CreateRateLimit:
    """`fault_create_429_every`: every Nth batch create of a dialect is refused with 429 and
    `retry-after: 1`, in that dialect's words (`message`, and the error's other fields)."""

    def __init__(self, every: int, message: str, **error: Any) -> None:
        self._every = EveryNth(every)
        self._message = f"{message} (simulated by fault_create_429_every)"
        self._error = error

    def check(self) -> None:
        """Count a create call; ApiError 429 if this one is to fail."""
        if self._every.strikes():
            raise ApiError(429, self._message, headers={"retry-after": "1"}, **self._error)
