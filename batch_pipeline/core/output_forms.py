"""How a request asks for answers in the pipeline's output schema: one form per endpoint.

Each provider endpoint that takes a JSON schema for its answers has an entry here, mapping the
checked `OutputSchema` to the body keys that carry it; an endpoint without one (embeddings,
moderations, text completions) takes no output schema, and a spec asking for one there is
refused at load. Anthropic's `/v1/messages` takes the schema as a tool's `input_schema` and
forces the call, so the answer is the call's input (which the results read as the answer's
text when the message has no text block).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from batch_pipeline.core.output_schema import OutputSchema
from batch_pipeline.core.types import Endpoint

BodyParams = dict[str, Any]


def _chat_form(schema: OutputSchema) -> BodyParams:
    """`/v1/chat/completions`: `response_format` of type `json_schema`, strict."""
    return {
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": schema.name, "schema": schema.schema, "strict": True},
        }
    }


def _responses_form(schema: OutputSchema) -> BodyParams:
    """`/v1/responses`: `text.format` of type `json_schema`, strict."""
    return {
        "text": {
            "format": {
                "type": "json_schema",
                "name": schema.name,
                "schema": schema.schema,
                "strict": True,
            }
        }
    }


def _messages_form(schema: OutputSchema) -> BodyParams:
    """`/v1/messages` (Anthropic): one tool whose `input_schema` is the schema, and
    `tool_choice` forcing the model to call it."""
    return {
        "tools": [
            {
                "name": schema.name,
                "description": TOOL_DESCRIPTION,
                "input_schema": schema.schema,
            }
        ],
        "tool_choice": {"type": "tool", "name": schema.name},
    }


TOOL_DESCRIPTION = "Give your answer as this tool's input."
OUTPUT_FORMS: dict[str, Callable[[OutputSchema], BodyParams]] = {
    Endpoint.CHAT_COMPLETIONS.value: _chat_form,
    Endpoint.RESPONSES.value: _responses_form,
    Endpoint.MESSAGES.value: _messages_form,
}
# The body keys a form sets, which `request.params` must then leave alone.
FORM_KEYS: dict[str, frozenset[str]] = {
    Endpoint.CHAT_COMPLETIONS.value: frozenset({"response_format"}),
    Endpoint.RESPONSES.value: frozenset({"text"}),
    Endpoint.MESSAGES.value: frozenset({"tools", "tool_choice"}),
}


def takes_output_schema(endpoint: str) -> bool:
    """Whether requests to `endpoint` can carry an output schema."""
    return str(endpoint) in OUTPUT_FORMS


def output_schema_params(endpoint: str, schema: OutputSchema | None) -> BodyParams:
    """The request body keys that ask `endpoint` for answers in `schema` (none without one)."""
    if schema is None:
        return {}
    form = OUTPUT_FORMS.get(str(endpoint))
    if form is None:
        raise ValueError(f"{endpoint} takes no output schema")
    return form(schema)
