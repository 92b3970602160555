"""The retry policy of the HTTP backend, written once for its sync and async paths.

An attempt never raises: its result is an :class:`Outcome`, either a parsed payload or a
:class:`Failure` that says which :class:`~traceguard.AuditorError` it would become, whether it
is worth retrying, whether the endpoint looks down (so the next attempt should go elsewhere),
and how long the server asked us to wait. tenacity drives the loop from these values through
:func:`retrying_kwargs`, for ``tenacity.Retrying`` and ``tenacity.AsyncRetrying`` alike.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx
import tenacity

from traceguard._exceptions import (
    AuditorError,
    AuditorResponseError,
    AuditorTimeout,
    AuditorUnavailable,
)
from traceguard._retry_after import parse_retry_after

__all__ = [
    "Failure",
    "Outcome",
    "RetryPolicy",
    "classify_exception",
    "classify_response",
    "retrying_kwargs",
]

_ERROR_TEXT_LIMIT = 300


@dataclass(frozen=True)
class Failure:
    """Why an attempt failed, and what to do about it."""

    error_type: type[AuditorError]
    reason: str
    retryable: bool = False
    endpoint_down: bool = False
    """Connection trouble or a 5xx: try another base URL next, and avoid this one a while."""
    retry_after: float | None = None
    """Seconds the server asked us to wait (``Retry-After``), when it said."""

    def to_error(self, attempts: int) -> AuditorError:
        """The error a caller sees once no attempt is left."""
        suffix = f" (after {attempts} attempts)" if self.retryable and attempts > 1 else ""
        return self.error_type(self.reason + suffix)


@dataclass(frozen=True)
class Outcome:
    """One attempt's result: a decoded JSON payload, or a failure."""

    payload: Any = None
    failure: Failure | None = None


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently to retry.

    Attributes:
        max_attempts: attempts per request in total, the first one included.
        backoff_s: the first backoff; it doubles per retry, plus up to ``backoff_s`` of jitter.
        max_backoff_s: cap on one backoff.
        max_retry_after_s: the longest ``Retry-After`` honoured; a server asking for more is
            treated as unavailable now rather than waited for.
        retry_read_timeouts: retry when the server accepted the request but did not answer in
            time. Off by default: the generation may still be running there, and retrying
            multiplies both the caller's wait and the load on a server that is already slow.
    """

    max_attempts: int = 4
    backoff_s: float = 0.5
    max_backoff_s: float = 8.0
    max_retry_after_s: float = 60.0
    retry_read_timeouts: bool = False

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if self.backoff_s < 0 or self.max_backoff_s < 0 or self.max_retry_after_s < 0:
            raise ValueError("backoff and retry-after limits must not be negative")


def _error_text(content: bytes) -> str:
    """The server's error message, shortened; servers may echo parts of the prompt."""
    try:
        body = json.loads(content)
    except ValueError:
        text = content.decode("utf-8", "replace")
    else:
        error = body.get("error") if isinstance(body, dict) else None
        if isinstance(error, dict):
            text = str(error.get("message") or error)
        elif error is not None:
            text = str(error)
        elif isinstance(body, dict) and "message" in body:
            text = str(body["message"])  # vLLM's older error shape
        else:
            text = str(body)
    text = " ".join(text.split())
    if len(text) > _ERROR_TEXT_LIMIT:
        text = text[:_ERROR_TEXT_LIMIT] + "..."
    return text


def classify_response(
    status: int,
    headers: Mapping[str, str],
    content: bytes,
    *,
    where: str,
    policy: RetryPolicy,
) -> Outcome:
    """Turn an HTTP response into a payload or a failure. ``where`` names the endpoint."""
    if 200 <= status < 300:
        try:
            return Outcome(payload=json.loads(content))
        except ValueError:
            return Outcome(
                failure=Failure(AuditorResponseError, f"{where} answered with malformed JSON")
            )
    reason = f"HTTP {status} from {where}"
    detail = _error_text(content)
    if detail:
        reason = f"{reason}: {detail}"
    if status == 429 or status >= 500:
        retry_after = parse_retry_after(headers.get("retry-after"))
        too_long = retry_after is not None and retry_after > policy.max_retry_after_s
        if too_long:
            reason = f"{reason} (asked to retry after {retry_after:.0f} s)"
        return Outcome(
            failure=Failure(
                AuditorUnavailable,
                reason,
                retryable=not too_long,
                endpoint_down=status >= 500,
                retry_after=retry_after,
            )
        )
    # Any other 4xx is our request's fault (bad model name, context too long, bad key): the
    # same request would fail the same way, so it is never retried.
    return Outcome(failure=Failure(AuditorResponseError, reason))


