"""Receiving a multipart/form-data upload straight to a temporary file, within a size limit.

python-multipart parses the body as it streams in; the bytes of the `file` part go to a
file under the state dir as they arrive (never held whole in memory) and the upload is
refused as soon as they pass the limit. Other form fields are small and kept in memory.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import IO

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header

MAX_FIELD_BYTES = 64 * 1024
MAX_FIELDS = 32


class UploadTooLarge(Exception):
    """The file part passed the size limit."""


class UploadInvalid(Exception):
    """The body is not acceptable multipart/form-data."""


class MultipartUpload:
    """One multipart body being received; `file_path` holds the file part once finished."""

    def __init__(self, boundary: bytes, file_path: Path, max_file_bytes: int) -> None:
        self.file_path = file_path
        self.max_file_bytes = max_file_bytes
        self.fields: dict[str, str] = {}
        self.filename: str | None = None
        self.file_bytes = 0
        self._file: IO[bytes] | None = None
        self._has_file = False
        self._header_name = bytearray()
        self._header_value = bytearray()
        self._disposition = b""
        self._field_name: str | None = None
        self._field_value = bytearray()
        self._in_file = False
        self._parser = MultipartParser(
            boundary,
            {
                "on_part_begin": self._on_part_begin,
                "on_header_field": self._on_header_field,
                "on_header_value": self._on_header_value,
                "on_header_end": self._on_header_end,
                "on_headers_finished": self._on_headers_finished,
                "on_part_data": self._on_part_data,
                "on_part_end": self._on_part_end,
            },
        )

    @property
    def has_file(self) -> bool:
        return self._has_file

    async def receive(self, chunks: AsyncIterator[bytes]) -> None:
        """Feed the whole body; raises UploadTooLarge or UploadInvalid (temp file removed)."""
        try:
            async for chunk in chunks:
                if chunk:
                    self._parser.write(chunk)
            self._parser.finalize()
            if self._in_file or self._field_name is not None:
                raise UploadInvalid("The multipart body ended in the middle of a part.")
        except FormParserError as exc:
            self.discard()
            raise UploadInvalid("The body is not valid multipart/form-data.") from exc
        except BaseException:
            self.discard()
            raise
        finally:
            if self._file is not None:
                self._file.close()
                self._file = None

    def discard(self) -> None:
        """Remove the temporary file."""
        if self._file is not None:
            self._file.close()
            self._file = None
        with contextlib.suppress(OSError):
            self.file_path.unlink()

    # ------------------------------------------------------------------ parser callbacks

    def _on_part_begin(self) -> None:
        self._disposition = b""
        self._header_name.clear()
        self._header_value.clear()

    def _on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]
        if len(self._header_name) > MAX_FIELD_BYTES:
            raise UploadInvalid("A part header is too long.")

    def _on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]
        if len(self._header_value) > MAX_FIELD_BYTES:
            raise UploadInvalid("A part header is too long.")

    def _on_header_end(self) -> None:
        if bytes(self._header_name).lower() == b"content-disposition":
            self._disposition = bytes(self._header_value)
        self._header_name.clear()
        self._header_value.clear()

    def _on_headers_finished(self) -> None:
        _, options = parse_options_header(self._disposition)
        name = options.get(b"name")
        if name is None:
            raise UploadInvalid("A part has no name in its Content-Disposition header.")
        field_name = name.decode("utf-8", "replace")
        if b"filename" in options:
            if field_name != "file" or self._has_file:
                raise UploadInvalid("Send exactly one file, in the form field 'file'.")
            self.filename = options[b"filename"].decode("utf-8", "replace")[:1024]
            self._has_file = True
            self._in_file = True
            self._file = open(self.file_path, "wb")  # noqa: SIM115 - closed in receive()
        else:
            if len(self.fields) >= MAX_FIELDS:
                raise UploadInvalid("Too many form fields.")
            self._field_name = field_name
            self._field_value = bytearray()

    def _on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self._in_file:
            assert self._file is not None
            self.file_bytes += end - start
            if self.file_bytes > self.max_file_bytes:
                raise UploadTooLarge(self.max_file_bytes)
            self._file.write(data[start:end])
        else:
            self._field_value += data[start:end]
            if len(self._field_value) > MAX_FIELD_BYTES:
                raise UploadInvalid("A form field is too long.")

    def _on_part_end(self) -> None:
        if self._in_file:
            self._in_file = False
            assert self._file is not None
            self._file.flush()
        elif self._field_name is not None:
            self.fields[self._field_name] = self._field_value.decode("utf-8", "replace")
            self._field_name = None
