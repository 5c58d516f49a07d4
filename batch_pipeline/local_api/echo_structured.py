"""The echo responder's answers to a request with a JSON schema format (or, on Anthropic's
`/v1/messages`, a forced call of a tool with an `input_schema`): a valid instance of the
schema, deterministic in the request (enum choices, numbers and strings derived from the
user text), with exact token counts.

Markers in the user text rehearse the answers that do not fit:
- `<<invalid_output>>`  the answer is not JSON;
- `<<schema_violation>>` the answer is JSON with a key the schema does not have;
- `<<refusal>>`         the model refuses (`message.refusal` / a `refusal` content part /
                        `stop_reason: refusal`);
- `<<truncated>>`       the answer is cut short (`finish_reason: length` /
                        `status: incomplete` / `stop_reason: max_tokens`), as a token limit
                        smaller than the answer does.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import orjson

from batch_pipeline.local_api._echo_text import count_tokens, echo

INVALID_OUTPUT = "<<invalid_output>>"
SCHEMA_VIOLATION = "<<schema_violation>>"
REFUSAL = "<<refusal>>"
TRUNCATED = "<<truncated>>"
REFUSAL_TEXT = "I'm sorry, but I cannot help with that request."
_MAX_DEPTH = 12


@dataclass(frozen=True)
class StructuredAnswer:
    """The answer's text (None for a refusal), the refusal, its tokens, and whether it was cut."""

    text: str | None
    refusal: str | None
    completion_tokens: int
    cut: bool


def json_schema_of(endpoint: str, body: dict[str, Any]) -> dict[str, Any] | None:
    """The JSON schema a request's format asks its answer to fit, if any."""
    if endpoint == "/v1/chat/completions":
        form = body.get("response_format")
        if isinstance(form, dict) and form.get("type") == "json_schema":
            spec = form.get("json_schema")
            return spec.get("schema") if isinstance(spec, dict) else None
    elif endpoint == "/v1/responses":
        text = body.get("text")
        form = text.get("format") if isinstance(text, dict) else None
        if isinstance(form, dict) and form.get("type") == "json_schema":
            return form.get("schema") if isinstance(form.get("schema"), dict) else None
    return None


def forced_tool(body: dict[str, Any]) -> dict[str, Any] | None:
    """The tool a Messages body forces the model to call (`tool_choice` of type `tool`) and
    declares with an `input_schema` object, if any."""
    choice = body.get("tool_choice")
    if not isinstance(choice, dict) or choice.get("type") != "tool":
        return None
    tools = body.get("tools") if isinstance(body.get("tools"), list) else []
    for tool in tools:
        if isinstance(tool, dict) and tool.get("name") == choice.get("name"):
            return tool if isinstance(tool.get("input_schema"), dict) else None
    return None


def answer_texts(
    schema: dict[str, Any], texts: list[tuple[Any, str]], limit: int | None, model: str
) -> tuple[StructuredAnswer, int]:
    """The answer to the last user text among (role, text) pairs, and the prompt tokens of
    all the texts (as `echo_last_user` counts them)."""
    user = next((text for role, text in reversed(texts) if role == "user"), "")
    prompt_tokens = sum(count_tokens(text, model) for _, text in texts if text)
    return structured_answer(schema, user, limit, model), prompt_tokens


def structured_answer(
    schema: dict[str, Any], user_text: str, limit: int | None, model: str
) -> StructuredAnswer:
    """The answer to a user text under `schema` (and a token limit)."""
    if REFUSAL in user_text:
        return StructuredAnswer(None, REFUSAL_TEXT, count_tokens(REFUSAL_TEXT, model), False)
    value = _Instance(schema, user_text).of(schema, 0)
    if SCHEMA_VIOLATION in user_text and isinstance(value, dict):
        value["unexpected"] = True
    text = orjson.dumps(value).decode()
    if INVALID_OUTPUT in user_text:
        text = f"Here is the answer: {text}"
    if TRUNCATED in user_text:
        whole = count_tokens(text, model)
        limit = whole // 2 if limit is None else min(limit, whole // 2)
    echoed, _, tokens, cut = echo(text, limit, model)
    return StructuredAnswer(echoed, None, tokens, cut)


