"""What answers each request of a batch: the offline `echo` responder or the `proxy` one.

Both answer `(status_code, body)`: the HTTP status and JSON body the live endpoint would
have answered (`respond_async` adds the upstream's request id). Fault triggers (faults.py),
where the settings honour them, are handled by the worker before a responder is asked, so
they behave the same with either.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import random
import secrets
import time
from functools import lru_cache
from typing import Any

import httpx2
import numpy as np
import orjson

from batch_pipeline.core.tokens import count_tokens as _count_tokens
from batch_pipeline.core.tokens import encoding_for_model
from batch_pipeline.local_api.answers import Answer, Reply, UpstreamUnavailable
from batch_pipeline.local_api.errors import error_body, error_type_for_status
from batch_pipeline.local_api.request_texts import content_text
from batch_pipeline.local_api.upstream import Flight, UpstreamWatch, Withdrawn, shown_url

log = logging.getLogger(__name__)

# Failures before the request reached the upstream: it was not sent, so not paid for.
_NOT_SENT = (httpx2.ConnectError, httpx2.ConnectTimeout)
PROBE_TIMEOUT = 10.0

DEFAULT_EMBEDDING_DIMENSIONS = 256
MODERATION_CATEGORIES = (
    "harassment",
    "harassment/threatening",
    "hate",
    "hate/threatening",
    "illicit",
    "illicit/violent",
    "self-harm",
    "self-harm/instructions",
    "self-harm/intent",
    "sexual",
    "sexual/minors",
    "violence",
    "violence/graphic",
)


# Batches repeat the same system prompt on every line: count each distinct text once.
count_tokens = lru_cache(maxsize=8192)(_count_tokens)


def _bad_request(message: str, param: str | None = None, code: str | None = None) -> Answer:
    return 400, error_body(message, param=param, code=code)


def _max_tokens(body: dict[str, Any], *names: str) -> int | None:
    for name in names:
        value = body.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return value
    return None


def _token_ids(encoding: Any, text: str) -> list[int]:
    """`encoding.encode_ordinary(text)`, with a shortcut for plain ASCII text.

    ASCII text needs none of the wrapper's care (no surrogates to replace), so the native
    tokenizer is called directly; any other text, or one the wrapper would refuse (too long,
    too many tokens), takes the public method, with its errors.
    """
    backend = getattr(encoding, "_backend", None)
    runtime = getattr(encoding, "_runtime", None)
    if backend is not None and runtime is not None and len(text) < 100_000 and text.isascii():
        ids = backend.encode(text)
        if isinstance(ids, list) and len(ids) <= (runtime.chunk_limit or 0):
            return ids
    return encoding.encode_ordinary(text)


def _decode(encoding: Any, tokens: list[int]) -> str:
    """The text of `tokens`, as `encoding.decode` gives it (invalid UTF-8 replaced).

    The tokenizer's native decoder is tried first: it is strict, so when it succeeds its
    text is the very one `decode` would build (byte by byte, in Python) from the same bytes.
    """
    backend = getattr(encoding, "_backend", None)
    if backend is not None:
        try:
            text = backend.decode(tokens)
        except Exception:  # invalid UTF-8 at the cut (or no such method): the slow path
            pass
        else:
            if isinstance(text, str):
                return text
    return encoding.decode(tokens)


def _echo(text: str, limit: int | None, model: str) -> tuple[str, int, int, bool]:
    """The echoed text cut to `limit` tokens.

    Returns (text, the exact token count of the whole text, that of the echo, whether it
    was cut). A text that may be cut is tokenized once, for both counts and the cut.
    """
    if not text:
        return text, 0, 0, False
    if limit is None:
        tokens = count_tokens(text, model)
        return text, tokens, tokens, False
    encoding = encoding_for_model(model)
    ids = _token_ids(encoding, text)
    if len(ids) <= limit:
        return text, len(ids), len(ids), False
    return _decode(encoding, ids[:limit]), len(ids), limit, True


def chat_completion_body(
    *,
    completion_id: str,
    model: str,
    created: int,
    content: str,
    prompt_tokens: int,
    completion_tokens: int,
    finish_reason: str = "stop",
) -> dict[str, Any]:
    """A `/v1/chat/completions` response body with the real endpoint's fields."""
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": content,
                    "refusal": None,
                    "annotations": [],
                },
                "logprobs": None,
                "finish_reason": finish_reason,
            }
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": 0,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
        },
        "service_tier": "default",
        "system_fingerprint": None,
    }


