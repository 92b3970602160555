"""A scripted chat backend for tests of auditors. It runs no model.

:class:`ScriptedBackend` answers ``complete`` and ``next_token_logprobs`` from scripted steps,
consumed in order, then from a rule (a function of the request), and records every call. A call
that neither can answer is a test bug: it raises ``AssertionError`` and is kept in
:attr:`ScriptedBackend.unexpected`, because an auditor turns a backend that raises into an
auditor-error verdict and the test might not notice. :meth:`ScriptedBackend.verify`, run when a
``with`` block ends, fails on an unexpected call or a step left unconsumed::

    with ScriptedBackend(completions=["“Judgment”: 0"]) as backend:
        verdict = GuardTraceAuditor(backend).audit(trace)
    assert backend.requests[0].max_new_tokens == 512
"""

from __future__ import annotations

import math
import threading
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Literal, NoReturn, TypeAlias

from traceguard._exceptions import AuditorError
from traceguard.backends._base import (
    ChatBackend,
    ChatRequest,
    ChatResult,
    Completion,
    ScoreResult,
    TokenDistribution,
)

__all__ = ["BackendCall", "ScriptedAnswer", "ScriptedBackend", "ScriptedScores"]

ScriptedAnswer: TypeAlias = str | Completion | AuditorError
"""A ``complete`` answer: a text (a :class:`Completion` with it), a Completion, or an error."""
ScriptedScores: TypeAlias = Mapping[str, float] | TokenDistribution | AuditorError
"""A ``next_token_logprobs`` answer: token → probability, a distribution, or an error."""

Method = Literal["complete", "next_token_logprobs", "acomplete", "anext_token_logprobs"]


@dataclass(frozen=True)
class BackendCall:
    """One call the backend received: which method, with which requests."""

    method: Method
    requests: tuple[ChatRequest, ...]


class ScriptedBackend(ChatBackend):
    """Answers from a script and records every call (a test helper, never a product feature).

    Args:
        completions: answers for ``complete``, one per request, consumed in order.
        distributions: answers for ``next_token_logprobs``, one per request, in order.
        reply: answers ``complete`` requests once ``completions`` is used up.
        score: answers ``next_token_logprobs`` requests once ``distributions`` is used up.
        model: the model name on completions and distributions.
        latency_ms: the latency they report.
        name: the backend's name.

    The async twins answer on the event loop (no worker thread) and are recorded under their own
    names, so a test can tell which path an auditor took. Thread-safe.
    """

    def __init__(
        self,
        completions: Iterable[ScriptedAnswer] = (),
        distributions: Iterable[ScriptedScores] = (),
        *,
        reply: Callable[[ChatRequest], ScriptedAnswer] | None = None,
        score: Callable[[ChatRequest], ScriptedScores] | None = None,
        model: str = "scripted-model",
        latency_ms: float = 1.0,
        name: str = "scripted",
    ) -> None:
        self.name = name
        self.model = model
        self.latency_ms = latency_ms
        self.reply = reply
        self.score = score
        self._completions: deque[ScriptedAnswer] = deque(completions)
        self._distributions: deque[ScriptedScores] = deque(distributions)
        self._lock = threading.Lock()
        self._calls: list[BackendCall] = []
        self._unexpected: list[tuple[Method, ChatRequest]] = []
        self.closed = False

    # -- what happened ------------------------------------------------------------------------

    @property
    def calls(self) -> list[BackendCall]:
        """Every call so far, in order (a copy)."""
        with self._lock:
            return list(self._calls)

    @property
    def requests(self) -> list[ChatRequest]:
        """Every request so far, over all calls, in order."""
        return [request for call in self.calls for request in call.requests]

    @property
    def unexpected(self) -> list[tuple[Method, ChatRequest]]:
        """Requests nothing was scripted for (each also raised ``AssertionError``)."""
        with self._lock:
            return list(self._unexpected)

    @property
    def pending(self) -> int:
        """Scripted steps not consumed yet."""
        with self._lock:
            return len(self._completions) + len(self._distributions)

    def verify(self) -> None:
        """Raise ``AssertionError`` if a call was unexpected or a scripted step is left over."""
        problems = [
            f"unexpected {method} request: {request!r}" for method, request in self.unexpected
        ]
        with self._lock:
            left = (len(self._completions), len(self._distributions))
        if left[0]:
            problems.append(f"{left[0]} scripted completion(s) never asked for")
        if left[1]:
            problems.append(f"{left[1]} scripted distribution(s) never asked for")
        if problems:
            raise AssertionError("ScriptedBackend: " + "; ".join(problems))

    # -- the backend interface ----------------------------------------------------------------

    def complete(self, requests: Sequence[ChatRequest]) -> list[ChatResult]:
        """One scripted answer per request."""
        return self._answer("complete", requests)

    def next_token_logprobs(
        self, requests: Sequence[ChatRequest], top_k: int = 20
    ) -> list[ScoreResult]:
        """One scripted distribution per request (``top_k`` is not applied)."""
        return self._scores("next_token_logprobs", requests)

    async def acomplete(self, requests: Sequence[ChatRequest]) -> list[ChatResult]:
        """:meth:`complete`, answered on the event loop."""
        return self._answer("acomplete", requests)

    async def anext_token_logprobs(
        self, requests: Sequence[ChatRequest], top_k: int = 20
    ) -> list[ScoreResult]:
        """:meth:`next_token_logprobs`, answered on the event loop."""
        return self._scores("anext_token_logprobs", requests)

    def close(self) -> None:
        """Mark the backend closed (see :attr:`closed`)."""
        self.closed = True

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
        if exc_type is None:
            self.verify()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.__exit__(exc_type, exc, tb)

    # -- answering ----------------------------------------------------------------------------

    def _answer(self, method: Method, requests: Sequence[ChatRequest]) -> list[ChatResult]:
        results: list[ChatResult] = []
        for request in self._record(method, requests):
            with self._lock:
                step = self._completions.popleft() if self._completions else None
            if step is None and self.reply is not None:
                step = self.reply(request)
            if step is None:
                self._fail(method, request)
            results.append(
                Completion(text=step, latency_ms=self.latency_ms, model=self.model)
                if isinstance(step, str)
                else step
            )
        return results

    def _scores(self, method: Method, requests: Sequence[ChatRequest]) -> list[ScoreResult]:
        results: list[ScoreResult] = []
        for request in self._record(method, requests):
            with self._lock:
                step = self._distributions.popleft() if self._distributions else None
            if step is None and self.score is not None:
                step = self.score(request)
            if step is None:
                self._fail(method, request)
            if isinstance(step, TokenDistribution | AuditorError):
                results.append(step)
            else:
                logprobs = {token: math.log(p) for token, p in step.items()}
                results.append(
                    TokenDistribution(logprobs, latency_ms=self.latency_ms, model=self.model)
                )
        return results

    def _record(self, method: Method, requests: Sequence[ChatRequest]) -> tuple[ChatRequest, ...]:
        call = BackendCall(method, tuple(requests))
        with self._lock:
            self._calls.append(call)
        return call.requests

    def _fail(self, method: Method, request: ChatRequest) -> NoReturn:
        with self._lock:
            self._unexpected.append((method, request))
        raise AssertionError(f"ScriptedBackend: nothing scripted for this {method} request")
