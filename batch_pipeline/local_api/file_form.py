"""The form fields of a Files API upload, checked as OpenAI checks them.

Every field sent is either applied or refused with a 400 naming it: none is ignored.
`expires_after` comes in either of the two encodings a form can carry an object in: the
bracket fields the official SDKs send (`expires_after[anchor]`, `expires_after[seconds]`)
or one part holding the object as JSON (OpenAPI's default encoding of an object in a form).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

import orjson

from batch_pipeline.local_api.errors import ApiError
from batch_pipeline.local_api.uploads import MultipartUpload

FILE_PURPOSES = frozenset({"assistants", "batch", "fine-tune", "vision", "user_data", "evals"})
EXPIRES_AFTER = "expires_after"
_EXPIRES_AFTER_BRACKETS = ("expires_after[anchor]", "expires_after[seconds]")
FORM_FIELDS = frozenset({"purpose", EXPIRES_AFTER, *_EXPIRES_AFTER_BRACKETS})
MIN_EXPIRY_SECONDS = 3600
MAX_EXPIRY_SECONDS = 2_592_000


@dataclass(frozen=True)
class FileForm:
    """What an upload asks for: its purpose and, if it set one, its life in seconds."""

    purpose: str
    expires_after_seconds: int | None


def expires_after_seconds(value: Any, param: str) -> int | None:
    """The seconds of an `{anchor: created_at, seconds: N}` object (None when absent);
    a 400 naming `param` when the anchor or the range is wrong."""
    if value is None:
        return None
    seconds = value.get("seconds") if isinstance(value, dict) else None
    anchor = value.get("anchor") if isinstance(value, dict) else None
    if isinstance(seconds, str) and seconds.isdigit():
        seconds = int(seconds)
    if (
        anchor != "created_at"
        or not isinstance(seconds, int)
        or isinstance(seconds, bool)
        or not MIN_EXPIRY_SECONDS <= seconds <= MAX_EXPIRY_SECONDS
    ):
        raise ApiError(
            400,
            f"Invalid '{param}': anchor must be 'created_at' and seconds between "
            f"{MIN_EXPIRY_SECONDS} and {MAX_EXPIRY_SECONDS}.",
            param=param,
            code="invalid_value",
        )
    return seconds


def read_file_form(upload: MultipartUpload) -> FileForm:
    """Check the fields of a received upload; raises ApiError naming the field at fault."""
    fields = upload.fields
    if not upload.has_file:
        raise _missing("file")
    unknown = sorted(set(fields) - FORM_FIELDS)
    if unknown:
        name = unknown[0][:64]
        raise ApiError(
            400,
            f"Unrecognized request argument supplied: {name}",
            param=name,
            code="unknown_parameter",
        )
    purpose = fields.get("purpose")
    if not purpose:
        raise _missing("purpose")
    if purpose not in FILE_PURPOSES:
        raise ApiError(
            400,
            f"Invalid 'purpose': expected one of {', '.join(sorted(FILE_PURPOSES))}.",
            param="purpose",
            code="invalid_value",
        )
    if purpose == "batch" and not _batch_file_name(upload.filename or ""):
        raise ApiError(
            400,
            "Invalid file format for the Batch API: the file name must end in .jsonl "
            "(or have no extension).",
            param="file",
            code="invalid_file_format",
        )
    return FileForm(purpose, expires_after_seconds(_expires_after(fields), EXPIRES_AFTER))


def _batch_file_name(filename: str) -> bool:
    """A name the Batch API takes: `.jsonl`, or no extension at all (an SDK sends raw
    bytes or a file object without a name as `upload`)."""
    suffix = PurePosixPath(filename.replace("\\", "/")).suffix.lower()
    return suffix in ("", ".jsonl")


def _expires_after(fields: dict[str, str]) -> Any:
    """The `expires_after` object, from whichever encoding was sent (None when absent)."""
    brackets = any(name in fields for name in _EXPIRES_AFTER_BRACKETS)
    if EXPIRES_AFTER not in fields:
        if not brackets:
            return None
        return {
            "anchor": fields.get("expires_after[anchor]"),
            "seconds": fields.get("expires_after[seconds]"),
        }
    if brackets:
        raise ApiError(
            400,
            "Invalid 'expires_after': send it as one JSON part or as bracket fields, not both.",
            param=EXPIRES_AFTER,
            code="invalid_value",
        )
    try:
        value = orjson.loads(fields[EXPIRES_AFTER])
    except orjson.JSONDecodeError:
        raise ApiError(
            400,
            "Invalid 'expires_after': expected a JSON object "
            '{"anchor": "created_at", "seconds": N}.',
            param=EXPIRES_AFTER,
            code="invalid_value",
        ) from None
    if not isinstance(value, dict):
        return {}  # refused with the range message by expires_after_seconds
    return value


def _missing(name: str) -> ApiError:
    return ApiError(
        400,
        f"Missing required parameter: '{name}'.",
        param=name,
        code="missing_required_parameter",
    )
