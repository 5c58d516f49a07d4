"""The `proxy` responder: forwards each request to an OpenAI-compatible live endpoint."""

from __future__ import annotations

import asyncio
import logging
import random
from typing import Any

import httpx2
import orjson

from batch_pipeline.local_api.answers import Answer, Reply, UpstreamUnavailable
from batch_pipeline.local_api.errors import error_body, error_type_for_status
from batch_pipeline.local_api.upstream import Flight, UpstreamWatch, Withdrawn, shown_url

log = logging.getLogger(__name__)

# Failures before the request reached the upstream: it was not sent, so not paid for.
_NOT_SENT = (httpx2.ConnectError, httpx2.ConnectTimeout)
PROBE_TIMEOUT = 10.0


class ProxyResponder:
    """Forwards each request body to `upstream_url` + the endpoint path.

    At most `concurrency` requests are in flight (service-wide). While the upstream is
    unreachable (connections refused), requests wait for it as a whole (UpstreamWatch)
    rather than each spending its retries; their batch's completion window, cancel or the
    service's stop ends the wait. 429 and 5xx answers, timeouts and connections lost
    mid-request are retried up to `max_retries` times with exponential backoff (honouring
    Retry-After up to 60 s); the final HTTP answer, whatever its status, is returned. The
    API key is sent, never logged.
    """

    is_async = True

    def __init__(
        self,
        upstream_url: str,
        *,
        api_key: str | None = None,
        concurrency: int = 16,
        timeout: float = 600.0,
        max_retries: int = 4,
        backoff: float = 0.5,
    ) -> None:
        self.base = upstream_url.rstrip("/")
        self._api_key = api_key
        self.concurrency = concurrency
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff = backoff
        self._client: httpx2.AsyncClient | None = None
        self._slots: asyncio.Semaphore | None = None
        self._watch: UpstreamWatch | None = None

    def __repr__(self) -> str:
        return f"ProxyResponder({shown_url(self.base)!r}, concurrency={self.concurrency})"

    def url_for(self, endpoint: str) -> str:
        """The upstream URL of an endpoint (a base ending in /v1 is not doubled)."""
        if self.base.endswith("/v1") and endpoint.startswith("/v1/"):
            return self.base + endpoint[3:]
        return self.base + endpoint

    async def start(self) -> None:
        """Open the HTTP client (on the event loop that will use it)."""
        headers = {"Content-Type": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        self._client = httpx2.AsyncClient(
            headers=headers,
            timeout=httpx2.Timeout(self.timeout, connect=min(10.0, self.timeout)),
            limits=httpx2.Limits(
                max_connections=self.concurrency, max_keepalive_connections=self.concurrency
            ),
            trust_env=False,
        )
        self._slots = asyncio.Semaphore(self.concurrency)
        self._watch = UpstreamWatch(
            self.base,
            self._probe,
            first_delay=self.backoff,
            max_delay=self.backoff * 2**self.max_retries,
        )

    async def close(self) -> None:
        """Stop watching the upstream; close the HTTP client."""
        if self._watch is not None:
            await self._watch.close()
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def _probe(self) -> None:
        """Return once the upstream gives any HTTP answer (to GET /v1/models)."""
        assert self._client is not None
        await self._client.get(self.url_for("/v1/models"), timeout=PROBE_TIMEOUT)

    async def respond_async(
        self, endpoint: str, body: dict[str, Any], flight: Flight | None = None
    ) -> Reply:
        """Forward one request; the upstream's final (status, body, request id).

        Raises UpstreamUnavailable when the retries of a request that timed out or lost its
        connection ran out, Withdrawn when `flight` closed before it could be sent (again).
        """
        url = self.url_for(endpoint)
        payload = orjson.dumps(body)
        flight = flight or Flight()
        retries = 0
        while True:
            delay = self.backoff * (2**retries) * (0.75 + random.random() / 2)
            try:
                response = await self._send(url, payload, flight)
            except _NOT_SENT:
                continue  # the watch holds the request until the upstream is back
            except httpx2.TransportError as exc:
                if not flight.open:
                    raise Withdrawn from None
                if retries >= self.max_retries:
                    raise UpstreamUnavailable(
                        f"{type(exc).__name__} from {shown_url(url)} after {retries + 1} attempts"
                    ) from None
                log.debug("upstream %s: %s; retrying", shown_url(url), type(exc).__name__)
            else:
                status = response.status_code
                if (
                    (status != 429 and status < 500)
                    or retries >= self.max_retries
                    or not flight.open
                ):
                    answer = _json_answer(status, response.content)
                    return (*answer, response.headers.get("x-request-id"))
                delay = _retry_after(response.headers.get("retry-after"), delay)
                log.debug("upstream %s answered %s; retrying", shown_url(url), status)
            retries += 1
            await asyncio.sleep(delay)

    async def _send(self, url: str, payload: bytes, flight: Flight) -> httpx2.Response:
        """One POST, once the upstream is reachable and a slot is free; a request that got
        no answer has the watch check the upstream."""
        assert self._client is not None and self._slots is not None and self._watch is not None
        await self._watch.reachable()
        async with self._slots:
            task = flight.depart()
            try:
                return await self._client.post(url, content=payload)
            except httpx2.TransportError:
                self._watch.suspect()
                raise
            finally:
                flight.arrive(task)


def _retry_after(value: str | None, default: float) -> float:
    try:
        seconds = float(value) if value is not None else default
    except ValueError:
        return default
    return min(max(seconds, 0.0), 60.0)


def _json_answer(status: int, content: bytes) -> Answer:
    """The upstream's answer; a body that is not a JSON object becomes an error (502 if 2xx)."""
    try:
        body = orjson.loads(content)
    except orjson.JSONDecodeError:
        body = None
    if isinstance(body, dict):
        return status, body
    return (status if status >= 400 else 502), error_body(
        f"The upstream answered HTTP {status} with a body that is not a JSON object: "
        f"{content[:200].decode('utf-8', 'replace')!r}",
        type=error_type_for_status(max(status, 500) if status < 400 else status),
        code="invalid_upstream_response",
    )
