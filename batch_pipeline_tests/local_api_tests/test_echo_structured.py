"""The echo responder under a JSON schema format (or Anthropic's forced tool call): a valid,
deterministic instance of the schema, and each failure on its marker."""

from __future__ import annotations

import orjson
import pytest

from batch_pipeline.core._output_rows import parse_answer
from batch_pipeline.core.output_schema import load_output_schema
from batch_pipeline.local_api.echo import EchoResponder

SCHEMA = {
    "type": "object",
    "properties": {
        "category": {"type": "string", "enum": ["a", "b", "c"]},
        "score": {"type": "integer", "minimum": 10, "maximum": 12},
        "when": {"type": "string", "format": "date"},
        "items": {"type": "array", "items": {"$ref": "#/$defs/Item"}, "minItems": 2},
        "note": {"anyOf": [{"type": "string"}, {"type": "null"}]},
    },
    "required": ["category", "score", "when", "items", "note"],
    "additionalProperties": False,
    "$defs": {
        "Item": {
            "type": "object",
            "properties": {"ok": {"type": "boolean"}, "x": {"type": "number"}},
            "required": ["ok", "x"],
            "additionalProperties": False,
        }
    },
}
FORMATS = {
    "/v1/chat/completions": lambda text: {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": text}],
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "t", "schema": SCHEMA, "strict": True},
        },
    },
    "/v1/responses": lambda text: {
        "model": "gpt-4o-mini",
        "input": text,
        "text": {"format": {"type": "json_schema", "name": "t", "schema": SCHEMA, "strict": True}},
    },
    "/v1/messages": lambda text: {
        "model": "claude-haiku-4-5",
        "max_tokens": 400,
        "messages": [{"role": "user", "content": text}],
        "tools": [
            {"name": "other", "input_schema": {"type": "object"}},
            {"name": "t", "description": "d", "input_schema": SCHEMA},
        ],
        "tool_choice": {"type": "tool", "name": "t"},
    },
}


def answer(endpoint: str, text: str) -> dict:
    status, body = EchoResponder().respond(endpoint, FORMATS[endpoint](text), key="k")[:2]
    assert status == 200
    return body


def content(endpoint: str, body: dict) -> tuple[str | None, str | None]:
    """(text, refusal) of an answer body; a tool call's input as its JSON text."""
    if endpoint == "/v1/chat/completions":
        message = body["choices"][0]["message"]
        return message["content"], message["refusal"]
    if endpoint == "/v1/messages":
        (block,) = body["content"]
        if body["stop_reason"] == "refusal":
            return None, block["text"]
        if block["type"] == "tool_use":
            assert block["name"] == "t"  # the forced tool, not the other one
            return orjson.dumps(block["input"]).decode(), None
        return block["text"], None
    (part,) = body["output"][0]["content"]
    return part.get("text"), part.get("refusal")


@pytest.mark.parametrize("endpoint", sorted(FORMATS))
def test_the_answer_is_a_valid_instance_deterministic_in_the_text(endpoint):
    root = load_output_schema(SCHEMA, base_dir=None, default_name="t").root
    texts = [content(endpoint, answer(endpoint, f"ticket {i} is late"))[0] for i in range(20)]
    values = [parse_answer(text, root) for text in texts]  # raises if one does not fit
    assert texts[3] == content(endpoint, answer(endpoint, "ticket 3 is late"))[0]
    assert len({value["category"] for value in values}) > 1  # derived from the text
    assert {value["score"] for value in values} <= {10, 11, 12}


@pytest.mark.parametrize("endpoint", sorted(FORMATS))
def test_each_marker_plays_its_failure(endpoint):
    not_json, _ = content(endpoint, answer(endpoint, "x <<invalid_output>>"))
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(not_json)
    violating, _ = content(endpoint, answer(endpoint, "x <<schema_violation>>"))
    assert orjson.loads(violating)["unexpected"] is True
    body = answer(endpoint, "x <<refusal>>")
    assert content(endpoint, body)[1]
    cut = answer(endpoint, "x <<truncated>>")
    if endpoint == "/v1/chat/completions":
        assert cut["choices"][0]["finish_reason"] == "length"
    elif endpoint == "/v1/messages":
        assert (cut["stop_reason"], cut["content"][0]["type"]) == ("max_tokens", "tool_use")
    else:
        assert (cut["status"], cut["incomplete_details"]) == (
            "incomplete",
            {"reason": "max_output_tokens"},
        )


def test_a_messages_request_without_a_forced_tool_is_echoed_as_text():
    body = FORMATS["/v1/messages"]("plain words") | {"tool_choice": {"type": "auto"}}
    status, answer = EchoResponder().respond("/v1/messages", body, key="k")[:2]
    assert status == 200
    assert (answer["content"], answer["stop_reason"]) == (
        [{"type": "text", "text": "plain words"}],
        "end_turn",
    )
