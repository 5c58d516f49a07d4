"""The texts of a request body, by endpoint: what the user wrote (where fault triggers are
looked for) and what the endpoint counts as prompt tokens."""

from __future__ import annotations

from typing import Any

CHAT_ENDPOINT = "/v1/chat/completions"
RESPONSES_ENDPOINT = "/v1/responses"
COMPLETIONS_ENDPOINT = "/v1/completions"
MESSAGES_ENDPOINT = "/v1/messages"  # Anthropic's: chat-like turns, `system` beside them


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


def message_texts(messages: Any, *, user_only: bool = False) -> list[str]:
    """The content texts of a chat's `messages` (of role `user` alone if `user_only`)."""
    if not isinstance(messages, list):
        return []
    return [
        content_text(m.get("content"))
        for m in messages
        if isinstance(m, dict) and (not user_only or m.get("role") == "user")
    ]


def _input_field(endpoint: str) -> str:
    """The body field holding the input of an endpoint other than chat and responses."""
    return "prompt" if endpoint == COMPLETIONS_ENDPOINT else "input"


def _responses_user_texts(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [
            content_text(item.get("content"))
            for item in value
            if isinstance(item, dict) and item.get("role", "user") == "user"
        ]
    return []


def _input_user_texts(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [content_text([v]) for v in value if isinstance(v, (str, dict))]
    return []


def user_texts(endpoint: str, body: dict[str, Any]) -> list[str]:
    """The texts a user wrote in a request body, by endpoint."""
    if endpoint in (CHAT_ENDPOINT, MESSAGES_ENDPOINT):
        return message_texts(body.get("messages"), user_only=True)
    if endpoint == RESPONSES_ENDPOINT:
        return _responses_user_texts(body.get("input"))
    return _input_user_texts(body.get(_input_field(endpoint)))


def prompt_texts(endpoint: str, body: dict[str, Any]) -> list[str]:
    """The texts of a request body that the endpoint counts as prompt (input) tokens: every
    message of a chat (and a Messages body's `system`), the instructions and input of a
    response, the inputs of the rest."""
    if endpoint == CHAT_ENDPOINT:
        return message_texts(body.get("messages"))
    if endpoint == MESSAGES_ENDPOINT:
        system = body.get("system")
        return [content_text(system), *message_texts(body.get("messages"))]
    texts: list[str] = []
    if endpoint == RESPONSES_ENDPOINT and isinstance(body.get("instructions"), str):
        texts.append(body["instructions"])
    value = body.get(_input_field(endpoint))
    if isinstance(value, str):
        texts.append(value)
    elif isinstance(value, list):
        for item in value:
            if isinstance(item, str):
                texts.append(item)
            elif isinstance(item, dict):
                texts.append(content_text(item.get("content")))
    return texts
