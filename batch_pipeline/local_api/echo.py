"""The offline `echo` responder: answers with the last user text, shaped like the real
endpoint's response (echo_generation.py, echo_vectors.py)."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import Any

from batch_pipeline.local_api.answers import Answer, Reply, bad_request
from batch_pipeline.local_api.echo_generation import chat, completions, responses
from batch_pipeline.local_api.echo_messages import MESSAGES_ENDPOINT, messages
from batch_pipeline.local_api.echo_vectors import embeddings, moderations
from batch_pipeline.local_api.upstream import Flight

_HANDLERS: dict[str, Callable[[dict[str, Any], str], Answer]] = {
    "/v1/chat/completions": chat,
    "/v1/responses": responses,
    "/v1/completions": completions,
    "/v1/embeddings": embeddings,
    "/v1/moderations": moderations,
    MESSAGES_ENDPOINT: messages,
}


class EchoResponder:
    """Answers with the last user text, shaped like the real endpoint's response.

    Token counts come from the model's real tokenizer (core.tokens); `max_tokens`,
    `max_completion_tokens` and `max_output_tokens` cut the echoed text.
    """

    is_async = False

    def respond(self, endpoint: str, body: dict[str, Any], key: str | None = None) -> Answer:
        """Answer one request body (`key`, a unique hex string, makes the response ids)."""
        key = key or secrets.token_hex(12)
        handler = _HANDLERS.get(endpoint)
        if handler is None:
            return bad_request(
                f"The echo responder of the local Batch API does not implement {endpoint}.",
                code="unsupported_endpoint",
            )
        return handler(body, key)

    async def respond_async(
        self, endpoint: str, body: dict[str, Any], flight: Flight | None = None
    ) -> Reply:
        """Same as respond (for callers that await); no upstream, so no request id."""
        return (*self.respond(endpoint, body), None)

    async def start(self) -> None:
        """Nothing to open."""

    async def close(self) -> None:
        """Nothing to close."""
