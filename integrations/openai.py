"""Guard one ``openai.OpenAI`` / ``openai.AsyncOpenAI`` client: every answer is audited first.

::

    import openai
    from traceguard import Guard
    from traceguard.integrations.openai import guard_openai

    client = openai.OpenAI(base_url="http://localhost:8000/v1", api_key="...")
    with guard_openai(client, Guard(auditor)):
        reply = client.chat.completions.create(model="m", messages=[...])  # audited

``guard_openai`` replaces ``create`` on that client's ``chat.completions`` and ``responses``
resources only (instance attributes; nothing is patched at import time or on a class). Each call
runs upstream unchanged; upstream errors propagate as the SDK's own exceptions, unaudited (but a
passthrough stream audits what it showed, see below). The result is turned into one
:class:`~traceguard.Trace` per choice (query and images from the last user message, earlier
messages as history, thinking from ``reasoning_content`` / ``reasoning`` / ``<think>`` tags /
Responses reasoning items, tool calls), audited, and acted on:

- **allow**: the SDK's own object is returned, untouched (the same object);
- **redact**: a copy of the same type with the thinking removed or the answer replaced;
- **block** (and an escalation held as block): :class:`~traceguard.Blocked` /
  :class:`~traceguard.Escalated` is raised, or with ``on_block="refusal"`` a result of the same
  type carrying the policy's refusal message is returned instead.

Streams (``stream=True``) stay ``openai.Stream`` / ``openai.AsyncStream`` instances:

- ``stream_mode="buffer"`` (default): the upstream is read to the end and audited before the
  first chunk reaches the caller, who then gets the chunks (redacted if so decided). Nothing
  unaudited is ever released; time to first chunk becomes the whole generation plus the audit.
- ``stream_mode="passthrough"``: chunks are released as they arrive and the audit runs once, at
  the end, raising ``Blocked`` then. **Leak window:** everything streamed before the end was
  shown unaudited, and a redaction cannot be taken back (the decision is on
  ``stream.decisions``). Use it only where a late retraction is acceptable. A stream cut short
  (``close()``, leaving a ``with`` block, garbage collection, an upstream error mid-stream) still
  audits what was shown, once, and records it in the sinks (``Trace.stage`` is ``Stage.PARTIAL``,
  metadata ``cut`` is ``"closed"`` or ``"upstream_error"``): closing never raises ``Blocked``
  (the decision goes on ``stream.decisions`` and a warning is logged), and an upstream error
  propagates unchanged.
- ``early_stop=True`` (default): as soon as the thinking is complete (``</think>`` or the first
  answer token after reasoning deltas), the thinking alone is audited; if that blocks, the
  upstream connection is closed at once, instead of paying for the rest of the generation.
  This costs one extra audit per streamed answer that exposes its thinking.
- checkpoints (``Guard(..., checkpoints=AuditSchedule(...))``): the thinking is also audited
  while it streams, in the background, and a blocking checkpoint closes the upstream at once
  (README, "Mid-stream auditing").

Not covered: ``with_raw_response`` / ``with_streaming_response`` (raw HTTP access; passed through
unaudited with a warning), ``chat.completions.parse`` / ``.stream`` helpers, and copies made by
``client.with_options()`` / ``client.copy()`` (guard the copy itself).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from traceguard._decision import Decision
from traceguard._exceptions import ConfigurationError
from traceguard._guard import Guard
from traceguard._streaming import (
    StreamAdapter,
    StreamOptions,
    StreamState,
    blocked_error,
    edit_for,
)
from traceguard._trace import Trace

from ._openai_chat_stream import ChatStreamAdapter
from ._openai_request import RequestContext, chat_request_context, responses_request_context
from ._openai_responses_stream import ResponsesStreamAdapter
from ._openai_result import chat_traces, edit_chat, edit_response, response_trace

try:
    import openai
    from openai.types.chat import ChatCompletion
    from openai.types.responses import Response
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "traceguard.integrations.openai needs the openai SDK: pip install 'traceguard-vl[openai]'"
    ) from exc

from ._openai_stream import GuardedAsyncStream, GuardedStream

__all__ = [
    "GuardedAsyncStream",
    "GuardedClient",
    "GuardedStream",
    "guard_openai",
    "unguard_openai",
]

logger = logging.getLogger("traceguard.integrations.openai")

_HANDLE_ATTR = "_traceguard_guarded"
_MISSING = object()
_DEFAULT_REFUSAL = "I can't help with that request."

Api = Literal["chat", "responses"]
Client = openai.OpenAI | openai.AsyncOpenAI


@dataclass(frozen=True)
class _Pending:
    """A non-streamed result's traces, to be audited before the result is returned."""

    traces: list[Trace]