def classify_exception(exc: httpx.HTTPError, *, where: str, policy: RetryPolicy) -> Outcome:
    """Turn an httpx transport error into a failure."""
    name = type(exc).__name__
    if isinstance(exc, httpx.ConnectTimeout):
        # Nothing accepted the connection in time: the endpoint is unreachable, not slow.
        failure = Failure(
            AuditorUnavailable, f"connect timeout to {where}", retryable=True, endpoint_down=True
        )
    elif isinstance(exc, httpx.TimeoutException):
        failure = Failure(
            AuditorTimeout,
            f"{where} did not answer in time ({name})",
            retryable=policy.retry_read_timeouts,
        )
    elif isinstance(exc, httpx.TransportError):
        # Refused, reset, or closed without an answer: the request is read-only, so resending
        # it is harmless.
        failure = Failure(
            AuditorUnavailable,
            f"connection to {where} failed ({name})",
            retryable=True,
            endpoint_down=True,
        )
    else:
        failure = Failure(AuditorUnavailable, f"request to {where} failed ({name})")
    return Outcome(failure=failure)


def retrying_kwargs(
    policy: RetryPolicy,
    *,
    can_fail_over: Callable[[], bool],
    time_left: Callable[[], float | None] = lambda: None,
) -> dict[str, Any]:
    """Keyword arguments for ``tenacity.Retrying`` / ``AsyncRetrying`` over :class:`Outcome`.

    ``can_fail_over()`` tells whether another base URL is up: a failure that marked its
    endpoint down is then retried at once on that URL instead of after a backoff.
    ``time_left()`` gives the seconds left before the call's deadline (None: no deadline): no
    retry starts when its wait would reach the deadline, and the last failure is returned.
    """

    def base_backoff(attempt: int) -> float:
        return min(policy.max_backoff_s, policy.backoff_s * 2.0 ** (attempt - 1))

    def backoff(attempt: int) -> float:
        # Exponential with additive jitter, computed here rather than with tenacity's helper,
        # whose arguments changed across the tenacity versions we support.
        return base_backoff(attempt) + random.uniform(0.0, policy.backoff_s)

    def failure_of(state: tenacity.RetryCallState) -> Failure | None:
        if state.outcome is None or state.outcome.failed:
            return None
        outcome: Outcome = state.outcome.result()
        return outcome.failure

    def should_retry(state: tenacity.RetryCallState) -> bool:
        failure = failure_of(state)
        return failure is not None and failure.retryable

    def planned_wait(state: tenacity.RetryCallState, *, jitter: bool) -> float:
        failure = failure_of(state)
        if failure is not None and failure.endpoint_down and can_fail_over():
            return 0.0
        if failure is not None and failure.retry_after is not None:
            return min(failure.retry_after, policy.max_retry_after_s)
        attempt = state.attempt_number
        return backoff(attempt) if jitter else base_backoff(attempt)

    def wait(state: tenacity.RetryCallState) -> float:
        planned = planned_wait(state, jitter=True)
        left = time_left()
        return planned if left is None else max(0.0, min(planned, left))

    def stop(state: tenacity.RetryCallState) -> bool:
        if state.attempt_number >= policy.max_attempts:
            return True
        left = time_left()
        # Tenacity asks before or after computing the wait, depending on its version: decide
        # from the wait without jitter, the same either way.
        return left is not None and left <= planned_wait(state, jitter=False)

    def give_up(state: tenacity.RetryCallState) -> Outcome:
        assert state.outcome is not None  # tenacity only gives up after an attempt
        result: Outcome = state.outcome.result()
        return result

    return {
        "stop": stop,
        "wait": wait,
        "retry": should_retry,
        "retry_error_callback": give_up,
        "reraise": True,
    }
