"""The tool gate: a pending tool call is audited, with the reasoning behind it, before it runs.

Three pieces, each usable alone:

- :class:`ToolContext`, what led to the call: the user's query (and images), the earlier turns,
  the model's thinking and the text it wrote next to the call. :func:`tool_call_trace` turns a
  :class:`~traceguard.ToolCall` and its context into the trace the auditor grades
  (``stage=Stage.TOOL_CALL``).
- :meth:`Guard.check_tool_call` / :meth:`Guard.acheck_tool_call` audit one call and return the
  :class:`~traceguard.Decision` (never raising): ``disposition`` allow means run it; block means
  do not, and send ``decision.tool_message`` back as the tool's result, or, when
  ``decision.stop_run`` is set, end the run; an escalation carries its ``escalation_id`` and is
  held as the policy's fallback meanwhile. The policy's ``tools`` section decides (see
  :mod:`traceguard._policy_tools`).
- :func:`guard_tool`, a decorator for plain sync and async functions: every call is audited
  before the body runs.

Where the reasoning comes from. Integrations know it (the model turn that asked for the call)
and publish it for the duration of the tool's execution with :func:`tool_context`, a context
variable, so guarded functions deep in the call stack see it without new parameters::

    with tool_context(query=question, thinking=reasoning, response=text):
        result = send_payment(to="acct-1", amount=500)   # @guard_tool(guard): audited first

The variable follows threads' and asyncio tasks' own contexts, so concurrent agent runs never
see each other's reasoning. An explicit ``context=`` (to :func:`guard_tool` or
``check_tool_call``) wins over the variable; with neither, the call is audited on its own (name
and arguments, no reasoning), never skipped.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import inspect
import json
from collections.abc import Callable, Coroutine, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ParamSpec, Protocol, TypeVar, cast, overload

from traceguard._decision import Decision
from traceguard._exceptions import ConfigurationError
from traceguard._images import ImageRef
from traceguard._streaming import blocked_error
from traceguard._trace import Stage, ToolCall, Trace, Turn

if TYPE_CHECKING:
    from traceguard._guard import Guard

__all__ = [
    "ToolContext",
    "ToolDecorator",
    "arguments_json",
    "current_tool_context",
    "guard_tool",
    "held_result",
    "tool_call_trace",
    "tool_context",
]

P = ParamSpec("P")
R = TypeVar("R")

_CURRENT: contextvars.ContextVar[ToolContext | None] = contextvars.ContextVar(
    "traceguard_tool_context", default=None
)


@dataclass(frozen=True)
class ToolContext:
    """What led the model to a tool call; the auditor reads it together with the call."""

    query: str = ""
    """The user's request (the last user message)."""
    thinking: str | None = None
    """The model's reasoning in the turn that asked for the call (None: none exposed)."""
    response: str = ""
    """Text the model wrote in that turn next to its tool calls."""
    history: tuple[Turn, ...] = ()
    """Earlier turns of the conversation (bounded by whoever builds the context)."""
    images: tuple[ImageRef, ...] = ()
    """Images of the user's request."""
    model: str | None = None
    """The model that asked for the call."""
    metadata: Mapping[str, Any] = field(default_factory=dict)
    """Where the call comes from (``integration``, ``thread_id``, ``run_id``...), for sinks."""

    @classmethod
    def from_trace(cls, trace: Trace) -> ToolContext:
        """The context of the calls a model turn (audited as ``trace``) asked for."""
        return cls(
            query=trace.query,
            thinking=trace.thinking,
            response=trace.response,
            history=trace.history,
            images=trace.images,
            model=trace.model,
            metadata=dict(trace.metadata),
        )


def current_tool_context() -> ToolContext | None:
    """The context an integration published with :func:`tool_context`, if any."""
    return _CURRENT.get()


@contextlib.contextmanager
def tool_context(context: ToolContext | None = None, /, **fields: Any) -> Iterator[ToolContext]:
    """Publish ``context`` (or one built from ``fields``) to guarded tools run inside the block.

    Nested blocks stack; leaving one restores the outer context, even on error.
    """
    if context is not None and fields:
        raise TypeError("tool_context() takes a ToolContext or fields, not both")
    value = context if context is not None else ToolContext(**fields)
    token = _CURRENT.set(value)
    try:
        yield value
    finally:
        _CURRENT.reset(token)