class GuardedClient:
    """The handle of one guarded client: undo it with :meth:`restore` or a ``with`` block.

    Attributes:
        client: the wrapped client (the very object passed to :func:`guard_openai`).
        guard: the guard auditing its calls.
        options: stream mode, early stop, block handling and refusal text in use.
    """

    def __init__(self, client: Client, guard: Guard, options: StreamOptions) -> None:
        self.client = client
        self.guard = guard
        self.options = options
        self._saved: list[tuple[Any, Any]] = []
        self._active = False

    @property
    def active(self) -> bool:
        """True while the client's calls are being audited."""
        return self._active

    def _install(self) -> None:
        is_async = isinstance(self.client, openai.AsyncOpenAI)
        targets: tuple[tuple[Any, Api], ...] = (
            (self.client.chat.completions, "chat"),
            (self.client.responses, "responses"),
        )
        for resource, api in targets:
            original = resource.create
            self._saved.append((resource, resource.__dict__.get("create", _MISSING)))
            wrapper = (
                _async_wrapper(self, api, original)
                if is_async
                else _sync_wrapper(self, api, original)
            )
            wrapper.__traceguard__ = self
            resource.create = wrapper
        self.client.__dict__[_HANDLE_ATTR] = self
        self._active = True

    def restore(self) -> None:
        """Give the client back its own methods. Idempotent."""
        if not self._active:
            return
        for resource, saved in reversed(self._saved):
            if saved is _MISSING:
                resource.__dict__.pop("create", None)
            else:
                resource.create = saved
        self._saved.clear()
        self.client.__dict__.pop(_HANDLE_ATTR, None)
        self._active = False

    def __enter__(self) -> GuardedClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.restore()

    async def __aenter__(self) -> GuardedClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.restore()

    def __repr__(self) -> str:
        state = "active" if self._active else "restored"
        return f"<GuardedClient {type(self.client).__name__} {self.options.mode} {state}>"

    # -- the shared, I/O-free steps ---------------------------------------------------------

    def intercept(self, api: Api, kwargs: dict[str, Any], result: Any) -> Any:
        """What a wrapped call returns for the upstream ``result``, or the traces to audit first.

        Returns a :class:`_Pending` when the result must wait for an audit (the shell then
        passes the decisions to :meth:`apply`); anything else is returned to the caller as is.
        """
        if not self._active:  # reached through a stale reference after restore()
            return result
        context = self.context(api, kwargs)
        if isinstance(result, openai.Stream):
            return GuardedStream(result, self.stream_state(api, context), self.guard)
        if isinstance(result, openai.AsyncStream):
            return GuardedAsyncStream(result, self.stream_state(api, context), self.guard)
        traces = self.traces(context, result)
        if traces is None:
            return _passthrough(result)
        return _Pending(traces)

    def context(self, api: Api, kwargs: dict[str, Any]) -> RequestContext:
        """What the caller asked, from the call's keyword arguments."""
        return chat_request_context(kwargs) if api == "chat" else responses_request_context(kwargs)

    def traces(self, context: RequestContext, result: Any) -> list[Trace] | None:
        """The traces of a non-streamed result; None for a result this wrapper cannot read."""
        if isinstance(result, ChatCompletion):
            return chat_traces(context, result)
        if isinstance(result, Response):
            return [response_trace(context, result)]
        return None

    def stream_state(self, api: Api, context: RequestContext) -> StreamState[Any]:
        """A fresh state machine for one streamed call."""
        adapter: StreamAdapter[Any]
        if api == "chat":
            adapter = ChatStreamAdapter(context, track_increments=self.options.mode == "buffer")
        else:
            adapter = ResponsesStreamAdapter(context)
        return StreamState(adapter, self.options, checkpoints=self.guard.checkpoints)

    def apply(self, result: Any, traces: Sequence[Trace], decisions: Sequence[Decision]) -> Any:
        """The result the caller gets under ``decisions``, or raise when it is blocked."""
        blocked = next((d for d in decisions if d.blocked), None)
        if blocked is not None and self.options.on_block == "raise":
            raise blocked_error(blocked)
        refusal = self.options.refusal
        edits = [edit_for(t, d, refusal) for t, d in zip(traces, decisions, strict=True)]
        if blocked is not None:
            # One blocked choice withholds them all: the caller asked for one answer.
            edits = [edit_for(t, blocked, refusal) for t in traces]
        if isinstance(result, ChatCompletion):
            return edit_chat(result, traces, edits)
        return edit_response(result, edits[0])


