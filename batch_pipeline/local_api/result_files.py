"""The end of a batch: its partial results become its output and error files.

On cancel or expiry, the requests not done go to the error file with code
`batch_cancelled` / `batch_expired`, and are counted as `failed`.
"""

from __future__ import annotations

import logging
import secrets
import time
from pathlib import Path
from typing import Any

import orjson

from batch_pipeline.local_api.batch_run import BatchRun
from batch_pipeline.local_api.partial_results import InputReader, PartialResults
from batch_pipeline.local_api.result_lines import (
    CANCELLED_CODE,
    CANCELLED_MESSAGE,
    EXPIRED_CODE,
    EXPIRED_MESSAGE,
    error_result,
)
from batch_pipeline.local_api.settings import LocalApiSettings, default_expiry
from batch_pipeline.local_api.store import Store

log = logging.getLogger(__name__)

# The error line of a request not done, by the way its batch ended.
UNFINISHED = {
    "expired": (EXPIRED_CODE, EXPIRED_MESSAGE),
    "cancelled": (CANCELLED_CODE, CANCELLED_MESSAGE),
}


class ResultFiles:
    """Writes a finished batch's output and error files into the store."""

    def __init__(self, store: Store, settings: LocalApiSettings) -> None:
        self.store = store
        self.settings = settings

    def file_ids(self, record: dict[str, Any]) -> dict[str, str]:
        """The ids the output and error files will get (recorded ones, else fresh ones)."""
        return {
            "_output_file_id": record.get("_output_file_id") or self.store.new_file_id(),
            "_error_file_id": record.get("_error_file_id") or self.store.new_file_id(),
        }

    def open_partial(self, batch_id: str) -> PartialResults:
        """The partial results of a batch, read back from its work dir."""
        return PartialResults(
            self.store.work_dir(batch_id), self.settings.progress_interval_seconds
        )

    def write(self, run: BatchRun, final: str) -> tuple[Any, ...]:
        """Turn the partial results into the output and error files (thread pool); returns
        (output file id, error file id, request counts, usage)."""
        record = self.store.get_batch(run.batch_id)
        assert record is not None
        ids = self.file_ids(record)
        # Recorded (durably) before the files exist, so a crash here re-uses these ids; the
        # move to finalizing has usually recorded them already.
        if any(record.get(name) != value for name, value in ids.items()):
            self.store.update_batch(run.batch_id, **ids)
        if run.partial is None:
            run.partial = self.open_partial(run.batch_id)
        partial = run.partial
        if final in UNFINISHED and record.get("_validated"):
            self._add_unfinished(record, partial, *UNFINISHED[final])
        partial.close()
        expires_at = self._expires_at(record)
        output_id = self._add_file(
            run.batch_id, partial.output_path, ids["_output_file_id"], "output", expires_at
        )
        error_id = self._add_file(
            run.batch_id, partial.errors_path, ids["_error_file_id"], "error", expires_at
        )
        total = (record.get("request_counts") or {}).get("total", 0)
        counts = {"total": total, "completed": partial.completed, "failed": partial.failed}
        return output_id, error_id, counts, _usage(partial)

    def _expires_at(self, record: dict[str, Any]) -> int | None:
        expires_after = record.get("_output_expires_after_seconds")
        if expires_after:
            return int(time.time()) + expires_after
        return default_expiry(self.settings)

    def _add_file(
        self, batch_id: str, path: Path, file_id: str, kind: str, expires_at: int | None
    ) -> str | None:
        """Store one result file under its id; None (no file) when it is empty."""
        if path.stat().st_size == 0:
            return None
        self.store.add_file(
            path,
            filename=f"{batch_id}_{kind}.jsonl",
            purpose="batch_output",
            file_id=file_id,
            expires_at=expires_at,
            keep_source=True,
        )
        return file_id

    def _add_unfinished(
        self, record: dict[str, Any], partial: PartialResults, code: str, message: str
    ) -> None:
        """Error lines for every request not done, read from the input file."""
        path = self.store.batch_input_path(record)
        if not path.exists():  # a batch from before batches kept their input, deleted since
            log.warning("batch %s: its input is gone; unfinished requests unlisted", record["id"])
            return
        reader = InputReader(path)
        try:
            while not reader.eof:
                prefix = secrets.token_hex(10)
                results = []
                for index, raw in enumerate(reader.next_chunk(self.settings.chunk_size)):
                    custom_id = orjson.loads(raw)["custom_id"]
                    if custom_id not in partial.done:
                        results.append(
                            error_result(custom_id, code, message, f"{prefix}{index:06x}")
                        )
                partial.add(results)
        finally:
            reader.close()


def _usage(partial: PartialResults) -> dict[str, Any]:
    """A batch's `usage`, summed over its succeeded requests."""
    return {
        "input_tokens": partial.input_tokens,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": partial.output_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": partial.input_tokens + partial.output_tokens,
    }