def tool_call_trace(call: ToolCall, context: ToolContext | None = None) -> Trace:
    """The trace that audits ``call`` before it runs: ``Stage.TOOL_CALL``, with its context.

    Without ``context`` the published :func:`tool_context` is used, if any.
    """
    ctx = context if context is not None else (_CURRENT.get() or ToolContext())
    metadata = {**ctx.metadata, "tool": call.name}
    if call.id is not None:
        metadata["tool_call_id"] = call.id
    return Trace(
        query=ctx.query,
        response=ctx.response,
        thinking=ctx.thinking,
        images=ctx.images,
        tool_calls=(call,),
        history=ctx.history,
        model=ctx.model,
        metadata=metadata,
        stage=Stage.TOOL_CALL,
    )


def arguments_json(arguments: Mapping[str, Any]) -> str:
    """Call arguments as the JSON text a model would have written (repr for non-JSON values)."""
    return json.dumps(dict(arguments), ensure_ascii=False, default=repr)


# -- the decorator ------------------------------------------------------------------------------

ContextSource = ToolContext | Callable[[], ToolContext | None] | None


class ToolDecorator(Protocol):
    """What :func:`guard_tool` returns: a decorator keeping the function's parameters."""

    @overload
    def __call__(
        self, func: Callable[P, Coroutine[Any, Any, R]]
    ) -> Callable[P, Coroutine[Any, Any, R | str]]: ...

    @overload
    def __call__(self, func: Callable[P, R]) -> Callable[P, R | str]: ...


def guard_tool(
    guard: Guard, *, name: str | None = None, context: ContextSource = None
) -> ToolDecorator:
    """Audit every call of the decorated function before its body runs.

    Works on plain functions and ``async def`` functions (audited with ``Guard.acheck_tool_call``,
    never blocking the event loop). What happens per the decision:

    - allowed (or an escalation held as allow): the function runs and its result is returned;
    - held back with a message (the policy's ``tools.on_block: message``, the default): the
      function does **not** run, and ``decision.tool_message`` is returned in place of its
      result, as the text the model sees so the agent can recover;
    - held back with ``on_block: stop``: the function does not run and
      :class:`~traceguard.Blocked` (:class:`~traceguard.Escalated` for an escalation) is raised,
      carrying the decision, to end the run.

    Args:
        guard: the guard that audits the calls; its policy's ``tools`` section applies.
        name: the tool's name for the auditor and the tool rules (default: the function's).
        context: the reasoning behind the calls: a :class:`ToolContext`, or a function returning
            one (called per call). Default: the context published with :func:`tool_context`.

    The arguments the auditor sees are the bound call arguments (defaults applied; ``self`` /
    ``cls`` left out) as JSON.
    """

    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        if not callable(func):
            raise ConfigurationError("guard_tool decorates a function")
        tool_name: str = name or getattr(func, "__name__", None) or "tool"
        signature = inspect.signature(func)

        def pending(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[ToolCall, ToolContext]:
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            values = {k: v for k, v in bound.arguments.items() if k not in ("self", "cls")}
            call = ToolCall(name=tool_name, arguments=arguments_json(values))
            return call, _resolve(context)

        if inspect.iscoroutinefunction(func):

            @functools.wraps(func)
            async def guarded_async(*args: Any, **kwargs: Any) -> Any:
                call, ctx = pending(args, kwargs)
                decision = await guard.acheck_tool_call(call, ctx)
                if not decision.blocked:
                    return await func(*args, **kwargs)
                return held_result(decision)

            return guarded_async

        @functools.wraps(func)
        def guarded(*args: Any, **kwargs: Any) -> Any:
            call, ctx = pending(args, kwargs)
            decision = guard.check_tool_call(call, ctx)
            if not decision.blocked:
                return func(*args, **kwargs)
            return held_result(decision)

        return guarded

    return cast(ToolDecorator, decorate)


def held_result(decision: Decision) -> str:
    """What a held-back call yields: the message for the model, or raise when the run stops.

    Raises:
        Blocked: the decision stops the run (``Escalated`` for an escalation).
    """
    if decision.tool_message is None:
        raise blocked_error(decision)
    return decision.tool_message


def _resolve(source: ContextSource) -> ToolContext:
    if isinstance(source, ToolContext):
        return source
    if source is not None:
        produced = source()
        if produced is not None:
            if not isinstance(produced, ToolContext):
                raise ConfigurationError(
                    f"guard_tool's context function returned {type(produced).__name__}, "
                    "not a ToolContext"
                )
            return produced
    return _CURRENT.get() or ToolContext()
