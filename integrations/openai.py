"""Guard one ``openai.OpenAI`` / ``openai.AsyncOpenAI`` client: every answer is audited first.

::

    import openai
    from traceguard import Guard
    from traceguard.integrations.openai import guard_openai, last_decision

    client = openai.OpenAI(base_url="http://localhost:8000/v1", api_key="...")
    with guard_openai(client, Guard(auditor)):
        reply = client.chat.completions.create(model="m", messages=[...])  # audited
        reply.traceguard_decisions                                          # the decisions

**What is covered.** The wrapper replaces the client's ``request`` choke point (and the step
that ends it) on that one instance, so every way of reaching Chat Completions or the Responses
API is audited, not just ``create``: ``chat.completions.create`` / ``.parse`` / ``.stream``,
``responses.create`` / ``.parse`` / ``.stream``, their ``with_raw_response`` and
``with_streaming_response`` forms, and ``client.post(...)``. Clients derived with
``with_options()`` / ``copy()`` are guarded too, by the same guard with the same options. Calls
whose output cannot be audited (stored completions and responses, legacy completions,
assistants, audio, file contents; WebSocket sessions) are refused with
:class:`UnauditedCallError` under ``strict=True``, and otherwise logged as a warning (the
WebSocket ones at wrap time); calls that return no generated content (models, embeddings,
moderations, deletions, uploads) pass. See :mod:`._openai_surfaces`.

Each answer becomes one :class:`~traceguard.Trace` per choice (query and images from the last
user message, earlier messages as history, thinking from ``reasoning_content`` / ``reasoning`` /
``<think>`` tags / Responses reasoning items, tool calls), audited, and acted on:

- **allow**: the SDK's own object, of the type the call returns (``ParsedChatCompletion`` for
  ``parse``, the raw wrapper for ``with_raw_response``);
- **redact**: the same type, built from the redacted answer (thinking removed, or the answer
  replaced by the refusal; for structured output the refusal goes in the ``refusal`` field, so
  ``parsed`` is None rather than a parse error);
- **block** (and an escalation held as block): :class:`~traceguard.Blocked` /
  :class:`~traceguard.Escalated` is raised, or with ``on_block="refusal"`` the usual type
  carrying the policy's refusal message.

Every result carries its decisions: ``result.traceguard_decisions`` (also on raw wrappers and
streams; :func:`decisions_of`), and :func:`last_decision` gives the last call's decision in the
current thread or task. A model that reports reasoning tokens in its usage but exposes no
thinking is named in one warning per client, with the fix.

Streams stay ``openai.Stream`` / ``openai.AsyncStream`` instances (the SDK builds them, see
:mod:`._openai_stream`):

- ``stream_mode="buffer"`` (default): the upstream is read to the end and audited before the
  first chunk reaches the caller. Nothing unaudited is ever released.
- ``stream_mode="passthrough"``: chunks are released as they arrive and the audit runs once, at
  the end, raising ``Blocked`` then. **Leak window:** everything streamed before the end was
  shown unaudited, and a redaction cannot be taken back (the decision is on
  ``stream.decisions``). A stream cut short still audits what was shown, once (``Stage.PARTIAL``,
  metadata ``cut``), without raising from ``close()``.
- ``early_stop=True`` (default): finished thinking is audited at once; if that blocks, the
  upstream connection is closed instead of paying for the rest of the generation.
- checkpoints (``Guard(..., checkpoints=AuditSchedule(...))``): the thinking is also audited
  while it streams, in the background, and a blocking checkpoint closes the upstream at once
  (README, "Mid-stream audit").

Before the caller runs the tool calls of an answer, :func:`check_tool_calls` audits each one
with the reasoning that led to it (the tool gate, see :mod:`traceguard._tools`); or
:func:`tool_context_of` gives that reasoning to tools that gate themselves
(:func:`~traceguard.guard_tool`).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any, Literal

from traceguard._decision import Decision
from traceguard._exceptions import ConfigurationError
from traceguard._guard import Guard
from traceguard._openai_chat_stream import ChatStreamAdapter
from traceguard._openai_responses_stream import ResponsesStreamAdapter
from traceguard._streaming import StreamAdapter, StreamOptions, StreamState
from traceguard._trace import Stage, Trace

try:
    import openai
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    from traceguard._version import install_hint

    raise ImportError(
        f"traceguard.integrations.openai needs the openai SDK: {install_hint('openai')}"
    ) from exc

from ._openai_decisions import (
    DECISIONS_ATTR,
    decisions_of,
    last_decision,
    last_decisions,
    record_last,
)
from ._openai_hooks import Plan, async_hooks, context_of, is_raw, sync_hooks
from ._openai_stream import GuardedAsyncStream, GuardedStream, StreamCall, stream_class
from ._openai_surfaces import (
    WEBSOCKET_SURFACES,
    UnauditedCallError,
    classify,
    is_structured,
    request_body,
)
from ._openai_tools import (
    ToolCallCheck,
    ToolCallReview,
    acheck_tool_calls,
    check_tool_calls,
    tool_context_of,
)

__all__ = [
    "GuardedAsyncStream",
    "GuardedClient",
    "GuardedStream",
    "ToolCallCheck",
    "ToolCallReview",
    "UnauditedCallError",
    "acheck_tool_calls",
    "check_tool_calls",
    "decisions_of",
    "guard_openai",
    "last_decision",
    "last_decisions",
    "tool_context_of",
    "unguard_openai",
]

logger = logging.getLogger("traceguard.integrations.openai")

_HANDLE_ATTR = "_traceguard_guarded"
_MISSING = object()
_DEFAULT_REFUSAL = "I can't help with that request."
_HOOKED = ("request", "_process_response", "copy", "with_options")

Client = openai.OpenAI | openai.AsyncOpenAI

_HIDDEN_REASONING = (
    "traceguard: %s reported %d reasoning tokens but exposed no thinking, so the guard audited "
    "the answer without it. Expose the thinking: start the model server with a reasoning parser "
    "(vLLM/SGLang --reasoning-parser) so it returns reasoning_content, or keep the <think> tags "
    "in the content; on the Responses API ask for reasoning summaries "
    "(reasoning={'summary': 'auto'})."
)


class GuardedClient:
    """The handle of one guarded client: undo it with :meth:`restore` or a ``with`` block.

    Attributes:
        client: the wrapped client (the very object passed to :func:`guard_openai`).
        guard: the guard auditing its calls.
        options: stream mode, early stop, block handling and refusal text in use.
        strict: True when calls the guard cannot audit are refused.
        derived: the handles of clients made from this one by ``with_options()`` / ``copy()``.
    """

    def __init__(self, client: Client, guard: Guard, options: StreamOptions, *, strict: bool):
        self.client = client
        self.guard = guard
        self.options = options
        self.strict = strict
        self.derived: list[GuardedClient] = []
        self._saved: list[tuple[Any, str, Any]] = []
        self._active = False
        self._lock = threading.Lock()
        self._warned: set[str] = set()

    @property
    def active(self) -> bool:
        """True while the client's calls are being audited."""
        return self._active

    @property
    def is_async(self) -> bool:
        """True for an ``AsyncOpenAI`` client."""
        return isinstance(self.client, openai.AsyncOpenAI)

    # -- installing ---------------------------------------------------------------------------

    def _install(self, *, announce: bool = True) -> None:
        hooks = async_hooks(self, self.client) if self.is_async else sync_hooks(self, self.client)
        for name in _HOOKED:
            self._replace(self.client, name, hooks[name])
        self._guard_websockets(announce=announce)
        self.client.__dict__[_HANDLE_ATTR] = self
        self._active = True

    def _replace(self, owner: Any, name: str, value: Any) -> None:
        self._saved.append((owner, name, owner.__dict__.get(name, _MISSING)))
        setattr(owner, name, value)

    def _guard_websockets(self, *, announce: bool) -> None:
        for dotted in WEBSOCKET_SURFACES:
            resource: Any = self.client
            for part in dotted.split("."):
                resource = getattr(resource, part, None)
                if resource is None:
                    break
            connect = getattr(resource, "connect", None)
            if resource is None or connect is None:
                continue
            self._replace(resource, "connect", self._websocket(dotted, connect))
        if announce and not self.strict:
            logger.warning(
                "traceguard: WebSocket sessions (%s) of this client are not audited; "
                "guard_openai(..., strict=True) refuses them",
                ", ".join(f"{name}.connect" for name in WEBSOCKET_SURFACES),
            )

    def _websocket(self, dotted: str, connect: Callable[..., Any]) -> Callable[..., Any]:
        def guarded_connect(*args: Any, **kwargs: Any) -> Any:
            self._unaudited(f"{dotted}.connect() (a WebSocket session)")
            return connect(*args, **kwargs)

        return guarded_connect

    def restore(self) -> None:
        """Give the client back its own methods, and the clients derived from it. Idempotent."""
        with self._lock:
            if not self._active:
                return
            self._active = False
            for owner, name, saved in reversed(self._saved):
                if saved is _MISSING:
                    owner.__dict__.pop(name, None)
                else:
                    setattr(owner, name, saved)
            self._saved.clear()
            self.client.__dict__.pop(_HANDLE_ATTR, None)
            derived, self.derived = self.derived, []
        for child in derived:
            child.restore()

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
        strict = " strict" if self.strict else ""
        return f"<GuardedClient {type(self.client).__name__} {self.options.mode}{strict} {state}>"

    # -- what the hooks ask (no I/O) ------------------------------------------------------------

    def before_request(self, options: Any, cast_to: Any, stream: bool, stream_cls: Any) -> Any:
        """Gate one call before it is sent; returns the ``stream_cls`` the SDK should use."""
        if not self._active:
            return stream_cls
        surface = classify(str(options.method), str(options.url))
        if surface.kind == "unaudited":
            self._unaudited(surface.label)
            return stream_cls
        if surface.kind != "audited" or surface.api is None or not stream:
            return stream_cls
        if is_raw(options):
            return stream_cls  # audited as bytes, in _process_response
        body = request_body(options.json_data, options.extra_json)
        plan = Plan(
            api=surface.api,
            context=context_of(surface.api, body),
            structured=is_structured(surface.api, body),
            raw_stream=False,
        )
        return stream_class(
            _chunk_type(stream_cls, cast_to), self._call(plan), is_async=self.is_async
        )

    def _unaudited(self, label: str) -> None:
        if self.strict:
            raise UnauditedCallError(
                f"traceguard: {label} returns output the guard cannot audit, and this client is "
                "guarded with strict=True"
            )
        with self._lock:
            if label in self._warned:
                return
            self._warned.add(label)
        logger.warning(
            "traceguard: %s is not audited: its output reaches the caller unchecked "
            "(guard_openai(..., strict=True) refuses such calls)",
            label,
        )

    def _call(self, plan: Plan) -> StreamCall:
        def new_state() -> StreamState[Any]:
            adapter: StreamAdapter[Any]
            if plan.api == "chat":
                adapter = ChatStreamAdapter(
                    plan.context,
                    track_increments=self.options.mode == "buffer",
                    structured=plan.structured,
                )
            else:
                adapter = ResponsesStreamAdapter(
                    plan.context,
                    buffered=self.options.mode == "buffer",
                    structured=plan.structured,
                )
            return StreamState(adapter, self.options, checkpoints=self.guard.checkpoints)

        def concluded(state: StreamState[Any], traces: Sequence[Trace]) -> None:
            record_last(state.decisions, traces)
            if any(trace.stage is Stage.FINAL for trace in traces):
                self._check_reasoning(getattr(state.adapter, "usage", None), traces)

        return StreamCall(guard=self.guard, new_state=new_state, concluded=concluded)

    def new_stream(self, plan: Plan, kwargs: dict[str, Any], *, is_async: bool) -> Any:
        """A guarded stream over a raw streamed response (``_process_response``'s arguments)."""
        chunk = _chunk_type(kwargs.get("stream_cls"), kwargs.get("cast_to"))
        cls = stream_class(chunk, self._call(plan), is_async=is_async)
        return cls(
            cast_to=chunk,
            response=kwargs["response"],
            client=self.client,
            options=kwargs["options"],
        )

    def link_stream(self, result: Any, stream: Any) -> None:
        """Let a raw wrapper show its stream's decisions (a live list, filled as it is read)."""
        try:
            object.__setattr__(result, DECISIONS_ATTR, stream._state.decisions)
        except (AttributeError, TypeError):
            pass

    def concluded(
        self, decisions: Sequence[Decision], traces: Sequence[Trace], result: Any
    ) -> None:
        """A non-streamed answer was audited."""
        record_last(decisions, traces)
        self._check_reasoning(getattr(result, "usage", None), traces)

    def _check_reasoning(self, usage: Any, traces: Sequence[Trace]) -> None:
        tokens = reasoning_tokens(usage)
        if not tokens or any(trace.thinking is not None for trace in traces):
            return
        with self._lock:
            if "hidden_reasoning" in self._warned:
                return
            self._warned.add("hidden_reasoning")
        model = next((t.model for t in traces if t.model), None) or "the model"
        logger.warning(_HIDDEN_REASONING, model, tokens)

    def derive(self, copied: Any) -> Any:
        """Guard a client made from this one (``with_options()`` / ``copy()``) the same way."""
        if not self._active or not isinstance(copied, openai.OpenAI | openai.AsyncOpenAI):
            return copied
        child = GuardedClient(copied, self.guard, self.options, strict=self.strict)
        child._install(announce=False)  # the parent named the unaudited sessions already
        with self._lock:
            self.derived.append(child)
        return copied


