"""``TraceguardMiddleware``: the guard inside a ``langchain.agents.create_agent`` loop.

Every model turn is audited where the agent makes it (``wrap_model_call``) and every tool call
before its tool runs (``wrap_tool_call``); the decision acts inside the loop by rewriting the
agent's state. The rules (what a decision releases, what a held call leaves) are in
:mod:`._langchain_agent_turns`; here are only the sync and async hooks.
"""

from __future__ import annotations

import logging
import operator
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, NotRequired

from langchain.agents.middleware.types import (
    AgentMiddleware,
    AgentState,
    ExtendedModelResponse,
    ModelRequest,
    ModelResponse,
    OmitFromInput,
    PrivateStateAttr,
    ToolCallRequest,
    hook_config,
)
from langchain_core.messages import BaseMessage, ToolMessage
from langgraph.runtime import Runtime
from langgraph.types import Command

from traceguard._exceptions import ConfigurationError
from traceguard._guard import Guard
from traceguard._tools import tool_context

from ._langchain_agent_turns import (
    HELD_KEY,
    ModelTurn,
    OnBlock,
    StreamMode,
    ToolTurn,
    held_decision,
    held_is_current,
    hidden_from_message_streams,
    release_held,
    stop_updates,
)
from ._langchain_messages import model_name, warn_hidden_reasoning
from .langgraph import areview_gate, pause_for_review, review_gate

__all__ = ["TraceguardMiddleware", "TraceguardState"]

logger = logging.getLogger("traceguard.integrations.langchain")


class TraceguardState(AgentState[Any]):
    """The agent state keys the middleware adds."""

    traceguard_decisions: NotRequired[Annotated[list[dict[str, Any]], OmitFromInput, operator.add]]
    """One summary per audited model turn and tool call (no audited text), in order."""
    traceguard_held: NotRequired[Annotated[dict[str, Any] | None, PrivateStateAttr]]
    traceguard_stop: NotRequired[Annotated[dict[str, Any] | None, PrivateStateAttr]]
    traceguard_call_reasoning: NotRequired[Annotated[dict[str, str] | None, PrivateStateAttr]]


