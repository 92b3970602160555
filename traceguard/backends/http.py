"""``OpenAICompatibleBackend``: a VLM judge served over HTTP (vLLM, SGLang, TGI, hosted APIs).

It POSTs to ``{base_url}/chat/completions`` with httpx, retries with tenacity, fails over between
base URLs, and returns every failure as a value (:class:`~traceguard.AuditorTimeout`,
:class:`~traceguard.AuditorUnavailable`, :class:`~traceguard.AuditorResponseError`)::

    backend = OpenAICompatibleBackend(
        ["http://gpu-a:8000/v1", "http://gpu-b:8000/v1"], model="DloadingX/GuardTrace-VL-3B"
    )

Only the I/O differs between the sync and async paths; request bodies, response parsing, the
retry decision and the failover choice are shared (``_openai_wire``, ``_retry``, ``_endpoints``).
"""

from __future__ import annotations

import asyncio
import base64
import functools
import json
import logging
import os
import threading
import time
import weakref
from collections.abc import Awaitable, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar, cast

import httpx
import tenacity

from traceguard._exceptions import (
    AuditorError,
    AuditorTimeout,
    AuditorUnavailable,
    ConfigurationError,
    TraceguardError,
)
from traceguard._http_deadline import (
    call_deadline,
    deadline_async_client,
    deadline_client,
    time_left,
)
from traceguard._http_log import quiet_url
from traceguard.backends._base import (
    ChatBackend,
    ChatRequest,
    ChatResult,
    Completion,
    ScoreResult,
    TokenDistribution,
)
from traceguard.backends._endpoints import Endpoints
from traceguard.backends._fast_http import AsyncHTTP11Pool, FastResponse, eligible
from traceguard.backends._openai_wire import (
    chat_body,
    logprobs_body,
    read_completion,
    read_distribution,
)
from traceguard.backends._pools import AsyncClientPool, ClientPool, shared_ssl_context
from traceguard.backends._retry import (
    Failure,
    Outcome,
    RetryPolicy,
    classify_exception,
    classify_response,
    retrying_kwargs,
)

__all__ = ["OpenAICompatibleBackend"]

_log = logging.getLogger("traceguard.backends.http")

_T = TypeVar("_T", Completion, TokenDistribution)
_Reader = Callable[..., _T]
# A request body, built when its call is about to be sent (or why it cannot be built).
_Body = Callable[[], "bytes | AuditorError"]

DEFAULT_API_KEY_ENV = "TRACEGUARD_AUDITOR_API_KEY"
OPENAI_TOP_LOGPROBS_LIMIT = 20


_MIN_SECRET_CHARS = 8
"""Shorter header values ("gzip", "1") are not worth scrubbing, and would mangle messages."""


def _secrets_of(
    api_key: str | None, headers: Mapping[str, str], urls: Sequence[str] = ()
) -> tuple[str, ...]:
    """Every credential-like string that must never appear in an error message, longest first.

    Any header value may be a credential (``X-Api-Key``, a proxy token); for ``Bearer x`` and
    ``Basic x`` the token alone is scrubbed too, since servers quote it without the scheme. A
    password in a base URL goes out as HTTP Basic auth, so its Basic token is scrubbed as well
    as the password (decoded and as written).
    """
    found = {api_key} if api_key else set()
    for value in headers.values():
        found.add(value)
        scheme, _, token = value.partition(" ")
        if token and scheme.lower() in ("bearer", "basic", "token"):
            found.add(token.strip())
    for url in urls:
        parsed = httpx.URL(url)
        if parsed.userinfo:
            pair = f"{parsed.username}:{parsed.password}"
            found.update((pair, parsed.userinfo.decode("ascii", "replace"), parsed.password))
            found.add(base64.b64encode(pair.encode("utf-8")).decode("ascii"))
    found.discard("application/json")
    return tuple(
        sorted((s for s in found if s and len(s) >= _MIN_SECRET_CHARS), key=len, reverse=True)
    )


