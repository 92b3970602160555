"""Tool calls of an OpenAI answer, checked through the tool gate before the caller runs them.

An agent loop written against the SDK runs the tools an answer asks for itself. Before it does,
:func:`check_tool_calls` audits every call of the answer (Chat Completions ``tool_calls``,
Responses ``function_call`` / ``custom_tool_call`` items) with the reasoning of that answer, as
:attr:`~traceguard.Stage.TOOL_CALL` traces in one auditor batch, and returns one
:class:`ToolCallCheck` per call::

    review = check_tool_calls(guard, completion, messages=messages)
    messages.append(completion.choices[0].message)
    for check in review.checks:
        if check.allowed:
            output = run_tool(check.call.name, json.loads(check.call.arguments))
            messages.append({"role": "tool", "tool_call_id": check.call.id, "content": output})
        else:
            messages.append(check.chat_message())   # the model reads why, and can recover

The reasoning is the one the guard audited for that answer: results of a guarded client keep
it even when a redaction removed it from what the caller sees (pass ``audited=stream`` for an
answer read from a guarded stream other than the last one audited in this thread or task).
The query, images and history come from ``messages=``
(Chat Completions) or ``input=`` / ``instructions=`` (Responses) when given, else from the
request the wrapper audited, else the calls are audited with the answer's reasoning alone.

When a decision says the run must stop (``on_block: stop`` in the policy's tool rules),
:class:`~traceguard.Blocked` is raised instead (:class:`~traceguard.Escalated` for an
escalation), and no call of the answer should run.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from traceguard._chat import RequestContext
from traceguard._decision import Decision
from traceguard._guard import Guard
from traceguard._openai_result import chat_traces, response_trace
from traceguard._streaming import blocked_error
from traceguard._tools import ToolContext, tool_call_trace
from traceguard._trace import ToolCall, Trace

from ._openai_decisions import AUDITED_TRACES_ATTR, last_audited_traces
from ._openai_request import chat_request_context, responses_request_context

__all__ = [
    "ToolCallCheck",
    "ToolCallReview",
    "acheck_tool_calls",
    "check_tool_calls",
    "tool_context_of",
]


@dataclass(frozen=True)
class ToolCallCheck:
    """One pending call and what the guard decided about it."""

    call: ToolCall
    decision: Decision

    @property
    def allowed(self) -> bool:
        """True when the caller may run the call now."""
        return not self.decision.blocked

    @property
    def escalated(self) -> bool:
        """True when a human reviewer was asked (see ``escalation_id``)."""
        return self.decision.escalated

    @property
    def escalation_id(self) -> str | None:
        """The review queue item of an escalation."""
        return self.decision.escalation_id

    @property
    def message(self) -> str | None:
        """For a call held back: the text the model gets as the tool's result."""
        return self.decision.tool_message

    def chat_message(self) -> dict[str, Any]:
        """The Chat Completions ``tool`` message answering a held-back call."""
        return {"role": "tool", "tool_call_id": self.call.id or "", "content": self._output()}

    def responses_item(self) -> dict[str, Any]:
        """The Responses ``function_call_output`` item answering a held-back call."""
        return {
            "type": "function_call_output",
            "call_id": self.call.id or "",
            "output": self._output(),
        }

    def _output(self) -> str:
        if self.allowed:
            raise ValueError(f"the call to {self.call.name} is allowed: run it and send its result")
        return self.message or ""


@dataclass(frozen=True)
class ToolCallReview:
    """The decisions about every tool call of one answer, in the answer's order."""

    checks: tuple[ToolCallCheck, ...]

    @property
    def allowed(self) -> tuple[ToolCallCheck, ...]:
        """The calls the caller may run."""
        return tuple(check for check in self.checks if check.allowed)

    @property
    def blocked(self) -> tuple[ToolCallCheck, ...]:
        """The calls held back (escalations held as block included)."""
        return tuple(check for check in self.checks if not check.allowed)

    @property
    def escalated(self) -> tuple[ToolCallCheck, ...]:
        """The calls sent to a human reviewer."""
        return tuple(check for check in self.checks if check.escalated)

    @property
    def decisions(self) -> tuple[Decision, ...]:
        """One decision per call."""
        return tuple(check.decision for check in self.checks)


def _audited_trace(source: Any, choice: int, calls: tuple[ToolCall, ...]) -> Trace | None:
    """The trace the guard audited for ``source``'s answer (before any redaction), if known.

    Kept on results of a guarded client and on guarded streams; else the last answer audited in
    this thread or task, when it asked for these very calls (an answer assembled by a stream
    helper: ``stream.get_final_completion()``).
    """
    traces: tuple[Trace, ...] = tuple(getattr(source, AUDITED_TRACES_ATTR, ()) or ())
    if not traces:
        traces = tuple(t for t in last_audited_traces() if _same_calls(t.tool_calls, calls))
    for trace in traces:
        if trace.metadata.get("choice", 0) == choice:
            return trace
    return traces[0] if traces else None


def _same_calls(audited: tuple[ToolCall, ...], calls: tuple[ToolCall, ...]) -> bool:
    return bool(calls) and [(c.id, c.name) for c in audited] == [(c.id, c.name) for c in calls]


def _context(
    result: Any,
    audited: Trace | None,
    messages: Iterable[Any] | None,
    input: Any,
    instructions: str | None,
) -> RequestContext:
    if messages is not None:
        return chat_request_context({"messages": list(messages), "model": _model(result)})
    if input is not None or instructions is not None:
        return responses_request_context(
            {"input": input, "instructions": instructions, "model": _model(result)}
        )
    if audited is not None:
        metadata = {k: v for k, v in audited.metadata.items() if k != "choice"}
        return RequestContext(
            query=audited.query,
            images=audited.images,
            history=audited.history,
            model=audited.model,
            metadata=metadata,
        )
    return RequestContext(model=_model(result), metadata={"integration": "openai"})


