"""The callback handlers' tool gate: ``on_tool_start`` audits a pending call with the reasoning of
the model turn that asked for it, and raises to keep a held-back tool from running.

A callback cannot replace a tool's result, so every held-back call raises
:class:`~traceguard.Blocked` (:class:`~traceguard.Escalated`), whatever the policy's
``tools.on_block`` says; ``TraceguardMiddleware`` is the way to hand the model the policy's
tool message instead.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any
from uuid import UUID

from langchain_core.callbacks import manager as callback_manager

from traceguard._decision import Decision
from traceguard._streaming import blocked_error
from traceguard._tools import ToolContext, arguments_json, tool_call_trace
from traceguard._trace import ToolCall, Trace

if TYPE_CHECKING:
    from traceguard._guard import Guard

__all__ = ["PendingToolCalls", "ToolGate", "gate_tool_call", "run_metadata", "sync_dispatch"]

# Calls whose reasoning is kept until their tool starts; a call that never runs (the agent
# stopped, the caller dropped it) must not hold memory forever.
_MAX_PENDING_CALLS = 1024


def run_metadata(
    run_id: UUID,
    parent_run_id: UUID | None,
    tags: Sequence[str] | None,
    metadata: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Where a handler's trace comes from (``Trace.metadata``)."""
    found: dict[str, Any] = {
        "integration": "langchain",
        "run_id": str(run_id),
        "parent_run_id": None if parent_run_id is None else str(parent_run_id),
        "tags": list(tags or ()),
    }
    # Inside a LangGraph graph the run's metadata names the thread (the review queue shows it).
    thread_id = (metadata or {}).get("thread_id")
    if thread_id is not None:
        found["thread_id"] = str(thread_id)
    return found


class PendingToolCalls:
    """The reasoning behind the tool calls of audited model turns, by tool call id (thread-safe)."""

    def __init__(self) -> None:
        self._calls: OrderedDict[str, ToolContext] = OrderedDict()
        self._lock = threading.Lock()

    def remember(self, trace: Trace) -> None:
        """Keep the context of ``trace``'s tool calls for when their tools start."""
        if not trace.tool_calls:
            return
        context = ToolContext.from_trace(trace)
        with self._lock:
            for call in trace.tool_calls:
                if call.id:
                    self._calls[call.id] = context
            while len(self._calls) > _MAX_PENDING_CALLS:
                self._calls.popitem(last=False)

    def trace(
        self,
        serialized: Mapping[str, Any] | None,
        input_str: str,
        inputs: Mapping[str, Any] | None,
        origin: Mapping[str, Any],
        tool_call_id: Any,
    ) -> Trace:
        """The trace of a tool about to run, with the turn that asked for it when that turn was
        audited here (the ``tool_call_id`` links them); else the call is audited on its own."""
        name = str((serialized or {}).get("name") or "tool")
        arguments = arguments_json(inputs) if inputs is not None else input_str
        call_id = str(tool_call_id) if tool_call_id is not None else None
        with self._lock:
            context = self._calls.pop(call_id, None) if call_id is not None else None
        if context is None:
            context = ToolContext(metadata=dict(origin))
        else:
            context = ToolContext(
                query=context.query,
                thinking=context.thinking,
                response=context.response,
                history=context.history,
                images=context.images,
                model=context.model,
                metadata={**context.metadata, **origin},
            )
        return tool_call_trace(ToolCall(name=name, arguments=arguments, id=call_id), context)


def _pending(
    calls: PendingToolCalls,
    serialized: Mapping[str, Any] | None,
    input_str: str,
    *,
    run_id: UUID,
    parent_run_id: UUID | None = None,
    tags: Sequence[str] | None = None,
    metadata: Mapping[str, Any] | None = None,
    inputs: Mapping[str, Any] | None = None,
    **kwargs: Any,
) -> Trace:
    origin = run_metadata(run_id, parent_run_id, tags, metadata)
    return calls.trace(serialized, input_str, inputs, origin, kwargs.get("tool_call_id"))


def _act(decision: Decision) -> None:
    if decision.blocked:
        raise blocked_error(decision)


def gate_tool_call(
    guard: Guard, calls: PendingToolCalls, serialized: Any, input_str: str, **kwargs: Any
) -> None:
    """``on_tool_start`` of a sync run: audit the call, raise when it is held back."""
    _act(guard.check_batch([_pending(calls, serialized, input_str, **kwargs)])[0])


async def agate_tool_call(
    guard: Guard, calls: PendingToolCalls, serialized: Any, input_str: str, **kwargs: Any
) -> None:
    """``on_tool_start`` of an async run: the audit never blocks the event loop."""
    trace = _pending(calls, serialized, input_str, **kwargs)
    _act((await guard.acheck_batch([trace]))[0])


# LangChain's dispatcher for sync runs: it calls a handler's method and, when that returns a
# coroutine, runs it in a throwaway event loop and only logs what it raises.
_SYNC_DISPATCH = getattr(callback_manager.handle_event, "__code__", None)
_FRAMES_TO_DISPATCHER = 3


def sync_dispatch() -> bool:
    """Whether the method being looked up will be called by LangChain's sync dispatcher.

    With no event loop in this thread the run is a sync one (a sync tool an async agent runs in
    a worker thread is). A sync call made inside a coroutine is told by the dispatcher's frame
    among the callers of the lookup.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return True
    frame = inspect.currentframe()
    for _ in range(_FRAMES_TO_DISPATCHER + 1):
        if frame is None:
            return False
        if frame.f_code is _SYNC_DISPATCH:
            return True
        frame = frame.f_back
    return False


class ToolGate:
    """``on_tool_start`` of the async handler, in the form LangChain acts on.

    LangChain awaits an async handler's coroutine in an async run and honours ``raise_error``;
    in a sync run it would run the coroutine in a throwaway loop and swallow the block, and the
    tool would run. Looked up from a sync run, this attribute is therefore a plain function that
    audits with the sync guard (in the tool's own thread); from an async run, a coroutine
    function that awaits the async guard.
    """

    def __get__(self, handler: Any, owner: type | None = None) -> Callable[..., Any]:
        if handler is None:
            return lambda *args, **kwargs: None  # class access: nothing to bind
        calls: PendingToolCalls = handler._recorder.tool_calls
        if sync_dispatch():
            return functools.partial(gate_tool_call, handler.guard, calls)
        return functools.partial(agate_tool_call, handler.guard, calls)
