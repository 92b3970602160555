"""The I/O-free half of :class:`TraceguardMiddleware`: what to audit in an agent's turn, and what
a decision does to the agent's state.

:class:`ModelTurn` covers one model call (its trace, then the messages and state updates a
decision releases, including the held form of an escalation that waits for a reviewer);
:class:`ToolTurn` one pending tool call (its trace with the reasoning behind it, then the tool
result the decision leaves). The middleware's sync and async hooks only audit, call the model or
the tool, and pause; every rule lives here, once.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

from langchain.agents.middleware.types import ExtendedModelResponse, ModelResponse
from langchain_core.messages import AIMessage, BaseMessage, RemoveMessage, ToolMessage
from langchain_core.runnables.config import var_child_runnable_config
from langgraph.types import Command

from traceguard._chat import arguments_text
from traceguard._decision import Action, Decision
from traceguard._policy import Policy
from traceguard._streaming import blocked_error, edit_for
from traceguard._tools import ToolContext, tool_call_trace
from traceguard._trace import Stage, ToolCall, Trace
from traceguard.review._model import verdict_from_dict

from ._langchain_messages import (
    bounded,
    decision_metadata,
    output_of,
    redact_message,
    request_context,
    with_decision,
)
from .langgraph import gate_trace

__all__ = [
    "DECISIONS_KEY",
    "HELD_KEY",
    "REASONING_KEY",
    "STOP_KEY",
    "UNAUDITED_TAG",
    "ModelTurn",
    "OnBlock",
    "StreamMode",
    "ToolTurn",
    "hidden_from_message_streams",
    "release_held",
    "stop_updates",
]

OnBlock = Literal["end", "raise"]
StreamMode = Literal["buffer", "passthrough"]

DECISIONS_KEY = "traceguard_decisions"
"""State key: the decision summary of every audited model turn and tool call, in order."""
HELD_KEY = "traceguard_held"
"""Private state key: a model turn held while a reviewer decides (between the model node and
``after_model``)."""
STOP_KEY = "traceguard_stop"
"""Private state key: a tool call stopped the run; the next ``before_model`` ends it."""
REASONING_KEY = "traceguard_call_reasoning"
"""Private state key: the thinking behind the pending tool calls of a turn whose released
message lost it to a redaction; the tool gate still audits each call with it."""

UNAUDITED_TAG = "traceguard:unaudited"
"""Tag of the inner model run in buffer mode (with LangGraph's ``nostream``): its tokens are
tracing, not output; ``astream_events(..., exclude_tags=[UNAUDITED_TAG])`` leaves them out."""

_NOSTREAM = "nostream"  # langgraph.constants.TAG_NOSTREAM: kept out of stream_mode="messages"


@contextlib.contextmanager
def hidden_from_message_streams() -> Iterator[None]:
    """Run the model call inside with ``nostream`` and :data:`UNAUDITED_TAG` tags.

    The chat model still runs with the node's callbacks (tracers, ``astream_events`` see it),
    but LangGraph's ``stream_mode="messages"`` skips its tokens: the audited message reaches
    that stream when the model node ends, in the form the decision allows.
    """
    config = var_child_runnable_config.get()
    if config is None:
        yield
        return
    tags = [*(config.get("tags") or ()), _NOSTREAM, UNAUDITED_TAG]
    token = var_child_runnable_config.set({**config, "tags": tags})
    try:
        yield
    finally:
        var_child_runnable_config.reset(token)


def _last_ai(messages: Sequence[BaseMessage]) -> int | None:
    for index in range(len(messages) - 1, -1, -1):
        if isinstance(messages[index], AIMessage):
            return index
    return None


def _refusal(text: str, summary: Mapping[str, Any], name: str | None = None) -> AIMessage:
    return AIMessage(
        content=text,
        id=f"traceguard-{uuid.uuid4().hex}",
        name=name,
        response_metadata={"traceguard": dict(summary)},
    )


# -- model turns --------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelTurn:
    """One model call of the agent: the response, its trace, and what a decision makes of it."""

    response: ModelResponse[Any]
    trace: Trace
    can_pause: bool
    """True when the graph has a checkpointer and a thread id: an escalation pauses it."""
    policy: Policy
    on_block: OnBlock
    stream_mode: StreamMode

    @classmethod
    def build(
        cls,
        messages: Sequence[BaseMessage],
        response: ModelResponse[Any],
        *,
        model: str | None,
        policy: Policy,
        on_block: OnBlock,
        stream_mode: StreamMode,
        history_turns: int | None,
        run_id: str | None,
    ) -> ModelTurn:
        """The turn of ``response`` to the conversation ``messages`` (system message first)."""
        metadata: dict[str, Any] = {"integration": "langgraph"}
        if model is not None:
            metadata["model"] = model
        if run_id is not None:
            metadata["run_id"] = run_id
        context = bounded(request_context(messages, model=model, metadata=metadata), history_turns)
        index = _last_ai(response.result)
        message = response.result[index] if index is not None else None
        thinking, text, calls = output_of(message) if message is not None else (None, "", ())
        trace = context.trace(
            thinking=thinking,
            response=text,
            tool_calls=calls,
            trace_id=message.id if message is not None else None,
        )
        trace, can_pause = gate_trace(trace)
        return cls(response, trace, can_pause, policy, on_block, stream_mode)

    @property
    def message(self) -> AIMessage | None:
        """The model's message (the last ``AIMessage`` of the response)."""
        index = _last_ai(self.response.result)
        found = self.response.result[index] if index is not None else None
        return found if isinstance(found, AIMessage) else None

    @property
    def wait_for_review(self) -> bool | None:
        """For ``check_batch``: never wait when the graph pauses instead; else the guard's way."""
        return False if self.can_pause else None

    def outcome(self, decision: Decision) -> ExtendedModelResponse[Any]:
        """What the model node returns under ``decision`` (or raise, with ``on_block="raise"``).

        An escalation that can pause releases a placeholder (what the fallback shows) and keeps
        the real output in the private :data:`HELD_KEY`; ``after_model`` pauses on it.
        """
        summary = decision_metadata(decision, self.trace)
        updates: dict[str, Any] = {DECISIONS_KEY: [summary], HELD_KEY: None}
        if self.can_pause and decision.escalated and decision.review is None:
            shown, _ = _released(self._view(), decision, summary, self.policy, fresh_ids=True)
            # Placeholders never share an id with what replaces them after the review.
            shown = [_identified(m, True) for m in shown]
            updates[HELD_KEY] = {
                "result": list(self.response.result),
                "structured_response": self.response.structured_response,
                "decision": _decision_record(decision),
                "placeholder_ids": [m.id for m in shown],
                "trace": {"thinking": self.trace.thinking, "response": self.trace.response},
            }
            return ExtendedModelResponse(ModelResponse(shown), Command(update=updates))
        if decision.blocked and self.on_block == "raise":
            raise blocked_error(decision)
        fresh = self.stream_mode == "passthrough"  # streamed ids were shown: new ones re-emit
        released, structured = _released(self._view(), decision, summary, self.policy, fresh)
        updates[REASONING_KEY] = _dropped_reasoning(released, self.trace.thinking)
        return ExtendedModelResponse(ModelResponse(released, structured), Command(update=updates))

    def _view(self) -> _Output:
        return _Output(
            result=list(self.response.result),
            structured_response=self.response.structured_response,
            thinking=self.trace.thinking,
            response=self.trace.response,
        )


@dataclass(frozen=True)
class _Output:
    """A model output as the release rules need it."""

    result: list[BaseMessage]
    structured_response: Any
    thinking: str | None
    response: str


def _released(
    output: _Output,
    decision: Decision,
    summary: Mapping[str, Any],
    policy: Policy,
    fresh_ids: bool,
) -> tuple[list[BaseMessage], Any]:
    """The messages (and structured response) ``decision`` lets through of ``output``."""
    refusal = policy.redaction.refusal_message
    index = _last_ai(output.result)
    message = output.result[index] if index is not None else None
    name = message.name if message is not None else None
    if decision.blocked:
        return [_refusal(refusal, summary, name)], None
    if not isinstance(message, AIMessage):  # no model message: nothing to rewrite
        return list(output.result), output.structured_response
    trace = Trace(query="", response=output.response, thinking=output.thinking)
    edit = edit_for(trace, decision, refusal) if decision.redacted else None
    if edit is not None and edit.replacement is not None:
        # The answer itself is replaced: nothing of the turn goes on, tool calls included.
        replaced = redact_message(message, edit.replacement, refuse=True)
        return [_identified(with_decision(replaced, summary), fresh_ids)], None
    if edit is not None and edit.drop_thinking:
        message = redact_message(message, output.response, refuse=False)
    else:
        fresh_ids = False  # unchanged: the id the stream already showed stays right
    result = list(output.result)
    assert index is not None
    result[index] = _identified(with_decision(message, summary), fresh_ids)
    return result, output.structured_response


def _dropped_reasoning(
    released: Sequence[BaseMessage], thinking: str | None
) -> dict[str, str] | None:
    """``{tool call id: thinking}`` for released calls whose message no longer shows it."""
    if thinking is None:
        return None
    kept: dict[str, str] = {}
    for message in released:
        if isinstance(message, AIMessage) and message.tool_calls:
            if output_of(message)[0] != thinking:
                kept.update({c["id"]: thinking for c in message.tool_calls if c["id"]})
    return kept or None


def _identified(message: BaseMessage, fresh: bool) -> Any:
    if not fresh:
        return message
    return message.model_copy(update={"id": f"traceguard-{uuid.uuid4().hex}"})


def release_held(
    held: Mapping[str, Any], reviewed: Decision, policy: Policy
) -> dict[str, Any] | None:
    """The ``after_model`` update once the reviewer decided (or did not) on a held turn.

    The placeholders go, and what the reviewed decision lets through takes their place with ids
    never streamed before; a turn that is not approved ends the run.
    """
    summary = {**decision_metadata(reviewed), "stage": Stage.FINAL.value}
    trace = held.get("trace") or {}
    output = _Output(
        result=list(held["result"]),
        structured_response=held.get("structured_response"),
        thinking=trace.get("thinking"),
        response=trace.get("response") or "",
    )
    released, structured = _released(output, reviewed, summary, policy, fresh_ids=False)
    updates: dict[str, Any] = {
        "messages": [RemoveMessage(id=i) for i in held.get("placeholder_ids") or ()] + released,
        HELD_KEY: None,
        DECISIONS_KEY: [summary],
        REASONING_KEY: _dropped_reasoning(released, output.thinking),
    }
    if structured is not None:
        updates["structured_response"] = structured
    if reviewed.disposition is not Action.ALLOW:
        updates["jump_to"] = "end"
    return updates


def held_decision(held: Mapping[str, Any]) -> Decision:
    """The escalated decision a held turn recorded (rebuilt from plain data)."""
    record = held["decision"]
    return Decision(
        action=Action(record["action"]),
        reason=str(record["reason"]),
        verdict=verdict_from_dict(record["verdict"]),
        disposition=Action(record["disposition"]),
        thinking=None,
        response=None,
        trace_id=record.get("trace_id"),
        escalation_id=record.get("escalation_id"),
    )


def held_is_current(held: Mapping[str, Any], messages: Sequence[BaseMessage]) -> bool:
    """True when the held turn's placeholder is still the last model message (a thread given a
    new input instead of a resume abandons its pause; the fallback output stays)."""
    index = _last_ai(messages)
    ids = held.get("placeholder_ids") or ()
    return index is not None and messages[index].id in ids


def _decision_record(decision: Decision) -> dict[str, Any]:
    # Plain data only: the checkpointer stores it, and a resume rebuilds the Decision from it.
    return {
        "action": decision.action.value,
        "disposition": decision.disposition.value,
        "reason": decision.reason,
        "verdict": decision.verdict.to_dict(),
        "trace_id": decision.trace_id,
        "escalation_id": decision.escalation_id,
    }


# -- tool calls ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ToolTurn:
    """One pending tool call: its trace (with the reasoning behind it) and its outcomes."""

    call: ToolCall
    context: ToolContext
    trace: Trace
    policy: Policy
    on_block: OnBlock

    @classmethod
    def build(
        cls,
        tool_call: Mapping[str, Any],
        state: Any,
        *,
        policy: Policy,
        on_block: OnBlock,
        history_turns: int | None,
        run_id: str | None,
    ) -> ToolTurn:
        """The turn of ``tool_call`` (LangChain's dict) in the agent ``state``."""
        call = ToolCall(
            name=str(tool_call.get("name") or ""),
            arguments=arguments_text(tool_call.get("args") or {}),
            id=tool_call.get("id"),
        )
        messages = state.get("messages") if isinstance(state, Mapping) else None
        reasoning = state.get(REASONING_KEY) if isinstance(state, Mapping) else None
        thinking = reasoning.get(call.id) if isinstance(reasoning, Mapping) and call.id else None
        context = _tool_context(list(messages or ()), call.id, history_turns, thinking)
        if run_id is not None:
            context = replace(context, metadata={**context.metadata, "run_id": run_id})
        return cls(call, context, tool_call_trace(call, context), policy, on_block)

    def released(self, result: Any, decision: Decision) -> Any:
        """The tool's own result, carrying the decision (``response_metadata`` and state)."""
        summary = decision_metadata(decision, self.trace)
        if isinstance(result, ToolMessage):
            return Command(
                update={"messages": [with_decision(result, summary)], DECISIONS_KEY: [summary]}
            )
        if isinstance(result, Command) and isinstance(result.update, Mapping):
            update = dict(result.update)
            messages = update.get("messages")
            if isinstance(messages, list):
                update["messages"] = [
                    with_decision(m, summary)
                    if isinstance(m, ToolMessage) and m.tool_call_id == self.call.id
                    else m
                    for m in messages
                ]
            update[DECISIONS_KEY] = [*update.get(DECISIONS_KEY, ()), summary]
            return replace(result, update=update)
        return result

    def held(self, decision: Decision) -> Command[Any]:
        """The result of a call the decision holds back: a message the model reads, or the end
        of the run (raise with ``on_block="raise"``)."""
        summary = decision_metadata(decision, self.trace)
        stop, text = self._held_as(decision)
        if stop and self.on_block == "raise":
            raise blocked_error(decision)
        message = ToolMessage(
            content=text,
            tool_call_id=self.call.id or "",
            name=self.call.name,
            status="error",
            response_metadata={"traceguard": summary},
        )
        update: dict[str, Any] = {"messages": [message], DECISIONS_KEY: [summary]}
        if stop:
            update[STOP_KEY] = {"summary": summary}
        return Command(update=update)

    def _held_as(self, decision: Decision) -> tuple[bool, str]:
        """(stop the run?, the tool result text) for a held-back call."""
        calls = (self.call,)
        rejected = decision.review is not None and decision.review.resolution == "rejected"
        if rejected:
            # The decision was taken while the call waited; the reviewer's "no" is a block now.
            on_block = self.policy.tools.decide_call(calls, Action.BLOCK, None).on_block
            return on_block == "stop", self.policy.tools.message_for(calls, escalated=False)
        if decision.stop_run:
            return True, self.policy.tools.message_for(calls, escalated=decision.escalated)
        if decision.tool_message is not None:
            return False, decision.tool_message
        return False, self.policy.tools.message_for(calls, escalated=decision.escalated)


def stop_updates(stop: Mapping[str, Any], policy: Policy) -> dict[str, Any]:
    """The ``before_model`` update that ends a run a tool call stopped."""
    summary = stop.get("summary") or {}
    return {
        "messages": [_refusal(policy.redaction.refusal_message, summary)],
        STOP_KEY: None,
        "jump_to": "end",
    }


def _tool_context(
    messages: list[BaseMessage],
    call_id: str | None,
    history_turns: int | None,
    dropped_thinking: str | None,
) -> ToolContext:
    """The reasoning behind the call: the model turn that made it, and the conversation before."""
    index = None
    if call_id is not None:
        for i in range(len(messages) - 1, -1, -1):
            message = messages[i]
            if isinstance(message, AIMessage) and any(
                c.get("id") == call_id for c in message.tool_calls
            ):
                index = i
                break
    if index is None:
        # The call is not in the conversation (run by hand): audit it on its own, never skip it.
        return ToolContext(metadata={"integration": "langgraph"})
    maker = messages[index]
    named = maker.response_metadata.get("model_name")
    model = named if isinstance(named, str) else None
    metadata: dict[str, Any] = {"integration": "langgraph"}
    if model is not None:
        metadata["model"] = model
    context = bounded(
        request_context(messages[:index], model=model, metadata=metadata), history_turns
    )
    thinking, response, _ = output_of(maker)
    if dropped_thinking is not None:
        thinking = dropped_thinking  # what the model thought, not what the user was shown
    return ToolContext(
        query=context.query,
        thinking=thinking,
        response=response,
        history=context.history,
        images=context.images,
        model=model,
        metadata=context.metadata,
    )