class _Instance:
    """Builds a valid instance of a schema, each choice derived from the user text."""

    def __init__(self, root: dict[str, Any], text: str) -> None:
        self.root = root
        self.text = text
        self.words = text.split() or ["echo"]
        self._seed = hashlib.sha256(text.encode("utf-8", "replace")).digest()
        self._draws = 0

    def _draw(self, modulo: int) -> int:
        """The next number below `modulo`, from the text's hash."""
        byte = self._seed[self._draws % len(self._seed)]
        self._draws += 1
        return (byte + self._draws) % max(modulo, 1)

    def _resolve(self, schema: dict[str, Any]) -> dict[str, Any]:
        ref = schema.get("$ref")
        if not isinstance(ref, str) or not ref.startswith("#/"):
            return schema
        target: Any = self.root
        for part in ref[2:].split("/"):
            target = target.get(part, {}) if isinstance(target, dict) else {}
        return target if isinstance(target, dict) else {}

    def of(self, schema: Any, depth: int) -> Any:
        schema = self._resolve(schema) if isinstance(schema, dict) else {}
        if "anyOf" in schema:
            branches = [b for b in schema["anyOf"] if self._resolve(b).get("type") != "null"]
            return self.of(branches[0], depth) if branches else None
        if "const" in schema:
            return schema["const"]
        if "enum" in schema:
            values = [v for v in schema["enum"] if v is not None] or [None]
            return values[self._draw(len(values))]
        kinds = schema.get("type")
        kinds = kinds if isinstance(kinds, list) else [kinds]
        kind = next((k for k in kinds if k != "null"), "null")
        if depth > _MAX_DEPTH or kind == "null":
            return None
        return getattr(self, f"_{kind}", self._string)(schema, depth)

    def _object(self, schema: dict[str, Any], depth: int) -> dict[str, Any]:
        return {
            name: self.of(sub, depth + 1) for name, sub in (schema.get("properties") or {}).items()
        }

    def _array(self, schema: dict[str, Any], depth: int) -> list[Any]:
        low = schema.get("minItems", 1)
        high = max(schema.get("maxItems", low + 2), low)
        count = low + self._draw(high - low + 1)
        return [self.of(schema.get("items") or {}, depth + 1) for _ in range(count)]

    def _integer(self, schema: dict[str, Any], depth: int) -> int:
        low, high = _bounds(schema, 1, 5)
        return int(low) + self._draw(int(high) - int(low) + 1)

    def _number(self, schema: dict[str, Any], depth: int) -> float:
        low, high = _bounds(schema, 0.0, 1.0)
        return round(low + (high - low) * self._draw(101) / 100, 2)

    def _boolean(self, schema: dict[str, Any], depth: int) -> bool:
        return bool(self._draw(2))

    def _string(self, schema: dict[str, Any], depth: int) -> str:
        fmt = schema.get("format")
        if fmt == "date":
            return f"2025-{1 + self._draw(12):02d}-{1 + self._draw(28):02d}"
        if fmt == "date-time":
            return f"2025-{1 + self._draw(12):02d}-{1 + self._draw(28):02d}T12:00:00Z"
        word = self.words[self._draw(len(self.words))]
        return " ".join(self.words[:8]) if depth <= 1 else word


def _bounds(schema: dict[str, Any], low: float, high: float) -> tuple[float, float]:
    """The range a number is drawn from: the schema's bounds, else [low, high]."""
    minimum = schema.get("minimum", schema.get("exclusiveMinimum"))
    maximum = schema.get("maximum", schema.get("exclusiveMaximum"))
    if minimum is not None and "exclusiveMinimum" in schema:
        minimum += 1
    if maximum is not None and "exclusiveMaximum" in schema:
        maximum -= 1
    low = low if minimum is None else minimum
    high = max(low, high if maximum is None else maximum)
    return low, high
