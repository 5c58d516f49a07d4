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

FAULT_RE = re.compile(r"<<(?:fail:([45]\d\d)|(hang)|slow:(\d+(?:\.\d+)?))>>")


@dataclass(frozen=True)
class Fault:
    """A fault trigger found in a request."""

    kind: Literal["fail", "hang", "slow"]
    status: int = 0
    seconds: float = 0.0


def content_text(content: Any) -> str:
    """The text of a message `content`: a string, or the text parts of a list joined by \\n."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, str):
                parts.append(part)
            elif isinstance(part, dict) and isinstance(part.get("text"), str):
                parts.append(part["text"])
        return "\n".join(parts)
    return ""


def user_texts(endpoint: str, body: dict[str, Any]) -> list[str]:
    """The texts a user wrote in a request body, by endpoint."""
    if endpoint == "/v1/chat/completions":
        messages = body.get("messages")
        if not isinstance(messages, list):
            return []
        return [
            content_text(m.get("content"))
            for m in messages
            if isinstance(m, dict) and m.get("role") == "user"
        ]
    if endpoint == "/v1/responses":
        value = body.get("input")
        if isinstance(value, str):
            return [value]
        if isinstance(value, list):
            return [
                content_text(item.get("content"))
                for item in value
                if isinstance(item, dict) and item.get("role", "user") == "user"
            ]
        return []
    key = "prompt" if endpoint == "/v1/completions" else "input"
    value = body.get(key)
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [content_text([v]) for v in value if isinstance(v, (str, dict))]
    return []


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
