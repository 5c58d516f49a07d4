"""The echo responder's Anthropic Messages endpoint (`/v1/messages`): the last user text back
as a Message, cut by `max_tokens`, with the input and output tokens it counted. A request
forcing a call of a tool with an `input_schema` (`tool_choice` of type `tool`) is answered
with that call (a `tool_use` block, `stop_reason: tool_use`) whose input is a valid
instance of the schema, as `echo_structured` makes it, with its failure markers.

Anthropic's own tokenizer is not public, so the counts come from the service's tokenizer
(core.tokens): exact for the echo, close to (not equal to) what Claude would count.
"""

from __future__ import annotations

from typing import Any

import orjson

from batch_pipeline.local_api._echo_text import count_tokens, echo_last_user, max_tokens
from batch_pipeline.local_api.answers import Answer
from batch_pipeline.local_api.echo_structured import StructuredAnswer, answer_texts, forced_tool
from batch_pipeline.local_api.request_texts import MESSAGES_ENDPOINT, content_text

Block = dict[str, Any]

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
    tool = forced_tool(body)
    if tool is None:
        text, input_tokens, output_tokens, cut = echo_last_user(texts, limit, model)
        content, stop_reason = [_text(text)], "max_tokens" if cut else "end_turn"
    else:
        answer, input_tokens = answer_texts(tool["input_schema"], texts, limit, model)
        content, stop_reason = _tool_call(answer, str(tool["name"]), key)
        output_tokens = answer.completion_tokens
    system = system_text(body.get("system"))
    if system:
        input_tokens += count_tokens(system, model)
    return 200, message_body(
        key=key,
        model=model,
        content=content,
        stop_reason=stop_reason,
        usage=(input_tokens, output_tokens),
    )


def _text(text: str) -> Block:
    return {"type": "text", "text": text}


def _tool_call(answer: StructuredAnswer, name: str, key: str) -> tuple[list[Block], str]:
    """The content and stop_reason of the answer to a forced tool call: the call; a refusal
    (text, `refusal`); a call cut short by `max_tokens` (its input empty); or, for an answer
    that is no JSON object (the `<<invalid_output>>` marker), text instead of the call."""
    if answer.refusal is not None:
        return [_text(answer.refusal)], "refusal"
    text = answer.text or ""
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        value = None
    if answer.cut:
        value = {}
    elif not isinstance(value, dict):
        return [_text(text)], "end_turn"
    call = {"type": "tool_use", "id": f"toolu_{key}", "name": name, "input": value}
    return [call], "max_tokens" if answer.cut else "tool_use"


def message_body(
    *, key: str, model: str, content: list[Block], stop_reason: str, usage: tuple[int, int]
) -> dict[str, Any]:
    """A Message as the Messages API answers it."""
    input_tokens, output_tokens = usage
    return {
        "id": f"msg_{key}",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": {
            "input_tokens": input_tokens,
            "output_tokens": output_tokens,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
        },
    }