def _model(result: Any) -> str | None:
    model = getattr(result, "model", None)
    return model if isinstance(model, str) else None


def _turn(result: Any, context: RequestContext, choice: int) -> Trace:
    """The answer's turn as the caller got it: the tool calls it is about to run."""
    if hasattr(result, "choices"):
        traces = chat_traces(context, result)
        if not traces:
            return context.trace(response="", thinking=None)
        return next((t for t in traces if t.metadata.get("choice") == choice), traces[0])
    if hasattr(result, "output"):
        return response_trace(context, result)
    raise TypeError(
        f"check_tool_calls takes a ChatCompletion or a Response, not {type(result).__name__}"
    )


def _pending(
    result: Any,
    *,
    messages: Iterable[Any] | None,
    input: Any,
    instructions: str | None,
    audited: Any,
    choice: int,
) -> tuple[ToolContext, tuple[ToolCall, ...]]:
    """The reasoning behind ``result``'s tool calls, and the calls (what the caller would run)."""
    plain = _turn(result, RequestContext(), choice)
    source = _audited_trace(audited if audited is not None else result, choice, plain.tool_calls)
    context = _context(result, source, messages, input, instructions)
    turn = _turn(result, context, choice)
    reasoning = source if source is not None else turn
    ctx = ToolContext(
        query=context.query,
        thinking=reasoning.thinking,
        response=reasoning.response,
        history=context.history,
        images=context.images,
        model=context.model,
        metadata={**context.metadata, "integration": "openai"},
    )
    return ctx, turn.tool_calls


def tool_context_of(
    result: Any,
    *,
    messages: Iterable[Mapping[str, Any]] | None = None,
    input: Any = None,
    instructions: str | None = None,
    audited: Any = None,
    choice: int = 0,
) -> ToolContext:
    """The reasoning behind ``result``'s tool calls, for tools that gate themselves.

    Publish it around the tool calls of an answer, and every :func:`~traceguard.guard_tool`
    function run inside audits its call with the reasoning that led to it::

        with tool_context(tool_context_of(completion, messages=messages)):
            output = wire_money(**json.loads(call.function.arguments))   # a guard_tool function

    Same sources as :func:`check_tool_calls` (the reasoning the guard audited for the answer,
    even when a redaction removed it from what the caller sees; the request from ``messages=``
    or ``input=`` / ``instructions=``).
    """
    context, _ = _pending(
        result,
        messages=messages,
        input=input,
        instructions=instructions,
        audited=audited,
        choice=choice,
    )
    return context


def pending_traces(
    result: Any,
    *,
    messages: Iterable[Any] | None = None,
    input: Any = None,
    instructions: str | None = None,
    audited: Any = None,
    choice: int = 0,
) -> list[Trace]:
    """The tool-call traces of ``result``'s calls, each with the reasoning that led to it.

    The calls are the ones ``result`` holds (what the caller would run). The reasoning is the
    one the guard audited for that answer when known (kept on results of a guarded client, and
    on guarded streams, passed as ``audited``): a redaction may have removed it from what the
    caller sees, but the gate must still read it.
    """
    context, calls = _pending(
        result,
        messages=messages,
        input=input,
        instructions=instructions,
        audited=audited,
        choice=choice,
    )
    return [tool_call_trace(call, context) for call in calls]


def _review(traces: Sequence[Trace], decisions: Sequence[Decision]) -> ToolCallReview:
    checks = tuple(
        ToolCallCheck(call=trace.tool_calls[0], decision=decision)
        for trace, decision in zip(traces, decisions, strict=True)
    )
    stop = next((check.decision for check in checks if check.decision.stop_run), None)
    if stop is not None:
        raise blocked_error(stop)
    return ToolCallReview(checks)


def check_tool_calls(
    guard: Guard,
    result: Any,
    *,
    messages: Iterable[Mapping[str, Any]] | None = None,
    input: Any = None,
    instructions: str | None = None,
    audited: Any = None,
    choice: int = 0,
) -> ToolCallReview:
    """Audit every tool call of ``result`` before the caller runs any of them.

    Args:
        guard: the guard; its policy's ``tools`` section decides.
        result: a ``ChatCompletion`` (any subclass, e.g. ``ParsedChatCompletion``) or a
            ``Response``, from a guarded client or not.
        messages: the Chat Completions messages that led to it (query, images, history).
        input: the Responses input that led to it; ``instructions`` its instructions.
        audited: the guarded stream an answer was read from, when it is not the last answer
            audited in this thread or task: its audit kept the reasoning a redaction may have
            removed from the answer (the last one is found by itself).
        choice: which choice of a multi-choice completion (default the first).

    Raises:
        Blocked: a call's decision stops the run (``Escalated`` for an escalation).
    """
    traces = pending_traces(
        result,
        messages=messages,
        input=input,
        instructions=instructions,
        audited=audited,
        choice=choice,
    )
    decisions = guard.check_batch(traces) if traces else []
    return _review(traces, decisions)


async def acheck_tool_calls(
    guard: Guard,
    result: Any,
    *,
    messages: Iterable[Mapping[str, Any]] | None = None,
    input: Any = None,
    instructions: str | None = None,
    audited: Any = None,
    choice: int = 0,
) -> ToolCallReview:
    """Async :func:`check_tool_calls`."""
    traces = pending_traces(
        result,
        messages=messages,
        input=input,
        instructions=instructions,
        audited=audited,
        choice=choice,
    )
    decisions = await guard.acheck_batch(traces) if traces else []
    return _review(traces, decisions)