class TraceguardMiddleware(AgentMiddleware[TraceguardState, Any]):
    """Audits every model turn and tool call of a ``create_agent`` agent and acts in the loop.

    ::

        agent = create_agent(
            model, tools, middleware=[TraceguardMiddleware(guard)], checkpointer=InMemorySaver()
        )

    **Model turns** are audited after the model answers, with the query and its images, the
    thinking, the answer, the tool calls and the last ``history_turns`` earlier messages. The
    agent's state then holds what the decision allows:

    - *allow*: the message unchanged;
    - *redact*: the message with its thinking removed, or the answer replaced by the policy's
      refusal with its tool calls dropped (so nothing it asked for runs);
    - *block*: ``on_block="end"`` (default) ends the run with the refusal as the last message;
      ``"raise"`` raises :class:`~traceguard.Blocked` out of ``invoke`` / ``stream``;
    - *escalate*, with a checkpointer and a ``thread_id``: the turn is held (the state shows
      what the policy's ``escalation_fallback`` would) and the graph pauses with LangGraph's
      ``interrupt()`` (value: ``{"type": "traceguard_review", "escalation_id": ...}``).
      ``Command(resume="approved")`` (or ``ReviewOutcome.to_dict()``; see
      :func:`~traceguard.integrations.langgraph.resume_reviewed`) lets the held message go on
      as if allowed, tool calls included; ``"rejected"`` ends the run with the refusal.
      Without a checkpointer the fallback disposition applies at once (or the guard waits for
      the reviewer in place under ``Guard(on_escalate="wait")``).

    **Tool calls** are audited before the tool runs, by ``tool_guard`` (default: ``guard``),
    with the reasoning that led to them (the model turn that made the call, its thinking, the
    conversation before it) and the policy's ``tools`` rules. Allowed, the tool runs (inside a
    published :func:`~traceguard.tool_context`); held back, it does not run, and the model gets
    the policy's tool message as the tool's result, so the agent can recover, or, when the
    policy says ``on_block: stop``, the run ends (``on_block`` above: with the refusal, or by
    raising). An escalated call pauses like a model turn, and runs when approved.

    **Decisions** are visible on every message the middleware passes
    (``response_metadata["traceguard"]``) and, for the whole run, in the state key
    ``traceguard_decisions`` (also returned by ``invoke``). They go to the guard's sinks.

    **Streams**: ``stream``, ``astream`` and ``astream_events`` work as usual. With
    ``stream_mode="buffer"`` (default) the inner model's tokens are kept out of LangGraph's
    ``stream_mode="messages"`` (the model run is tagged ``nostream`` and
    ``traceguard:unaudited``); the audited message reaches that stream once decided. The inner
    model still runs with the graph's callbacks, so tracers and ``astream_events`` see it: its
    ``on_chat_model_stream`` events are the raw tokens (leave them out with
    ``exclude_tags=["traceguard:unaudited"]``). ``"passthrough"`` streams the tokens as they
    come; the state is still rewritten, but what was streamed is out.

    List it first in ``middleware=[...]``: its ``wrap_model_call`` is then the outermost (it
    audits what the other middleware made of the answer) and its ``after_model`` runs last.
    A turn held for review shows its placeholder to the ``after_model`` hooks of middleware
    listed after it (``HumanInTheLoopMiddleware`` in batched mode does not see the tool calls of
    a turn approved later; its ``interrupt_mode="per_call"`` does).
    """

    state_schema = TraceguardState

    def __init__(
        self,
        guard: Guard,
        *,
        tool_guard: Guard | None = None,
        on_block: OnBlock = "end",
        stream_mode: StreamMode = "buffer",
        history_turns: int | None = 20,
    ) -> None:
        """
        Args:
            guard: audits the model turns (and the tool calls, unless ``tool_guard``).
            tool_guard: audits the tool calls, e.g. with a policy of its own.
            on_block: what a held-back output does to the run: ``"end"`` it with the policy's
                refusal, or ``"raise"`` :class:`~traceguard.Blocked`
                (:class:`~traceguard.Escalated`). A reviewer's rejection on resume always
                ends the run with the refusal.
            stream_mode: ``"buffer"`` or ``"passthrough"`` (see the class documentation).
            history_turns: earlier messages given to the auditor with each turn (None: all).
        """
        super().__init__()
        if on_block not in ("end", "raise"):
            raise ConfigurationError("on_block must be 'end' or 'raise'")
        if stream_mode not in ("buffer", "passthrough"):
            raise ConfigurationError("stream_mode must be 'buffer' or 'passthrough'")
        if history_turns is not None and history_turns < 0:
            raise ConfigurationError("history_turns must be None or a number >= 0")
        self.guard = guard
        self.tool_guard = tool_guard if tool_guard is not None else guard
        self.on_block: OnBlock = on_block
        self.stream_mode: StreamMode = stream_mode
        self.history_turns = history_turns
        self.tools = []

    # -- model turns ---------------------------------------------------------------------------

    def _model_turn(self, request: ModelRequest[Any], response: ModelResponse[Any]) -> ModelTurn:
        messages: list[BaseMessage] = list(request.messages)
        if request.system_message is not None:
            messages.insert(0, request.system_message)
        model = model_name(request.model)
        turn = ModelTurn.build(
            messages,
            response,
            model=model,
            policy=self.guard.policy,
            on_block=self.on_block,
            stream_mode=self.stream_mode,
            history_turns=self.history_turns,
            run_id=_run_id(),
        )
        if turn.message is not None:
            warn_hidden_reasoning(turn.message, turn.trace.thinking, model)
        return turn

    def _call_model(
        self,
        request: ModelRequest[Any],
        handler: Callable[[ModelRequest[Any]], ModelResponse[Any]],
    ) -> ModelResponse[Any]:
        if self.stream_mode == "passthrough":
            return handler(request)
        with hidden_from_message_streams():
            return handler(request)

    def wrap_model_call(
        self,
        request: ModelRequest[Any],
        handler: Callable[[ModelRequest[Any]], ModelResponse[Any]],
    ) -> ExtendedModelResponse[Any]:
        """Call the model, audit its answer, and return what the decision allows."""
        turn = self._model_turn(request, self._call_model(request, handler))
        decision = self.guard.check_batch([turn.trace], wait_for_review=turn.wait_for_review)[0]
        return turn.outcome(decision)

    async def awrap_model_call(
        self,
        request: ModelRequest[Any],
        handler: Callable[[ModelRequest[Any]], Awaitable[ModelResponse[Any]]],
    ) -> ExtendedModelResponse[Any]:
        """Async :meth:`wrap_model_call`."""
        if self.stream_mode == "passthrough":
            response = await handler(request)
        else:
            with hidden_from_message_streams():
                response = await handler(request)
        turn = self._model_turn(request, response)
        decisions = await self.guard.acheck_batch(
            [turn.trace], wait_for_review=turn.wait_for_review
        )
        return turn.outcome(decisions[0])

    @hook_config(can_jump_to=["end"])
    def after_model(self, state: TraceguardState, runtime: Runtime[Any]) -> dict[str, Any] | None:
        """Pause on a held turn until a reviewer decides; then release what they allowed."""
        held = state.get("traceguard_held")
        if not held:
            return None
        if not held_is_current(held, state["messages"]):
            return {HELD_KEY: None}  # abandoned: the thread went on with a new input
        trace = held.get("trace") or {}
        reviewed = pause_for_review(
            held_decision(held),
            thinking=trace.get("thinking"),
            response=trace.get("response"),
            queue=self.guard.review_queue,
        )
        return release_held(held, reviewed, self.guard.policy)

    @hook_config(can_jump_to=["end"])
    async def aafter_model(
        self, state: TraceguardState, runtime: Runtime[Any]
    ) -> dict[str, Any] | None:
        """Async :meth:`after_model` (the pause itself does no I/O)."""
        return self.after_model(state, runtime)

    @hook_config(can_jump_to=["end"])
    def before_model(self, state: TraceguardState, runtime: Runtime[Any]) -> dict[str, Any] | None:
        """End the run when a tool call stopped it, before the model is asked again."""
        stop = state.get("traceguard_stop")
        return stop_updates(stop, self.guard.policy) if stop else None

    @hook_config(can_jump_to=["end"])
    async def abefore_model(
        self, state: TraceguardState, runtime: Runtime[Any]
    ) -> dict[str, Any] | None:
        """Async :meth:`before_model`."""
        return self.before_model(state, runtime)

    # -- tool calls ----------------------------------------------------------------------------

    def _tool_turn(self, request: ToolCallRequest) -> ToolTurn:
        return ToolTurn.build(
            request.tool_call,
            request.state,
            policy=self.tool_guard.policy,
            on_block=self.on_block,
            history_turns=self.history_turns,
            run_id=_run_id(),
        )

    def wrap_tool_call(
        self,
        request: ToolCallRequest,
        handler: Callable[[ToolCallRequest], ToolMessage | Command[Any]],
    ) -> ToolMessage | Command[Any]:
        """Audit the pending call; run the tool only when the decision lets it."""
        turn = self._tool_turn(request)
        decision = review_gate(self.tool_guard, turn.trace)
        if decision.blocked:
            return turn.held(decision)
        with tool_context(turn.context):
            result = handler(request)
        released: ToolMessage | Command[Any] = turn.released(result, decision)
        return released

    async def awrap_tool_call(
        self,
        request: ToolCallRequest,
        handler: Callable[[ToolCallRequest], Awaitable[ToolMessage | Command[Any]]],
    ) -> ToolMessage | Command[Any]:
        """Async :meth:`wrap_tool_call`."""
        turn = self._tool_turn(request)
        decision = await areview_gate(self.tool_guard, turn.trace)
        if decision.blocked:
            return turn.held(decision)
        with tool_context(turn.context):
            result = await handler(request)
        released: ToolMessage | Command[Any] = turn.released(result, decision)
        return released


def _run_id() -> str | None:
    """The id of the model node's run (what tracers show), when LangChain set one."""
    from langchain_core.runnables.config import var_child_runnable_config

    config = var_child_runnable_config.get() or {}
    callbacks = config.get("callbacks")
    parent = getattr(callbacks, "parent_run_id", None)
    return None if parent is None else str(parent)
