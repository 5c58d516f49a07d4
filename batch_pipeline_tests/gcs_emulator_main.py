"""gcp-storage-emulator as the GCS tests run it: `python gcs_emulator_main.py start ...`.

Three changes to how the emulator runs, none to what it answers:
- a threading HTTP server: its own answers one connection at a time, so a reader that stops
  partway through a large object, as a ranged reader does, would hold it for good;
- its storage behind one lock, since it takes none of its own and concurrent writes could
  lose a chunk;
- it exits when its standard input ends, so it never outlives the test session that started
  it, however that session ended.
"""

from __future__ import annotations

import functools
import http.server
import inspect
import os
import sys
import threading
from collections.abc import Callable
from typing import Any


def _locked(method: Callable[..., Any], lock: threading.RLock) -> Callable[..., Any]:
    @functools.wraps(method)
    def locked(*args: Any, **kwargs: Any) -> Any:
        with lock:
            return method(*args, **kwargs)

    return locked


def _lock_every_method(cls: type) -> None:
    lock = threading.RLock()
    for name, member in list(vars(cls).items()):
        if inspect.isfunction(member) and not name.startswith("__"):
            setattr(cls, name, _locked(member, lock))


def _exit_with_the_parent() -> None:
    sys.stdin.buffer.read()
    os._exit(0)


if __name__ == "__main__":
    http.server.HTTPServer = http.server.ThreadingHTTPServer  # type: ignore[misc]
    from gcp_storage_emulator.storage import Storage

    _lock_every_method(Storage)
    from gcp_storage_emulator.__main__ import main

    threading.Thread(target=_exit_with_the_parent, daemon=True).start()
    main(sys.argv[1:])