def reasoning_tokens(usage: Any) -> int:
    """Reasoning tokens a usage block reports (Chat Completions or Responses), else 0."""
    for details in ("completion_tokens_details", "output_tokens_details"):
        tokens = getattr(getattr(usage, details, None), "reasoning_tokens", None)
        if isinstance(tokens, int) and tokens > 0:
            return tokens
    return 0


def _chunk_type(stream_cls: Any, cast_to: Any) -> Any:
    """The chunk type a stream class yields (the SDK's own reading of it)."""
    if stream_cls is None:
        return cast_to
    from openai._streaming import extract_stream_chunk_type

    return extract_stream_chunk_type(stream_cls)


def guard_openai(
    client: Client,
    guard: Guard,
    *,
    stream_mode: Literal["buffer", "passthrough"] = "buffer",
    early_stop: bool = True,
    on_block: Literal["raise", "refusal"] = "raise",
    refusal: str | None = None,
    strict: bool = False,
) -> GuardedClient:
    """Audit every Chat Completions and Responses call of ``client``, by any method.

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
        strict: refuse every call whose output the guard cannot audit
            (:class:`UnauditedCallError`), instead of warning about it.

    Returns:
        A :class:`GuardedClient` handle; ``handle.restore()``, :func:`unguard_openai` or leaving
        ``with guard_openai(...)`` undoes the wrapping (of derived clients too).

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
        if existing.guard is guard and existing.options == options and existing.strict == strict:
            return existing
        raise ConfigurationError(
            "this client is already guarded with another guard or other options; restore it first"
        )
    handle = GuardedClient(client, guard, options, strict=bool(strict))
    handle._install()
    return handle


def unguard_openai(client: Client) -> bool:
    """Undo :func:`guard_openai` on ``client``; False when it was not guarded."""
    handle = client.__dict__.get(_HANDLE_ATTR)
    if not isinstance(handle, GuardedClient):
        return False
    handle.restore()
    return True
