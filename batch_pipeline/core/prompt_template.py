"""Prompt and system templates: `{column}` placeholders and `{{ }}` literal braces."""

from __future__ import annotations

import re

_TEMPLATE_TOKEN = re.compile(r"\{\{|\}\}|\{([^{}]*)\}|[{}]")
_NOT_IN_A_COLUMN_NAME = re.compile(r"[\"'\n]|^\s*$")
_BRACES_HINT = 'write {{ and }} for literal braces, as in {{"label": "..."}}'


def parse_template(text: str) -> list[tuple[str, str | None]]:
    """A prompt or system text as (literal text, column or None) pairs: `{column}` is a
    placeholder, `{{` and `}}` are literal braces. ValueError naming the character where a
    brace neither escapes nor opens a placeholder (a stray `{`, or JSON left unescaped)."""
    pieces: list[tuple[str, str | None]] = []
    literal, at = "", 0
    for token in _TEMPLATE_TOKEN.finditer(text):
        literal += text[at : token.start()]
        at = token.end()
        where = f"at character {token.start() + 1} ({text[token.start() : token.start() + 20]!r})"
        column = token.group(1)
        if token.group() in ("{{", "}}"):
            literal += token.group()[0]
        elif column is None:
            raise ValueError(f"a single {token.group()!r} {where}; {_BRACES_HINT}")
        elif _NOT_IN_A_COLUMN_NAME.search(column):
            raise ValueError(
                f"{{{column}}} {where} is not a {{column}} placeholder; {_BRACES_HINT}"
            )
        elif ":" in column or "!" in column:
            raise ValueError(
                f"placeholder {{{column}}} {where} has a format spec or conversion; write just "
                f"{{column}}, and {_BRACES_HINT}"
            )
        else:
            pieces.append((literal, column))
            literal = ""
    literal += text[at:]
    if literal:
        pieces.append((literal, None))
    return pieces
