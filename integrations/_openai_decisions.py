"""Where the caller finds the guard's decisions about a result.

Two ways, both safe under concurrency:

- on the result itself: every audited object the SDK hands back (a ``ChatCompletion``, a
  ``ParsedChatCompletion``, a ``Response``, the raw-response wrappers of ``with_raw_response`` /
  ``with_streaming_response``, a guarded stream) carries ``traceguard_decisions``, a tuple of
  :class:`~traceguard.Decision` (one per choice; on a stream, and on the raw wrapper of a
  streamed body, the decisions so far, filled in as it is read). The attribute lives outside the
  pydantic fields: it is not serialised, not compared, and an allowed object is still exactly
  the SDK's type. :func:`decisions_of` reads it.
- :func:`last_decision` / :func:`last_decisions`: the decisions of the last guarded call made in
  the current thread or asyncio task (a context variable), for code that only sees the result
  through a helper (``chat.completions.stream(...).get_final_completion()``).
"""

from __future__ import annotations

import contextvars
from collections.abc import Sequence
from typing import Any

from traceguard._decision import Action, Decision
from traceguard._trace import Trace

__all__ = [
    "AUDITED_TRACES_ATTR",
    "DECISIONS_ATTR",
    "attach",
    "decisions_of",
    "last_decision",
    "last_audited_traces",
    "last_decisions",
    "record_last",
]

DECISIONS_ATTR = "traceguard_decisions"
AUDITED_TRACES_ATTR = "_traceguard_traces"
"""The traces the guard audited for a result (its answer before any redaction)."""

_LAST: contextvars.ContextVar[tuple[Decision, ...]] = contextvars.ContextVar(
    "traceguard_openai_last_decisions", default=()
)

_LAST_TRACES: contextvars.ContextVar[tuple[Trace, ...]] = contextvars.ContextVar(
    "traceguard_openai_last_traces", default=()
)

_SEVERITY = {Action.ALLOW: 0, Action.REDACT: 1, Action.BLOCK: 2}


def attach(obj: Any, decisions: Sequence[Decision], traces: Sequence[Trace] = ()) -> None:
    """Put ``decisions`` (and the audited traces) on ``obj``; objects that refuse are skipped."""
    try:
        # object.__setattr__: on a pydantic model, plain setattr of an unknown name would add a
        # field (serialised, compared); this keeps it a plain attribute.
        object.__setattr__(obj, DECISIONS_ATTR, tuple(decisions))
        object.__setattr__(obj, AUDITED_TRACES_ATTR, tuple(traces))
    except (AttributeError, TypeError):
        pass  # a str or dict from parse(to=...): nothing to hang them on


def decisions_of(obj: Any) -> tuple[Decision, ...]:
    """The guard's decisions about ``obj``, a result of a guarded client (empty if none)."""
    value = getattr(obj, DECISIONS_ATTR, ())
    return tuple(value)


def record_last(decisions: Sequence[Decision], traces: Sequence[Trace] = ()) -> None:
    """Remember ``decisions`` (and the audited ``traces``) as the last guarded call's, in the
    current context."""
    if decisions:
        _LAST.set(tuple(decisions))
    if traces:
        _LAST_TRACES.set(tuple(traces))


def last_audited_traces() -> tuple[Trace, ...]:
    """The traces of the last audited answer in this thread or task (before any redaction)."""
    return _LAST_TRACES.get()


def last_decisions() -> tuple[Decision, ...]:
    """Every decision of the last guarded call in this thread or task (one per choice)."""
    return _LAST.get()


def last_decision() -> Decision | None:
    """The decision that governed the last guarded call in this thread or task.

    With several choices, the most severe (block, then redact, then allow); the latest audit
    of a stream (the whole output) wins over its early thinking audit at equal severity. None
    before any guarded call.
    """
    decisions = _LAST.get()
    if not decisions:
        return None
    return max(reversed(decisions), key=lambda d: _SEVERITY[d.disposition])
