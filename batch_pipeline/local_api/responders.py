"""What answers each request of a batch: the offline `echo` responder (echo.py) or the
`proxy` one (proxy.py), as the settings ask."""

from __future__ import annotations

from batch_pipeline.local_api.answers import Responder
from batch_pipeline.local_api.echo import EchoResponder
from batch_pipeline.local_api.proxy import ProxyResponder
from batch_pipeline.local_api.settings import LocalApiSettings

__all__ = ["EchoResponder", "ProxyResponder", "make_responder"]


def make_responder(settings: LocalApiSettings) -> Responder:
    """The responder the settings ask for."""
    if settings.responder == "proxy":
        assert settings.upstream_url is not None
        return ProxyResponder(
            settings.upstream_url,
            api_key=settings.resolved_upstream_api_key(),
            concurrency=settings.concurrency,
            timeout=settings.upstream_timeout_seconds,
            max_retries=settings.upstream_max_retries,
            backoff=settings.upstream_backoff_seconds,
        )
    return EchoResponder()
