"""The echo responder's text generation endpoints: chat completions, responses and
completions answer with the (last) user text, cut by the request's token limit."""

from __future__ import annotations

import time
from typing import Any

from batch_pipeline.local_api._echo_text import count_tokens, echo, echo_last_user, max_tokens
from batch_pipeline.local_api.answers import Answer, bad_request
from batch_pipeline.local_api.echo_structured import answer_texts, json_schema_of
from batch_pipeline.local_api.request_texts import (
    CHAT_ENDPOINT,
    RESPONSES_ENDPOINT,
    content_text,
)


def chat_completion_body(
    *,
    completion_id: str,
    model: str,
    created: int,
    content: str | None,
    prompt_tokens: int,
    completion_tokens: int,
    finish_reason: str = "stop",
    refusal: str | None = None,
) -> dict[str, Any]:
    """A `/v1/chat/completions` response body with the real endpoint's fields."""
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": content,
                    "refusal": refusal,
                    "annotations": [],
                },
                "logprobs": None,
                "finish_reason": finish_reason,
            }
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": 0,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
        },
        "service_tier": "default",
        "system_fingerprint": None,
    }


def chat(body: dict[str, Any], key: str) -> Answer:
    """Answer a `/v1/chat/completions` body."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return bad_request(
            "'messages' must be a non-empty array.", "messages", "missing_required_parameter"
        )
    if not all(isinstance(message, dict) for message in messages):
        return bad_request("Each message must be an object.", "messages")
    model = str(body.get("model") or "echo")
    texts = [(m.get("role"), content_text(m.get("content"))) for m in messages]
    limit = max_tokens(body, "max_completion_tokens", "max_tokens")
    text, refusal, prompt_tokens, completion_tokens, cut = _answer(
        CHAT_ENDPOINT, body, texts, limit, model
    )
    return 200, chat_completion_body(
        completion_id=f"chatcmpl-{key}",
        model=model,
        created=int(time.time()),
        content=text,
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        finish_reason="length" if cut else "stop",
        refusal=refusal,
    )


def _answer(
    endpoint: str, body: dict[str, Any], texts: list[tuple[Any, str]], limit: int | None, model: str
) -> tuple[str | None, str | None, int, int, bool]:
    """(text, refusal, prompt tokens, answer tokens, whether cut) of the answer to the last
    user text: its echo, or an instance of the JSON schema the request's format asks for."""
    schema = json_schema_of(endpoint, body)
    if schema is None:
        text, prompt_tokens, tokens, cut = echo_last_user(texts, limit, model)
        return text, None, prompt_tokens, tokens, cut
    answer, prompt_tokens = answer_texts(schema, texts, limit, model)
    return answer.text, answer.refusal, prompt_tokens, answer.completion_tokens, answer.cut


def _response_texts(value: Any) -> list[tuple[Any, str]] | None:
    """The (role, text) pairs of a responses `input`; None if it is neither string nor list."""
    if isinstance(value, str):
        return [("user", value)]
    if isinstance(value, list):
        return [
            (str(item.get("role", "user")), content_text(item["content"]))
            for item in value
            if isinstance(item, dict) and "content" in item
        ]
    return None


def responses(body: dict[str, Any], key: str) -> Answer:
    """Answer a `/v1/responses` body."""
    texts = _response_texts(body.get("input"))
    if texts is None:
        return bad_request(
            "'input' must be a string or an array.", "input", "missing_required_parameter"
        )
    model = str(body.get("model") or "echo")
    instructions = body.get("instructions")
    if not isinstance(instructions, str):
        instructions = None
    limit = max_tokens(body, "max_output_tokens")
    text, refusal, input_tokens, output_tokens, cut = _answer(
        RESPONSES_ENDPOINT, body, texts, limit, model
    )
    if instructions is not None:
        input_tokens += count_tokens(instructions, model)
    return 200, response_body(
        body,
        key=key,
        model=model,
        text=text or "",
        instructions=instructions,
        limit=limit,
        cut=cut,
        usage=(input_tokens, output_tokens),
        refusal=refusal,
    )


def response_body(
    request: dict[str, Any],
    *,
    key: str,
    model: str,
    text: str,
    instructions: str | None,
    limit: int | None,
    cut: bool,
    usage: tuple[int, int],
    refusal: str | None = None,
) -> dict[str, Any]:
    """A `/v1/responses` response body with the real endpoint's fields (a refusal content
    part in place of the text when `refusal` is given)."""
    now = int(time.time())
    input_tokens, output_tokens = usage
    status = "incomplete" if cut else "completed"
    return {
        "id": f"resp_{key}",
        "object": "response",
        "created_at": now,
        "status": status,
        "completed_at": now,
        "error": None,
        "incomplete_details": {"reason": "max_output_tokens"} if cut else None,
        "instructions": instructions,
        "max_output_tokens": limit,
        "model": model,
        "output": [
            {
                "type": "message",
                "id": f"msg_{key}",
                "status": status,
                "role": "assistant",
                "content": [
                    {"type": "refusal", "refusal": refusal}
                    if refusal is not None
                    else {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
                ],
            }
        ],
        "parallel_tool_calls": True,
        "previous_response_id": None,
        "reasoning": {"effort": None, "summary": None},
        "store": False,
        "temperature": request.get("temperature", 1.0),
        "text": request.get("text") or {"format": {"type": "text"}},
        "tool_choice": "auto",
        "tools": [],
        "top_p": request.get("top_p", 1.0),
        "truncation": "disabled",
        "usage": {
            "input_tokens": input_tokens,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": output_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": input_tokens + output_tokens,
        },
        "user": None,
        "metadata": request.get("metadata") or {},
    }


def completions(body: dict[str, Any], key: str) -> Answer:
    """Answer a `/v1/completions` body (one choice per prompt)."""
    prompt = body.get("prompt")
    prompts = [prompt] if isinstance(prompt, str) else prompt
    if not isinstance(prompts, list) or not all(isinstance(p, str) for p in prompts):
        return bad_request(
            "'prompt' must be a string or an array of strings.",
            "prompt",
            "missing_required_parameter",
        )
    model = str(body.get("model") or "echo")
    limit = max_tokens(body, "max_tokens")
    choices = []
    prompt_tokens = completion_tokens = 0
    for index, text in enumerate(prompts):
        echoed, tokens, echoed_tokens, cut = echo(text, limit, model)
        prompt_tokens += tokens
        completion_tokens += echoed_tokens
        choices.append(
            {
                "text": echoed,
                "index": index,
                "logprobs": None,
                "finish_reason": "length" if cut else "stop",
            }
        )
    return 200, {
        "id": f"cmpl-{key}",
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": choices,
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
        "system_fingerprint": None,
    }