def unit_vector(text: str, dimensions: int) -> list[float]:
    """A deterministic unit vector seeded from a hash of `text`."""
    seed = int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")
    vector = np.random.default_rng(seed).standard_normal(dimensions)
    vector /= np.linalg.norm(vector)
    return vector.tolist()


class EchoResponder:
    """Answers with the last user text, shaped like the real endpoint's response.

    Token counts come from the model's real tokenizer (core.tokens); `max_tokens`,
    `max_completion_tokens` and `max_output_tokens` cut the echoed text.
    """

    is_async = False

    def respond(self, endpoint: str, body: dict[str, Any], key: str | None = None) -> Answer:
        """Answer one request body (`key`, a unique hex string, makes the response ids)."""
        key = key or secrets.token_hex(12)
        handler = self._handlers.get(endpoint)
        if handler is None:
            return _bad_request(
                f"The echo responder of the local Batch API does not implement {endpoint}.",
                code="unsupported_endpoint",
            )
        return handler(self, body, key)

    async def respond_async(
        self, endpoint: str, body: dict[str, Any], flight: Flight | None = None
    ) -> Reply:
        """Same as respond (for callers that await); no upstream, so no request id."""
        return (*self.respond(endpoint, body), None)

    async def start(self) -> None:
        """Nothing to open."""

    async def close(self) -> None:
        """Nothing to close."""

    # ------------------------------------------------------------------ endpoints

    def _chat(self, body: dict[str, Any], key: str) -> Answer:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            return _bad_request(
                "'messages' must be a non-empty array.", "messages", "missing_required_parameter"
            )
        model = str(body.get("model") or "echo")
        echo_index = -1
        for index, message in enumerate(messages):
            if not isinstance(message, dict):
                return _bad_request("Each message must be an object.", "messages")
            if message.get("role") == "user":
                echo_index = index
        limit = _max_tokens(body, "max_completion_tokens", "max_tokens")
        prompt_tokens = 0
        text, completion_tokens, cut = "", 0, False
        for index, message in enumerate(messages):
            content = content_text(message.get("content"))
            if index == echo_index:
                text, tokens, completion_tokens, cut = _echo(content, limit, model)
            else:
                tokens = count_tokens(content, model) if content else 0
            prompt_tokens += tokens
        return 200, chat_completion_body(
            completion_id=f"chatcmpl-{key}",
            model=model,
            created=int(time.time()),
            content=text,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            finish_reason="length" if cut else "stop",
        )

    def _responses(self, body: dict[str, Any], key: str) -> Answer:
        value = body.get("input")
        model = str(body.get("model") or "echo")
        texts: list[tuple[str, str]] = []
        if isinstance(value, str):
            texts.append(("user", value))
        elif isinstance(value, list):
            for item in value:
                if isinstance(item, dict) and "content" in item:
                    texts.append((str(item.get("role", "user")), content_text(item["content"])))
        else:
            return _bad_request(
                "'input' must be a string or an array.", "input", "missing_required_parameter"
            )
        instructions = body.get("instructions")
        input_tokens = count_tokens(instructions, model) if isinstance(instructions, str) else 0
        echo_index = max((i for i, (role, _) in enumerate(texts) if role == "user"), default=-1)
        limit = _max_tokens(body, "max_output_tokens")
        text, output_tokens, cut = "", 0, False
        for index, (_role, content) in enumerate(texts):
            if index == echo_index:
                text, tokens, output_tokens, cut = _echo(content, limit, model)
            else:
                tokens = count_tokens(content, model) if content else 0
            input_tokens += tokens
        now = int(time.time())
        return 200, {
            "id": f"resp_{key}",
            "object": "response",
            "created_at": now,
            "status": "incomplete" if cut else "completed",
            "completed_at": now,
            "error": None,
            "incomplete_details": {"reason": "max_output_tokens"} if cut else None,
            "instructions": instructions if isinstance(instructions, str) else None,
            "max_output_tokens": limit,
            "model": model,
            "output": [
                {
                    "type": "message",
                    "id": f"msg_{key}",
                    "status": "incomplete" if cut else "completed",
                    "role": "assistant",
                    "content": [
                        {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
                    ],
                }
            ],
            "parallel_tool_calls": True,
            "previous_response_id": None,
            "reasoning": {"effort": None, "summary": None},
            "store": False,
            "temperature": body.get("temperature", 1.0),
            "text": {"format": {"type": "text"}},
            "tool_choice": "auto",
            "tools": [],
            "top_p": body.get("top_p", 1.0),
            "truncation": "disabled",
            "usage": {
                "input_tokens": input_tokens,
                "input_tokens_details": {"cached_tokens": 0},
                "output_tokens": output_tokens,
                "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": input_tokens + output_tokens,
            },
            "user": None,
            "metadata": body.get("metadata") or {},
        }

    def _completions(self, body: dict[str, Any], key: str) -> Answer:
        prompt = body.get("prompt")
        prompts = [prompt] if isinstance(prompt, str) else prompt
        if not isinstance(prompts, list) or not all(isinstance(p, str) for p in prompts):
            return _bad_request(
                "'prompt' must be a string or an array of strings.",
                "prompt",
                "missing_required_parameter",
            )
        model = str(body.get("model") or "echo")
        limit = _max_tokens(body, "max_tokens")
        choices = []
        prompt_tokens = completion_tokens = 0
        for index, text in enumerate(prompts):
            echoed, tokens, echoed_tokens, cut = _echo(text, limit, model)
            prompt_tokens += tokens
            completion_tokens += echoed_tokens
            choices.append(
                {
                    "text": echoed,
                    "index": index,
                    "logprobs": None,
                    "finish_reason": "length" if cut else "stop",
                }
            )
        return 200, {
            "id": f"cmpl-{key}",
            "object": "text_completion",
            "created": int(time.time()),
            "model": model,
            "choices": choices,
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
            "system_fingerprint": None,
        }

    def _embeddings(self, body: dict[str, Any], key: str) -> Answer:
        value = body.get("input")
        model = str(body.get("model") or "echo")
        inputs: list[Any]
        if isinstance(value, str) or (
            isinstance(value, list) and value and all(isinstance(v, int) for v in value)
        ):
            inputs = [value]
        elif isinstance(value, list) and value:
            inputs = value
        else:
            return _bad_request(
                "'input' must be a string or a non-empty array.",
                "input",
                "missing_required_parameter",
            )
        dimensions = body.get("dimensions", DEFAULT_EMBEDDING_DIMENSIONS)
        if (
            not isinstance(dimensions, int)
            or isinstance(dimensions, bool)
            or not 1 <= dimensions <= 8192
        ):
            return _bad_request("'dimensions' must be an integer from 1 to 8192.", "dimensions")
        encoding_format = body.get("encoding_format", "float")
        if encoding_format not in ("float", "base64"):
            return _bad_request("'encoding_format' must be 'float' or 'base64'.", "encoding_format")
        data = []
        prompt_tokens = 0
        for index, item in enumerate(inputs):
            if isinstance(item, str):
                text = item
                prompt_tokens += count_tokens(text, model) if text else 0
            elif isinstance(item, list) and all(isinstance(t, int) for t in item):
                text = " ".join(map(str, item))
                prompt_tokens += len(item)
            else:
                return _bad_request("Each input must be a string or an array of tokens.", "input")
            vector = unit_vector(text, dimensions)
            embedding: Any = vector
            if encoding_format == "base64":
                embedding = base64.b64encode(np.asarray(vector, "<f4").tobytes()).decode()
            data.append({"object": "embedding", "index": index, "embedding": embedding})
        return 200, {
            "object": "list",
            "data": data,
            "model": model,
            "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
        }

    def _moderations(self, body: dict[str, Any], key: str) -> Answer:
        value = body.get("input")
        inputs = value if isinstance(value, list) else [value]
        if value is None or not inputs:
            return _bad_request("'input' is required.", "input", "missing_required_parameter")
        result = {
            "flagged": False,
            "categories": dict.fromkeys(MODERATION_CATEGORIES, False),
            "category_scores": dict.fromkeys(MODERATION_CATEGORIES, 0.0),
            "category_applied_input_types": {c: ["text"] for c in MODERATION_CATEGORIES},
        }
        return 200, {
            "id": f"modr-{key}",
            "model": str(body.get("model") or "omni-moderation-latest"),
            "results": [dict(result) for _ in inputs],
        }

    _handlers = {
        "/v1/chat/completions": _chat,
        "/v1/responses": _responses,
        "/v1/completions": _completions,
        "/v1/embeddings": _embeddings,
        "/v1/moderations": _moderations,
    }


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