def _passthrough(result: Any) -> Any:
    logger.warning(
        "traceguard: %s result passed through unaudited (raw/streaming-response access)",
        type(result).__name__,
    )
    return result


def _sync_wrapper(handle: GuardedClient, api: Api, original: Callable[..., Any]) -> Any:
    @functools.wraps(original)
    def create(*args: Any, **kwargs: Any) -> Any:
        result = original(*args, **kwargs)  # upstream errors propagate untouched, unaudited
        pending = handle.intercept(api, kwargs, result)
        if not isinstance(pending, _Pending):
            return pending
        return handle.apply(result, pending.traces, handle.guard.check_batch(pending.traces))

    return create


def _async_wrapper(handle: GuardedClient, api: Api, original: Callable[..., Awaitable[Any]]) -> Any:
    @functools.wraps(original)
    async def create(*args: Any, **kwargs: Any) -> Any:
        result = await original(*args, **kwargs)
        pending = handle.intercept(api, kwargs, result)
        if not isinstance(pending, _Pending):
            return pending
        return handle.apply(result, pending.traces, await handle.guard.acheck_batch(pending.traces))

    return create


def guard_openai(
    client: Client,
    guard: Guard,
    *,
    stream_mode: Literal["buffer", "passthrough"] = "buffer",
    early_stop: bool = True,
    on_block: Literal["raise", "refusal"] = "raise",
    refusal: str | None = None,
) -> GuardedClient:
    """Audit every ``chat.completions.create`` and ``responses.create`` call of ``client``.

    Args:
        client: one ``openai.OpenAI`` or ``openai.AsyncOpenAI`` instance (any ``base_url``).
            Async clients are audited with ``Guard.acheck_batch``, sync ones with
            ``Guard.check_batch``; the wrapper never starts an event loop.
        guard: the guard to audit with; its policy decides, its sinks record.
        stream_mode: ``"buffer"`` holds streamed chunks until the audit passes;
            ``"passthrough"`` releases them at once and audits at the end (see the module
            documentation for the leak window).
        early_stop: audit streamed thinking as soon as it is complete and close the upstream
            stream when that blocks.
        on_block: ``"raise"`` raises :class:`~traceguard.Blocked` (``Escalated`` for an
            escalation); ``"refusal"`` returns a result of the usual type carrying ``refusal``.
        refusal: the refusal text; defaults to the guard policy's redaction message.

    Returns:
        A :class:`GuardedClient` handle; ``handle.restore()``, :func:`unguard_openai` or leaving
        ``with guard_openai(...)`` undoes the wrapping.

    Wrapping an already guarded client again with the same guard and options returns the
    existing handle (nothing is audited twice); anything else raises
    :class:`~traceguard.ConfigurationError`.
    """
    if not isinstance(client, openai.OpenAI | openai.AsyncOpenAI):
        raise ConfigurationError(
            "guard_openai needs an openai.OpenAI or openai.AsyncOpenAI client, "
            f"not {type(client).__name__}"
        )
    if stream_mode not in ("buffer", "passthrough"):
        raise ConfigurationError(
            f"stream_mode must be 'buffer' or 'passthrough', not {stream_mode!r}"
        )
    if on_block not in ("raise", "refusal"):
        raise ConfigurationError(f"on_block must be 'raise' or 'refusal', not {on_block!r}")
    if refusal is None:
        redaction = getattr(guard.policy, "redaction", None)
        refusal = getattr(redaction, "refusal_message", None) or _DEFAULT_REFUSAL
    options = StreamOptions(
        mode=stream_mode, early_stop=early_stop, on_block=on_block, refusal=refusal
    )
    existing = client.__dict__.get(_HANDLE_ATTR)
    if isinstance(existing, GuardedClient) and existing.active:
        if existing.guard is guard and existing.options == options:
            return existing
        raise ConfigurationError(
            "this client is already guarded with another guard or other options; restore it first"
        )
    handle = GuardedClient(client, guard, options)
    handle._install()
    return handle


def unguard_openai(client: Client) -> bool:
    """Undo :func:`guard_openai` on ``client``; False when it was not guarded."""
    handle = client.__dict__.get(_HANDLE_ATTR)
    if not isinstance(handle, GuardedClient):
        return False
    handle.restore()
    return True
