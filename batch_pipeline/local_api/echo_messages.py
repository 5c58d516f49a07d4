"""The echo responder's Anthropic Messages endpoint (`/v1/messages`): the last user text back
as a Message, cut by `max_tokens`, with the input and output tokens it counted.

Anthropic's own tokenizer is not public, so the counts come from the service's tokenizer
(core.tokens): exact for the echo, close to (not equal to) what Claude would count.
"""

from __future__ import annotations

from typing import Any

from batch_pipeline.local_api._echo_text import count_tokens, echo_last_user, max_tokens
from batch_pipeline.local_api.answers import Answer
from batch_pipeline.local_api.request_texts import MESSAGES_ENDPOINT, content_text

__all__ = ["MESSAGES_ENDPOINT", "anthropic_error", "message_body", "messages"]


def anthropic_error(error_type: str, message: str) -> dict[str, Any]:
    """An Anthropic error body: `{"type": "error", "error": {"type", "message"}}`."""
    return {"type": "error", "error": {"type": error_type, "message": message}}


def _invalid(message: str) -> Answer:
    return 400, anthropic_error("invalid_request_error", message)


def system_text(system: Any) -> str:
    """The text of a Messages `system`: a string, or the text of its blocks."""
    return content_text(system) if system is not None else ""


def messages(body: dict[str, Any], key: str) -> Answer:
    """Answer a `/v1/messages` body as the Messages API does, or with its 400 for a body the
    API refuses (no `max_tokens`, no `messages`, no `model`)."""
    if not isinstance(body.get("model"), str) or not body["model"]:
        return _invalid("model: Field required")
    limit = max_tokens(body, "max_tokens")
    if limit is None or limit < 1:
        return _invalid("max_tokens: Field required (an integer of at least 1)")
    turns = body.get("messages")
    if not isinstance(turns, list) or not turns or not all(isinstance(m, dict) for m in turns):
        return _invalid("messages: Field required (a non-empty list of messages)")
    model = body["model"]
    texts = [(m.get("role"), content_text(m.get("content"))) for m in turns]
    text, input_tokens, output_tokens, cut = echo_last_user(texts, limit, model)
    system = system_text(body.get("system"))
    if system:
        input_tokens += count_tokens(system, model)
    return 200, message_body(
        key=key,
        model=model,
        text=text,
        stop_reason="max_tokens" if cut else "end_turn",
        usage=(input_tokens, output_tokens),
    )


def message_body(
    *, key: str, model: str, text: str, stop_reason: str, usage: tuple[int, int]
) -> dict[str, Any]:
    """A Message as the Messages API answers it."""
    input_tokens, output_tokens = usage
    return {
        "id": f"msg_{key}",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "text", "text": text}],
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": {
            "input_tokens": input_tokens,
            "output_tokens": output_tokens,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
        },
    }
