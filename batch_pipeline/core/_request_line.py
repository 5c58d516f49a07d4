"""A request line as static bytes (written by orjson from the spec) around per-row slots, and
the lines of a slice of rows, made by one Arrow join of those bytes and the rows' values,
JSON-escaped in bulk."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.compute as pc

from batch_pipeline.core._json_escape import json_escape
from batch_pipeline.core.prompt_template import parse_template
from batch_pipeline.core.spec import SpecError
from batch_pipeline.core.types import Endpoint

_EMPTY = pa.scalar(b"", pa.large_binary())
_MARKERS = {
    "custom_id": "\x00bp:custom_id\x00",
    "prompt": "\x00bp:prompt\x00",
    "system": "\x00bp:system\x00",
}


@dataclass(frozen=True)
class Slot:
    """A per-row part of a line: the custom_id, or a column's value."""

    column: str | None  # None: the custom_id


CUSTOM_ID = Slot(None)


@dataclass(frozen=True)
class Template:
    """A spec text split into literal parts and column placeholders."""

    name: str  # the spec key, for messages
    pieces: tuple[str | Slot, ...]

    @classmethod
    def parse(cls, name: str, text: str) -> Template:
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise SpecError(f"{name}: the text cannot be encoded as UTF-8 ({exc.reason})") from None
        try:
            parsed = parse_template(text)
        except ValueError as exc:
            raise SpecError(f"{name}: {exc}") from None
        pieces: list[str | Slot] = []
        for literal, column in parsed:
            if literal:
                pieces.append(literal)
            if column is not None:
                pieces.append(Slot(column))
        return cls(name, tuple(pieces))

    @property
    def columns(self) -> list[str]:
        return [
            piece.column
            for piece in self.pieces
            if isinstance(piece, Slot) and piece.column is not None
        ]

    @property
    def literal_text(self) -> str:
        return "".join(piece for piece in self.pieces if isinstance(piece, str))

    @property
    def literal_bytes(self) -> int:
        return len(self.literal_text.encode("utf-8"))

    def json_pieces(self) -> list[bytes | Slot]:
        """The pieces with literals JSON-escaped (escaping commutes with concatenation)."""
        return [
            orjson.dumps(piece)[1:-1] if isinstance(piece, str) else piece for piece in self.pieces
        ]

    def fill(self, columns: Mapping[str, pa.Array]) -> pa.Array:
        """The text of each row, with its values in the placeholders (built by Arrow)."""
        parts = [
            pa.scalar(piece, pa.large_string())
            if isinstance(piece, str)
            else columns[piece.column or ""].cast(pa.large_string())
            for piece in self.pieces
        ]
        return pc.binary_join_element_wise(*parts, pa.scalar("", pa.large_string()))


class LineLayout:
    """The request line of a spec: the same bytes on every line but for the slots, the
    custom_id and each placeholder's value."""

    def __init__(
        self,
        endpoint: Endpoint,
        model: str,
        params: Mapping[str, Any],
        prompt: Template,
        system: Template | None,
    ) -> None:
        line = {
            "custom_id": _MARKERS["custom_id"],
            "method": "POST",
            "url": endpoint.value,
            "body": _request_body(endpoint, model, params, system is not None),
        }
        try:
            encoded = orjson.dumps(line) + b"\n"
        except orjson.JSONEncodeError as exc:
            raise SpecError(f"request: cannot be written as JSON: {exc}") from None
        slots: dict[bytes, list[bytes | Slot]] = {
            orjson.dumps(_MARKERS["custom_id"]): [b'"', CUSTOM_ID, b'"'],
            orjson.dumps(_MARKERS["prompt"]): [b'"', *prompt.json_pieces(), b'"'],
        }
        if system is not None:
            slots[orjson.dumps(_MARKERS["system"])] = [b'"', *system.json_pieces(), b'"']
        pieces: list[bytes | Slot] = [encoded]
        for marker, replacement in slots.items():
            if encoded.count(marker) != 1:
                raise SpecError("request.params: must not contain the builder's markers")
            pieces = [
                part
                for piece in pieces
                for part in (
                    _split_on(piece, marker, replacement) if isinstance(piece, bytes) else [piece]
                )
            ]
        self.pieces = _merge_bytes(pieces)

    def lines(self, columns: Mapping[str | None, pa.Array]) -> pa.Array:
        """The lines of some rows (large_binary): `columns` holds their custom_ids (key None),
        which need no escaping, and the text of each placeholder's column."""
        escaped = {
            name: array if name is None else json_escape(array) for name, array in columns.items()
        }
        parts = [
            escaped[piece.column]
            if isinstance(piece, Slot)
            else pa.scalar(piece, pa.large_binary())
            for piece in self.pieces
        ]
        return pc.binary_join_element_wise(*parts, _EMPTY)


def _request_body(
    endpoint: Endpoint, model: str, params: Mapping[str, Any], has_system: bool
) -> dict[str, Any]:
    """The endpoint's request body, with markers where the texts go."""
    prompt, system = _MARKERS["prompt"], _MARKERS["system"]
    if endpoint is Endpoint.CHAT_COMPLETIONS:
        messages = [{"role": "user", "content": prompt}]
        if has_system:
            messages.insert(0, {"role": "system", "content": system})
        return {"model": model, "messages": messages, **params}
    if endpoint is Endpoint.RESPONSES:
        body = {"model": model, "input": prompt}
        if has_system:
            body["instructions"] = system
        return {**body, **params}
    if endpoint is Endpoint.MESSAGES:
        body = {"model": model, "messages": [{"role": "user", "content": prompt}]}
        if has_system:
            body["system"] = system
        return {**body, **params}
    if endpoint is Endpoint.COMPLETIONS:
        return {"model": model, "prompt": prompt, **params}
    return {"model": model, "input": prompt, **params}  # embeddings, moderations: the input


def _split_on(piece: bytes, marker: bytes, replacement: list[bytes | Slot]) -> list[bytes | Slot]:
    before, found, after = piece.partition(marker)
    return [before, *replacement, after] if found else [piece]


def _merge_bytes(pieces: list[bytes | Slot]) -> list[bytes | Slot]:
    merged: list[bytes | Slot] = []
    for piece in pieces:
        if isinstance(piece, bytes) and merged and isinstance(merged[-1], bytes):
            merged[-1] += piece
        elif not (isinstance(piece, bytes) and not piece):
            merged.append(piece)
    return merged