class OpenAICompatibleBackend(ChatBackend):
    """A chat backend speaking the OpenAI ``/chat/completions`` API over HTTP.

    Args:
        base_url: the API root (``http://host:8000/v1``), or several in priority order. A
            connection failure or a 5xx moves the request to the next URL, and the failed URL
            is avoided for ``cooldown_s``.
        model: the served model name (vLLM's ``--served-model-name``).
        api_key: sent as ``Authorization: Bearer ...``. Defaults to the environment variable
            named by ``api_key_env``; none at all is fine for a local server. There is
            deliberately no fallback to ``OPENAI_API_KEY``: that key belongs to another
            provider and must not be sent to a self-hosted auditor. The key never appears in
            reprs, logs or error messages.
        timeout: the deadline of one call (:meth:`complete` and friends), in seconds: from
            waiting for a free connection to the last byte of the answer, retries and their
            waits included. A server that trickles its answer cannot stretch it; a request
            still unanswered then fails as :class:`~traceguard.AuditorTimeout`.
        attempt_timeout: the deadline of one attempt, connect to last byte (default: the whole
            ``timeout``). Set it below ``timeout`` to leave time for a retry, e.g. with
            ``retry_read_timeouts``.
        connect_timeout: seconds to wait for a connection (within the deadline).
        max_retries: retries after the first attempt. A request may use one more attempt per
            additional base URL, so failover is never starved of attempts.
        max_concurrency: requests in flight at once, per process for the sync path and per
            event loop for the async path; also the size of the connection pools.
        extra_body: merged into every request body (e.g. ``{"seed": 0}``, or vLLM's
            ``{"top_k": 1}``); it may override the defaults but not ``messages``.
        headers: extra HTTP headers.
        name: a label for logs and verdicts (default ``"http:<model>"``).
        backoff_s, max_backoff_s: exponential backoff with jitter between retries.
        max_retry_after_s: the longest ``Retry-After`` honoured; longer ones fail at once.
        cooldown_s: how long a failed base URL is avoided.
        retry_read_timeouts: also retry requests that timed out waiting for the answer.
        max_top_logprobs: the most ``top_logprobs`` asked for; 20 is OpenAI's limit, vLLM
            accepts more (its ``--max-logprobs``, 20 by default too).

    Score mode (:meth:`next_token_logprobs`) pre-fills the assistant turn with vLLM's
    ``continue_final_message`` extension, so it needs vLLM or SGLang; generation works with any
    OpenAI-compatible server.
    """

    def __init__(
        self,
        base_url: str | Sequence[str],
        model: str,
        *,
        api_key: str | None = None,
        api_key_env: str = DEFAULT_API_KEY_ENV,
        timeout: float = 120.0,
        attempt_timeout: float | None = None,
        connect_timeout: float = 5.0,
        max_retries: int = 3,
        max_concurrency: int = 16,
        extra_body: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        name: str | None = None,
        backoff_s: float = 0.5,
        max_backoff_s: float = 8.0,
        max_retry_after_s: float = 60.0,
        cooldown_s: float = 10.0,
        retry_read_timeouts: bool = False,
        max_top_logprobs: int = OPENAI_TOP_LOGPROBS_LIMIT,
    ) -> None:
        urls = [base_url] if isinstance(base_url, str) else list(base_url)
        self._endpoints = Endpoints(urls, cooldown_s=cooldown_s)
        if not model:
            raise ConfigurationError("OpenAICompatibleBackend needs a model name")
        if max_concurrency < 1 or max_retries < 0 or max_top_logprobs < 1:
            raise ConfigurationError(
                "max_concurrency and max_top_logprobs must be >= 1, max_retries >= 0"
            )
        if timeout <= 0 or connect_timeout <= 0 or (attempt_timeout or 1) <= 0:
            raise ConfigurationError("timeouts must be positive")
        extra = dict(extra_body or {})
        if "messages" in extra:
            raise ConfigurationError("extra_body must not set 'messages'")
        self.model = model
        # The served model is part of the name, so verdicts (and the verdict cache) of two models
        # behind the same kind of server never mix.
        self.name = name or f"http:{model}"
        self.max_concurrency = max_concurrency
        self.pipeline_width = max_concurrency
        self.max_top_logprobs = max_top_logprobs
        self._extra_body = extra
        self._api_key = api_key if api_key is not None else os.environ.get(api_key_env) or None
        self._headers = dict(headers or {})
        if self._api_key:
            self._headers.setdefault("Authorization", f"Bearer {self._api_key}")
        if not any(name.lower() == "content-type" for name in self._headers):
            self._headers["Content-Type"] = "application/json"
        self._secrets = _secrets_of(self._api_key, self._headers, self._endpoints.urls)
        self._timeout = httpx.Timeout(timeout, connect=connect_timeout)
        self._deadline_s = timeout
        self._attempt_s = attempt_timeout
        self._connect_timeout = connect_timeout
        self._policy = RetryPolicy(
            max_attempts=1 + max_retries + len(self._endpoints.urls) - 1,
            backoff_s=backoff_s,
            max_backoff_s=max_backoff_s,
            max_retry_after_s=max_retry_after_s,
            retry_read_timeouts=retry_read_timeouts,
        )
        self._retrying = retrying_kwargs(
            self._policy, can_fail_over=self._endpoints.any_up, time_left=time_left
        )
        self._lock = threading.Lock()
        self._closed = False
        self._pool: ClientPool | None = None
        self._executor: ThreadPoolExecutor | None = None
        # httpx async clients and asyncio queues belong to one event loop; a backend used from
        # several loops (one per test, one per asyncio.run) gets a pool per loop.
        self._loops: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, AsyncClientPool | AsyncHTTP11Pool
        ] = weakref.WeakKeyDictionary()
        # The async path's lean client serves plain-HTTP endpoints reached without a proxy
        # (httpx's per-request CPU capped the served path at ~0.7 of the auditor's capacity;
        # see ``_fast_http``). One kind of pool per backend, so one concurrency limit.
        self._lean_async = all(eligible(url) for url in self._endpoints.urls)

    def __repr__(self) -> str:
        urls = ", ".join(self._endpoints.shown.values())
        key = "set" if self._api_key else "none"
        return (
            f"OpenAICompatibleBackend(base_url=[{urls}], model={self.model!r}, "
            f"api_key={key}, max_concurrency={self.max_concurrency})"
        )

    # -- public API ----------------------------------------------------------------------------

    def complete(self, requests: Sequence[ChatRequest]) -> list[ChatResult]:
        """Generate greedily for each request, concurrently; one result per request, in order."""
        return self._run_batch(self._builders(requests, logprobs=None), read_completion)

    def next_token_logprobs(
        self, requests: Sequence[ChatRequest], top_k: int = 20
    ) -> list[ScoreResult]:
        """The first-token distribution after each request's assistant prefix.

        At most ``max_top_logprobs`` tokens come back even when ``top_k`` is larger.
        """
        builders = self._builders(requests, logprobs=self._top(top_k))
        return self._run_batch(builders, read_distribution)

    async def acomplete(self, requests: Sequence[ChatRequest]) -> list[ChatResult]:
        """Async :meth:`complete`, native: the requests share the event loop's client."""
        return await self._arun_batch(self._builders(requests, logprobs=None), read_completion)

    async def anext_token_logprobs(
        self, requests: Sequence[ChatRequest], top_k: int = 20
    ) -> list[ScoreResult]:
        """Async :meth:`next_token_logprobs`."""
        builders = self._builders(requests, logprobs=self._top(top_k))
        return await self._arun_batch(builders, read_distribution)

    def close(self) -> None:
        """Close the sync client and the worker threads; async clients are dropped."""
        with self._lock:
            self._closed = True
            pool, self._pool = self._pool, None
            executor, self._executor = self._executor, None
            self._loops = weakref.WeakKeyDictionary()
        if executor is not None:
            executor.shutdown(wait=True)
        if pool is not None:
            pool.close()

    async def aclose(self) -> None:
        """Close the current event loop's client as well as everything :meth:`close` does."""
        loop = asyncio.get_running_loop()
        with self._lock:
            pool = self._loops.pop(loop, None)
        if pool is not None:
            await pool.aclose()
        await asyncio.to_thread(self.close)

    # -- shared, no I/O ------------------------------------------------------------------------

    def _top(self, top_k: int) -> int:
        if top_k < 1:
            raise ValueError("top_k must be at least 1")
        return min(top_k, self.max_top_logprobs)

    def _builders(self, requests: Sequence[ChatRequest], *, logprobs: int | None) -> list[_Body]:
        # Bodies are built by the call that sends them, not all before the first is sent: JSON
        # and base64 of a large batch took as long as a server round trip, and while they were
        # being built for the whole batch no answer already back was read.
        return [functools.partial(self._body, request, logprobs=logprobs) for request in requests]

    def _body(self, request: ChatRequest, *, logprobs: int | None) -> bytes | AuditorError:
        try:
            if logprobs is None:
                body = chat_body(request, model=self.model, extra_body=self._extra_body)
            else:
                body = logprobs_body(
                    request, model=self.model, extra_body=self._extra_body, top_logprobs=logprobs
                )
        except TraceguardError as exc:
            # An image the auditor did not load: this request fails, the batch goes on.
            return AuditorError(f"cannot build the request: {exc}")
        try:
            # Encoded here, not by httpx inside the attempt: audited text may hold a lone
            # surrogate ("\ud800" in a JSON log) that UTF-8 cannot encode, and that must fail
            # this request alone, not raise out of the batch and fail every trace in it.
            return json.dumps(
                body, ensure_ascii=False, separators=(",", ":"), allow_nan=False
            ).encode("utf-8")
        except (TypeError, ValueError) as exc:
            return AuditorError(f"cannot encode the request: {type(exc).__name__}: {exc}")

    def _post_kwargs(self, url: str, body: bytes) -> dict[str, Any]:
        return {"url": f"{url}/chat/completions", "content": body, "headers": self._headers}

    def _classify(
        self, url: str, response: httpx.Response | FastResponse | httpx.HTTPError
    ) -> Outcome:
        where = self._endpoints.shown[url]
        left = time_left()
        if isinstance(response, httpx.TimeoutException) and left is not None and left <= 0:
            # Our deadline ran out, whatever phase it hit: the endpoint is not known to be down.
            reason = f"{where} did not answer within the call's deadline"
            return Outcome(failure=Failure(AuditorTimeout, reason))
        if isinstance(response, httpx.HTTPError):
            outcome = classify_exception(response, where=where, policy=self._policy)
        else:
            outcome = classify_response(
                response.status_code,
                response.headers,
                response.content,
                where=where,
                policy=self._policy,
            )
        failure = outcome.failure
        if failure is not None and failure.endpoint_down:
            self._endpoints.mark_down(url)
        else:
            self._endpoints.mark_up(url)
        if failure is not None and failure.retryable:
            _log.warning("%s: %s", self.name, self._scrub(failure.reason))
        return outcome

    def _finish(
        self, outcome: Outcome, attempts: int, started: float, reader: _Reader[_T]
    ) -> _T | AuditorError:
        latency_ms = (time.perf_counter() - started) * 1000.0
        if outcome.failure is not None:
            error = outcome.failure.to_error(attempts)
            return type(error)(self._scrub(str(error)))
        try:
            return reader(outcome.payload, model=self.model, latency_ms=latency_ms)
        except AuditorError as exc:
            return exc

    def _scrub(self, text: str) -> str:
        # Belt and braces: a server (or proxy) echoing our headers back must not leak the key,
        # nor any other credential passed as a header (``X-Api-Key``, a custom bearer token).
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    def _no_slot(self) -> Outcome:
        reason = f"{self.name}: no free connection before the call's deadline"
        return Outcome(failure=Failure(AuditorTimeout, reason))

    def _closed_error(self) -> AuditorError:
        return AuditorUnavailable(f"{self.name}: the backend is closed")

    # -- sync I/O ------------------------------------------------------------------------------

    def _client_options(self, connections: int) -> dict[str, Any]:
        limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
        return {"timeout": self._timeout, "limits": limits, "verify": shared_ssl_context()}

    def _sync_pool(self) -> ClientPool:
        with self._lock:
            if self._pool is None:
                self._pool = ClientPool(
                    self.max_concurrency, lambda n: deadline_client(**self._client_options(n))
                )
            return self._pool

    def _sync_executor(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(
                    self.max_concurrency, thread_name_prefix=f"traceguard-{self.name}"
                )
            return self._executor

    def _run_batch(self, bodies: Sequence[_Body], reader: _Reader[_T]) -> list[_T | AuditorError]:
        if self._closed:
            return [self._closed_error() for _ in bodies]
        # One deadline for the whole call, taken now: worker threads do not inherit context.
        deadline = time.monotonic() + self._deadline_s
        if len(bodies) <= 1:
            return [self._one(build, reader, deadline) for build in bodies]
        executor = self._sync_executor()
        return list(executor.map(lambda build: self._one(build, reader, deadline), bodies))

    def _one(self, build: _Body, reader: _Reader[_T], deadline: float) -> _T | AuditorError:
        body = build()
        if isinstance(body, AuditorError):
            return body
        started = time.perf_counter()
        pool = self._sync_pool()
        attempts = 0

        def attempt() -> Outcome:
            nonlocal attempts
            attempts += 1
            url = self._endpoints.pick()
            try:
                with call_deadline(self._attempt_s), quiet_url(), pool.slot(time_left()) as client:
                    try:
                        response: httpx.Response | httpx.HTTPError = client.post(
                            **self._post_kwargs(url, body)
                        )
                    except httpx.HTTPError as exc:
                        response = exc
            except TimeoutError:
                return self._no_slot()
            return self._classify(url, response)

        with call_deadline(deadline - time.monotonic()):
            outcome: Outcome = tenacity.Retrying(**self._retrying)(attempt)
        return self._finish(outcome, attempts, started, reader)

    # -- async I/O -----------------------------------------------------------------------------

    def _loop_pool(self) -> AsyncClientPool | AsyncHTTP11Pool:
        loop = asyncio.get_running_loop()
        with self._lock:
            pool = self._loops.get(loop)
            if pool is None:
                if self._lean_async:
                    pool = AsyncHTTP11Pool(
                        self.max_concurrency,
                        connect_timeout=self._connect_timeout,
                        headers=self._headers,
                    )
                else:
                    pool = AsyncClientPool(
                        self.max_concurrency,
                        lambda n: deadline_async_client(**self._client_options(n)),
                    )
                self._loops[loop] = pool
            return pool

    async def _apost(
        self, pool: AsyncClientPool | AsyncHTTP11Pool, url: str, body: bytes
    ) -> httpx.Response | FastResponse | httpx.HTTPError:
        """One POST within a slot of ``pool``: the answer, or the transport error as a value.

        Both pools bound the wait for a slot and the whole exchange by the call's deadline (the
        lean client takes it as its whole-response timeout).

        Raises:
            TimeoutError: no slot came free before the deadline.
        """
        try:
            if isinstance(pool, AsyncHTTP11Pool):
                async with pool.slot(time_left()) as lean:
                    left = time_left()
                    timeout = self._deadline_s if left is None else max(left, 0.0)
                    return await lean.post(f"{url}/chat/completions", body, timeout=timeout)
            async with pool.slot(time_left()) as client:
                return await client.post(**self._post_kwargs(url, body))
        except httpx.HTTPError as exc:
            return exc

    async def _arun_batch(
        self, bodies: Sequence[_Body], reader: _Reader[_T]
    ) -> list[_T | AuditorError]:
        if self._closed:
            return [self._closed_error() for _ in bodies]
        deadline = time.monotonic() + self._deadline_s
        if len(bodies) == 1:
            return [await self._aone(bodies[0], reader, deadline)]
        results: list[_T | AuditorError | None] = [None] * len(bodies)
        pending = iter(range(len(bodies)))

        # As many workers as slots, each building, sending and reading one call after another:
        # a task per call would build every body of the batch before reading the first answer.
        async def worker() -> None:
            for index in pending:
                results[index] = await self._aone(bodies[index], reader, deadline)

        await asyncio.gather(*(worker() for _ in range(min(len(bodies), self.max_concurrency))))
        return cast("list[_T | AuditorError]", results)  # every index was filled

    async def _aone(self, build: _Body, reader: _Reader[_T], deadline: float) -> _T | AuditorError:
        body = build()
        if isinstance(body, AuditorError):
            return body
        started = time.perf_counter()
        pool = self._loop_pool()
        attempts = 0

        async def attempt() -> Outcome:
            nonlocal attempts
            attempts += 1
            url = self._endpoints.pick()
            try:
                with call_deadline(self._attempt_s), quiet_url():
                    response = await self._apost(pool, url, body)
            except TimeoutError:
                return self._no_slot()
            return self._classify(url, response)

        with call_deadline(deadline - time.monotonic()):
            outcome = await self._attempts(attempt)
        return self._finish(outcome, attempts, started, reader)

    async def _attempts(self, attempt: Callable[[], Awaitable[Outcome]]) -> Outcome:
        """Run ``attempt`` and its retries (inside the call's deadline)."""
        # Most calls succeed at once: take the first attempt outside tenacity, whose per-call
        # bookkeeping cost as much CPU as the HTTP exchange itself. A failed first attempt is
        # handed to tenacity as its own first attempt, so retries go exactly as before.
        first = await attempt()
        if first.failure is None:
            return first
        replayed = False

        async def replay_then_attempt() -> Outcome:
            nonlocal replayed
            if not replayed:
                replayed = True
                return first
            return await attempt()

        outcome: Outcome = await tenacity.AsyncRetrying(**self._retrying)(replay_then_attempt)
        return outcome
