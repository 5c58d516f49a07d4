"""The results of a running batch so far, and the reading of its input in chunks.

Results are appended, chunk by chunk, to two partial files in the batch's work dir
(`output.partial.jsonl`: 2xx answers; `errors.partial.jsonl`: other answers, with their
bodies, and requests that got none, as OpenAI splits them). They are the truth about what
is done: after a restart they are read back (a torn last line is cut off), the
`custom_id`s in them are skipped, and the batch goes on.
"""

from __future__ import annotations

import functools
import logging
import os
import secrets
import threading
import time
from pathlib import Path

import orjson

from batch_pipeline.local_api.result_lines import Result, ResultBlock, result_block, usage_tokens
from batch_pipeline.local_api.validation import read_lines

log = logging.getLogger(__name__)

OUTPUT_PARTIAL = "output.partial.jsonl"
ERRORS_PARTIAL = "errors.partial.jsonl"
CHUNK_MAX_BYTES = 4 * 1024 * 1024  # of input lines per chunk, bounding memory for big lines
RECOVERED_PREFIX = "recovered-"


class PartialResults:
    """The results of a running batch so far, in two append-only files, recoverable."""

    def __init__(self, work_dir: Path, sync_interval: float) -> None:
        self.lock = threading.Lock()
        self.done: set[str] = set()
        self.completed = 0
        self.failed = 0
        self.input_tokens = 0
        self.output_tokens = 0
        self.output_path = work_dir / OUTPUT_PARTIAL
        self.errors_path = work_dir / ERRORS_PARTIAL
        self._recover(self.output_path)
        self._recover(self.errors_path)
        # Done before this run: the requests a chunk of the input skips (chunks read the
        # input once, and validation let no custom_id in twice, so no other can be done).
        self.recovered = frozenset(self.done)
        self.recovered_path = _write_recovered(work_dir, self.recovered)
        self._out = open(self.output_path, "ab")  # noqa: SIM115 - closed in close()
        self._err = open(self.errors_path, "ab")  # noqa: SIM115
        self._sync_interval = sync_interval
        self._last_sync = time.monotonic()
        self.closed = False

    def _recover(self, path: Path) -> None:
        if not path.exists():
            return
        good = 0
        with open(path, "rb") as f:
            for raw in f:
                if not raw.endswith(b"\n"):
                    break
                try:
                    line = orjson.loads(raw)
                    custom_id = line["custom_id"]
                except (orjson.JSONDecodeError, KeyError, TypeError):
                    break
                good += len(raw)
                if custom_id in self.done:
                    continue
                self.done.add(custom_id)
                response = line.get("response")
                status = response.get("status_code", 0) if isinstance(response, dict) else 0
                if 200 <= status < 300:
                    self.completed += 1
                    inp, out = usage_tokens(response.get("body"))
                    self.input_tokens += inp
                    self.output_tokens += out
                else:
                    self.failed += 1
        if good < path.stat().st_size:
            log.warning("cutting a torn last line off %s", path)
            os.truncate(path, good)

    def add(self, results: list[Result]) -> None:
        """Append result lines (a custom_id already done is ignored)."""
        with self.lock:
            done = self.done
            self._append(result_block(r for r in results if r.custom_id not in done))

    def add_block(self, block: ResultBlock) -> None:
        """Append a chunk's results, answered without the requests done before this run
        (`recovered`): none of them can be done already."""
        with self.lock:
            self._append(block)

    def _append(self, block: ResultBlock) -> None:
        if self.closed:
            raise RuntimeError("partial results already closed")
        self.done.update(block.custom_ids)
        self.completed += block.completed
        self.failed += block.failed
        self.input_tokens += block.input_tokens
        self.output_tokens += block.output_tokens
        if block.output:
            self._out.write(block.output)
            self._out.flush()
        if block.errors:
            self._err.write(block.errors)
            self._err.flush()
        if time.monotonic() - self._last_sync >= self._sync_interval:
            self._sync()

    def _sync(self) -> None:
        for f in (self._out, self._err):
            f.flush()
            os.fsync(f.fileno())
        self._last_sync = time.monotonic()

    def close(self) -> None:
        """Flush to disk and close (idempotent)."""
        with self.lock:
            if self.closed:
                return
            self._sync()
            self._out.close()
            self._err.close()
            self.closed = True


class InputReader:
    """Reads a batch input file in chunks of non-blank lines, from `offset` (a line's
    start)."""

    def __init__(self, path: Path, offset: int = 0) -> None:
        self._file = open(path, "rb")  # noqa: SIM115 - closed in close()
        self._file.seek(offset)
        self._lines = read_lines(self._file)
        self.eof = False

    @property
    def offset(self) -> int:
        """Where the next chunk starts."""
        return self._file.tell()

    def next_chunk(self, size: int, max_bytes: int = CHUNK_MAX_BYTES) -> list[bytes]:
        """Up to `size` lines (fewer once they reach `max_bytes`); sets `eof` at the end."""
        chunk: list[bytes] = []
        total = 0
        for _number, raw in self._lines:
            if raw is None or not raw.strip():
                continue
            chunk.append(raw)
            total += len(raw)
            if len(chunk) >= size or total >= max_bytes:
                return chunk
        self.eof = True
        return chunk

    def close(self) -> None:
        self._file.close()


def _write_recovered(work_dir: Path, recovered: frozenset[str]) -> str | None:
    """The ids done before this run in a file of their own, named anew each run, so a chunk
    task names them instead of carrying them all to a worker process; None if there are
    none. The files of earlier runs are removed."""
    for stale in work_dir.glob(f"{RECOVERED_PREFIX}*"):
        stale.unlink(missing_ok=True)
    if not recovered:
        return None
    path = work_dir / f"{RECOVERED_PREFIX}{secrets.token_hex(8)}.ids"
    path.write_bytes(orjson.dumps(sorted(recovered)))
    return str(path)


@functools.lru_cache(maxsize=8)
def recovered_ids(path: str | None) -> frozenset[str]:
    """The ids `_write_recovered` wrote to `path` (none for None), read once per process."""
    return frozenset(orjson.loads(Path(path).read_bytes())) if path else frozenset()
