"""The options of the local Batch API service, defined once for the CLI and the Python API."""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from batch_pipeline.core.batch_caps import BATCH_CAPS, MB

RESPONDERS = ("echo", "proxy")


def _opt(default: Any, help: str, *, cli: bool = True, repr: bool = True, **extra: Any) -> Any:
    """A dataclass field whose metadata also describes its command-line flag."""
    return field(default=default, repr=repr, metadata={"help": help, "cli": cli, **extra})


@dataclass(frozen=True)
class LocalApiSettings:
    """Every option of the local OpenAI-compatible Files + Batches service.

    The CLI flags of `batch-pipeline serve` are generated from these fields
    (`completion_window_seconds` -> `--completion-window-seconds`).
    """

    state_dir: Path = _opt(  # noqa: RUF009 - _opt returns a dataclass field
        Path(".batch_api_state"), "Directory holding every file, batch and partial result."
    )
    host: str = _opt("127.0.0.1", "Interface to bind (127.0.0.1 unless you mean otherwise).")
    port: int = _opt(8780, "TCP port to listen on (0: any free port).")
    responder: str = _opt(
        "echo", "How requests are answered: echo (offline) or proxy.", choices=RESPONDERS
    )
    upstream_url: str | None = _opt(
        None,
        "proxy: base URL of an OpenAI-compatible server, e.g. http://127.0.0.1:8000 "
        "(the request's endpoint path such as /v1/chat/completions is appended).",
    )
    upstream_api_key_env: str | None = _opt(
        None, "proxy: name of the environment variable holding the upstream API key."
    )
    upstream_timeout_seconds: float = _opt(600.0, "proxy: timeout of one upstream request.")
    upstream_max_retries: int = _opt(
        4,
        "proxy: retries of one request that the upstream answered with 429 or 5xx, or that "
        "timed out or lost its connection (an unreachable upstream is waited for instead).",
    )
    upstream_backoff_seconds: float = _opt(
        0.5,
        "proxy: first retry delay; doubles on each further retry. While the upstream is "
        "unreachable, it is checked again after this delay, doubling up to the longest "
        "retry delay (backoff x 2^max_retries).",
    )
    concurrency: int = _opt(16, "proxy: upstream requests in flight at once, service-wide.")
    completion_window_seconds: float = _opt(
        86400.0, "Real length of the '24h' completion window; batches expire after it."
    )
    drain_seconds: float = _opt(
        15.0,
        "How long a batch that stops (cancelled, expired, or the service stopping; then 15 s "
        "at most) waits for the answers of requests already sent upstream, which are paid "
        "for; answers later than that are dropped, and counted in a warning.",
    )
    finalizing_seconds: float = _opt(
        0.0,
        "How long a batch stays in finalizing once its requests are done, as a provider's "
        "batches do while their result files are prepared; it cannot be cancelled then.",
    )
    api_key_env: str | None = _opt(
        None,
        "Name of the environment variable holding the API key clients must send "
        "(Authorization: Bearer ..., or api-key: ... on the Azure paths). Without it, no "
        "authentication.",
    )
    api_key: str | None = _opt(
        None,
        "The API key itself (Python API only; the CLI reads --api-key-env).",
        cli=False,
        repr=False,
    )
    insecure_no_auth: bool = _opt(
        False,
        "Serve on a host other than loopback without an API key: anyone who reaches the "
        "port can use the service (and, with proxy, spend the upstream's key).",
    )
    fault_triggers: bool | None = _opt(
        None,
        "Honour the <<fail:CODE>>, <<hang>> and <<slow:S>> triggers in request text, for "
        "rehearsals (default: on with echo, off with proxy, where they are real text).",
    )
    fault_create_429_every: int = _opt(
        0, "Fault: answer every Nth POST /v1/batches with 429 rate_limit_exceeded (0: never)."
    )
    fault_download_500_every: int = _opt(
        0, "Fault: answer every Nth GET /v1/files/{id}/content with 500 (0: never)."
    )
    batch_file_expiry_seconds: int = _opt(
        30 * 86400,
        "Life of purpose=batch uploads and of batch output and error files that set no "
        "expiry of their own, as OpenAI's default of 30 days (0: kept until deleted).",
    )
    max_upload_bytes: int = _opt(200 * MB, "Largest accepted upload, in bytes (413 above).")
    max_requests_per_batch: int = _opt(
        BATCH_CAPS["openai"].max_requests, "Most request lines in one batch input file."
    )
    azure_max_requests_per_batch: int = _opt(
        BATCH_CAPS["azure"].max_requests,
        "Most request lines in one batch input file of a batch created through the Azure "
        "paths (/openai/...), as Azure's global batch allows.",
    )
    max_batch_file_bytes: int = _opt(
        BATCH_CAPS["openai"].max_bytes, "Largest batch input file, in bytes."
    )
    anthropic_max_requests_per_batch: int = _opt(
        BATCH_CAPS["anthropic"].max_requests,
        "Most requests in one Message Batch (POST /v1/messages/batches), as Anthropic's.",
    )
    anthropic_max_batch_bytes: int = _opt(
        BATCH_CAPS["anthropic"].max_bytes,
        "Largest body of one Message Batch create call, in bytes, as Anthropic's.",
    )
    enqueued_token_limit: int | None = _opt(
        None,
        "Most prompt tokens of one model in unfinished batches at once, counted exactly; a "
        "batch past it fails with token_limit_exceeded, as the providers' limit does "
        "(default: no limit).",
    )
    chunk_size: int = _opt(2000, "Request lines processed per unit of work.")
    worker_threads: int = _opt(2, "Threads doing the CPU work of validation and responding.")
    workers: int | None = _opt(
        None,
        "Processes answering echo requests (token counts, answers, result lines), so the "
        "echo responder uses that many cores (default: the machine's cores for `batch-pipeline "
        "serve`; 1, this process alone, for a service started from Python).",
    )
    progress_interval_seconds: float = _opt(
        1.0, "How often the request counts of a running batch are written to disk."
    )
    log_level: str = _opt("info", "Logging level (debug, info, warning, error).")

    def __post_init__(self) -> None:
        object.__setattr__(self, "state_dir", Path(self.state_dir))
        if self.responder not in RESPONDERS:
            raise ValueError(f"responder must be one of {RESPONDERS}, not {self.responder!r}")
        if self.responder == "proxy" and not self.upstream_url:
            raise ValueError("the proxy responder needs upstream_url")
        self._check_ranges()
        if not 0 <= self.port <= 65535:
            raise ValueError("port must be between 0 and 65535")
        if not (
            self.api_key or self.api_key_env or self.insecure_no_auth or is_loopback(self.host)
        ):
            raise ValueError(
                f"host {self.host} is reachable from other machines: set an API key "
                "(--api-key-env VAR) or, to serve it open to all, --insecure-no-auth"
            )

    def _check_ranges(self) -> None:
        """Sizes, counts and durations: positive, or at least not negative."""
        positive = (
            "concurrency",
            "completion_window_seconds",
            "max_upload_bytes",
            "max_requests_per_batch",
            "azure_max_requests_per_batch",
            "max_batch_file_bytes",
            "anthropic_max_requests_per_batch",
            "anthropic_max_batch_bytes",
            "chunk_size",
            "worker_threads",
            "progress_interval_seconds",
            "upstream_timeout_seconds",
        )
        if self.enqueued_token_limit is not None:
            positive += ("enqueued_token_limit",)
        if self.workers is not None:
            positive += ("workers",)
        for name in positive:
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        for name in (
            "fault_create_429_every",
            "fault_download_500_every",
            "batch_file_expiry_seconds",
            "upstream_max_retries",
            "upstream_backoff_seconds",
            "finalizing_seconds",
            "drain_seconds",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")

    @property
    def triggers_faults(self) -> bool:
        """Whether fault triggers in request text are honoured (by default with echo only)."""
        if self.fault_triggers is None:
            return self.responder == "echo"
        return self.fault_triggers

    def resolved_api_key(self) -> str | None:
        """The key clients must present, or None when authentication is off."""
        if self.api_key:
            return self.api_key
        if self.api_key_env:
            value = os.environ.get(self.api_key_env, "")
            if not value:
                raise ValueError(f"environment variable {self.api_key_env} is not set or empty")
            return value
        return None

    def resolved_upstream_api_key(self) -> str | None:
        """The key sent upstream by the proxy responder, if one is configured."""
        if not self.upstream_api_key_env:
            return None
        value = os.environ.get(self.upstream_api_key_env, "")
        if not value:
            raise ValueError(
                f"environment variable {self.upstream_api_key_env} is not set or empty"
            )
        return value

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """Add one `--flag` per CLI-visible field to `parser`."""
        for f in dataclasses.fields(cls):
            if not f.metadata.get("cli", False):
                continue
            flag = "--" + f.name.replace("_", "-")
            kind = _flag_type(f)
            kwargs: dict[str, Any] = {"dest": f.name, "default": None}
            if kind is bool:
                kwargs["action"] = "store_true"
            elif kind == "bool | None":
                kwargs["action"] = argparse.BooleanOptionalAction
            else:
                kwargs["type"] = kind
            if "choices" in f.metadata:
                kwargs["choices"] = f.metadata["choices"]
            default = f.default
            kwargs["help"] = f.metadata["help"] + (
                f" (default: {default})" if default is not None else ""
            )
            parser.add_argument(flag, **kwargs)

    @classmethod
    def from_namespace(cls, args: argparse.Namespace) -> LocalApiSettings:
        """Settings from parsed CLI flags; flags not given keep the field defaults."""
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            value = getattr(args, f.name, None)
            if f.metadata.get("cli", False) and value is not None:
                values[f.name] = value
        return cls(**values)


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the flags of `batch-pipeline serve` (one per LocalApiSettings field)."""
    LocalApiSettings.add_arguments(parser)


def default_expiry(settings: LocalApiSettings) -> int | None:
    """When a batch file that sets no expiry of its own expires, from now (None: never)."""
    seconds = settings.batch_file_expiry_seconds
    return int(time.time()) + seconds if seconds else None


def is_loopback(host: str) -> bool:
    """Whether `host` is reachable from this machine only (a name other than localhost
    counts as reachable from others)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _flag_type(f: dataclasses.Field[Any]) -> Any:
    annotation = str(f.type)
    if annotation == "bool | None":
        return annotation
    if annotation == "bool":
        return bool
    if annotation.startswith("Path"):
        return Path
    if annotation.startswith("int"):
        return int
    if annotation.startswith("float"):
        return float
    return str
