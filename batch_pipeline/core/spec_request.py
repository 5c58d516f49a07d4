"""The spec's `request` section: what each row asks the model (endpoint, model, system,
prompt template, params, output schema)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from pydantic import (
    Field,
    field_serializer,
    field_validator,
)

from batch_pipeline.core._spec_base import _Section
from batch_pipeline.core.prompt_template import parse_template
from batch_pipeline.core.types import Endpoint

# The request keys that change what a request body holds (context_window only decides
# which rows are sent).
REQUEST_SHAPING_KEYS = ("endpoint", "model", "system", "prompt", "params", "output_schema")


class RequestSpec(_Section):
    endpoint: Endpoint = Field(
        default=Endpoint.CHAT_COMPLETIONS,
        description="The API each request calls: /v1/chat/completions, /v1/responses, "
        "/v1/embeddings, /v1/completions, /v1/moderations or /v1/messages (Anthropic).",
    )
    model: str = Field(description="The model every request names.")
    system: str | None = Field(
        default=None, description="A system message, with {column} placeholders like the prompt."
    )
    prompt: str = Field(
        description="Text with {column} placeholders ({{ and }} are literal braces); for "
        "embeddings and moderations it is the input, for completions the prompt."
    )
    params: dict[str, Any] = Field(
        default_factory=dict,
        description="More request parameters (max_tokens, temperature, ...) as the API takes.",
    )
    context_window: int | None = Field(
        default=None,
        description="The model's context in tokens; default from the built-in model table.",
    )
    output_schema: Any = Field(
        default=None,
        description="The JSON Schema answers must fit (inline, a .json file relative to the "
        "spec, or a pydantic model class): each top-level property becomes a typed column "
        "output_<property> of the results.",
    )

    @field_validator("prompt", "system")
    @classmethod
    def _template_parses(cls, text: str | None) -> str | None:
        if text is not None:
            parse_template(text)
        return text

    @field_validator("output_schema")
    @classmethod
    def _schema_given_as_one_of_its_forms(cls, value: Any) -> Any:
        if value is None or isinstance(value, dict | str | Path | type):
            return value
        raise ValueError(
            "must be a JSON Schema object, the path of a .json file, or a pydantic model class, "
            f"not {type(value).__name__}"
        )

    @field_serializer("output_schema")
    def _schema_as_json(self, value: Any) -> Any:
        """A model class is written (and hashed) as its JSON Schema."""
        if isinstance(value, Path):
            return str(value)
        return value.model_json_schema() if isinstance(value, type) else value

    @field_validator("params")
    @classmethod
    def _params_do_not_override(cls, params: dict[str, Any]) -> dict[str, Any]:
        reserved = {"model", "messages", "input", "prompt"} & params.keys()
        if reserved:
            raise ValueError(f"{sorted(reserved)} are set by the pipeline, not by params")
        return params

    @property
    def fingerprint(self) -> str:
        """A stable hash of what shapes the request bodies (endpoint, model, system, prompt,
        params), so a build made with another request can be told apart. The section holds
        no secret: keys live in `backend.api_key_env`'s variable."""
        shaping = self.model_dump(mode="json", include=set(REQUEST_SHAPING_KEYS))
        canonical = json.dumps(shaping, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()

    @property
    def placeholders(self) -> list[str]:
        """The column names the prompt and system texts refer to, in order, without repeats."""
        names: list[str] = []
        for text in (self.system or "", self.prompt):
            for _, column in parse_template(text):
                if column is not None and column not in names:
                    names.append(column)
        return names
