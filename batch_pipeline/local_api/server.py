"""Serving the local Batch API: the `batch-pipeline serve` command and an in-process server."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import logging
import os
import signal
import socket
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import uvicorn

from batch_pipeline.local_api.app import create_app
from batch_pipeline.local_api.settings import LocalApiSettings

log = logging.getLogger(__name__)

GC_YOUNG_THRESHOLD = 20_000  # allocations between two collections of the youngest generation


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.listen(2048)  # connections made before uvicorn is up wait instead of being refused
    sock.set_inheritable(True)
    return sock


def base_url(host: str, port: int) -> str:
    """The `/v1` base URL clients use for a host and port."""
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/v1"


def _uvicorn_config(settings: LocalApiSettings, *, log_level: str) -> uvicorn.Config:
    return uvicorn.Config(
        create_app(settings),
        lifespan="on",
        log_level=log_level,
        access_log=False,
        timeout_graceful_shutdown=5,
        server_header=False,
    )


def warn_if_open(settings: LocalApiSettings) -> None:
    """Log a warning when the service was told to serve without authentication."""
    if settings.insecure_no_auth and not (settings.api_key or settings.api_key_env):
        log.warning(
            "serving on %s without authentication (insecure_no_auth): anyone who can reach "
            "the port can use the service%s",
            settings.host,
            ", and spend the upstream's API key" if settings.responder == "proxy" else "",
        )


def _startup_error(config: uvicorn.Config) -> Exception | None:
    """Why the app's startup failed (the state dir in use, say), if it did."""
    return config.app.state.service.startup_error


class LocalBatchApi:
    """The local Batch API running in this process, in a background thread.

    `start()` returns the base URL (ending in /v1); `stop()` stops the HTTP server and the
    batch worker; unfinished batches resume the next time a server opens the state dir.
    """

    def __init__(self, settings: LocalApiSettings) -> None:
        self.settings = settings
        self.url: str | None = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    def start(self, timeout: float = 30.0) -> str:
        """Start serving; returns the base URL."""
        config = _uvicorn_config(self.settings, log_level="warning")
        warn_if_open(self.settings)
        server = uvicorn.Server(config)
        sock = _bind(self.settings.host, self.settings.port)
        port = sock.getsockname()[1]
        failure: list[BaseException] = []

        def run() -> None:
            try:
                server.run(sockets=[sock])
            except BaseException as exc:  # SystemExit when the app's startup fails
                failure.append(exc)
            finally:
                sock.close()

        thread = threading.Thread(target=run, name="local-batch-api", daemon=True)
        thread.start()
        while not server.started:
            if not thread.is_alive():
                cause = _startup_error(config) or (failure[0] if failure else None)
                raise RuntimeError(f"the local Batch API failed to start: {cause}") from cause
            thread.join(0.01)
            timeout -= 0.01
            if timeout <= 0:
                server.should_exit = True
                raise RuntimeError("the local Batch API did not start in time")
        self._server, self._thread = server, thread
        self.url = base_url(self.settings.host, port)
        return self.url

    def stop(self, timeout: float = 60.0) -> None:
        """Stop serving and wait for the worker to put its progress on disk."""
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout)
        self._server = self._thread = None

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


@contextlib.contextmanager
def run_local_batch_api(
    state_dir: str | os.PathLike[str],
    *,
    responder: str = "echo",
    completion_window_seconds: float = 86400.0,
    api_key: str | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
    **options: Any,
) -> Iterator[str]:
    """Run the local Batch API in this process; yields its base URL (ending in /v1).

    Other keyword options are fields of LocalApiSettings (upstream_url, concurrency,
    fault_create_429_every, max_upload_bytes, ...). `port=0` picks a free port.
    """
    settings = LocalApiSettings(
        state_dir=Path(state_dir),
        responder=responder,
        completion_window_seconds=completion_window_seconds,
        api_key=api_key,
        host=host,
        port=port,
        **options,
    )
    server = LocalBatchApi(settings)
    url = server.start()
    try:
        yield url
    finally:
        server.stop()


class _AnnouncingServer(uvicorn.Server):
    """Prints its banner once it serves, when its Ctrl-C and SIGTERM handling is in place: a
    supervisor that stops the process as soon as it is announced stops it cleanly."""

    banner = ""

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if self.started and self.banner:
            print(self.banner, flush=True)


def serve_from_args(args: argparse.Namespace) -> int:
    """Serve until Ctrl-C or SIGTERM; returns the process exit code."""
    try:
        settings = LocalApiSettings.from_namespace(args)
        if settings.workers is None:  # the command uses every core; Python callers ask
            settings = dataclasses.replace(settings, workers=os.cpu_count() or 1)
        settings.resolved_api_key()
        settings.resolved_upstream_api_key()
    except (ValueError, TypeError) as exc:
        print(f"batch-pipeline serve: {exc}", file=sys.stderr)
        return 2
    server = _AnnouncingServer(_uvicorn_config(settings, log_level=settings.log_level))
    # Answering a batch makes and drops a few dicts per request, which sets off the cycle
    # collector every 700 allocations; this process has few cycles, so collect less often.
    gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])
    # After uvicorn's own logging setup, which would reset the root logger's level.
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("batch_pipeline").setLevel(settings.log_level.upper())
    warn_if_open(settings)
    try:
        sock = _bind(settings.host, settings.port)
    except OSError as exc:
        print(
            f"batch-pipeline serve: cannot listen on {settings.host}:{settings.port}: {exc}",
            file=sys.stderr,
        )
        return 1
    port = sock.getsockname()[1]
    server.banner = (
        f"Local Batch API on {base_url(settings.host, port)} "
        f"(state dir {settings.state_dir.resolve()}, responder {settings.responder}, "
        f"workers {settings.workers}, "
        f"auth {'on' if settings.api_key_env else 'off'}). Ctrl-C to stop."
    )
    # uvicorn re-raises the signal that stopped it; make that a no-op, not a traceback.
    previous = {sig: signal.signal(sig, lambda *_: None) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        server.run(sockets=[sock])
    except SystemExit as exc:  # the app's startup failed
        if (cause := _startup_error(server.config)) is not None:
            print(f"batch-pipeline serve: {cause}", file=sys.stderr)
        return int(exc.code or 1) if isinstance(exc.code, int) else 1
    finally:
        sock.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0 if server.started else 1
