"""Multi-step agents: every model call of a real ``create_agent`` tool loop is audited."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import pytest

pytest.importorskip("langchain_core")
pytest.importorskip("langchain.agents")

from langchain.agents import create_agent
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_core.tools import BaseTool, tool

from traceguard import Blocked, Trace
from traceguard._guard import Guard
from traceguard._policy import Policy
from traceguard.integrations.langchain import (
    AsyncTraceguardCallbackHandler,
    GuardedChatModel,
    TraceguardCallbackHandler,
    guard_runnable,
)
from traceguard.testing import ScriptedAuditor


class ToolFakeModel(GenericFakeChatModel):
    """GenericFakeChatModel that accepts tools (it answers from its script regardless)."""

    def bind_tools(
        self,
        tools: Sequence[dict[str, Any] | type | Callable[..., Any] | BaseTool],
        *,
        tool_choice: str | None = None,
        **kwargs: Any,
    ) -> ToolFakeModel:
        return self


@tool
def get_weather(city: str) -> str:
    """The weather in a city."""
    return f"sunny in {city}"


def script() -> ToolFakeModel:
    call = {"name": "get_weather", "args": {"city": "Paris"}, "id": "call-1"}
    return ToolFakeModel(
        messages=iter(
            [
                AIMessage(
                    content="",
                    tool_calls=[call],
                    additional_kwargs={"reasoning_content": "I should look it up"},
                ),
                AIMessage(content="<think>the tool said sunny</think>It is sunny in Paris."),
            ]
        )
    )


def test_every_model_call_of_the_loop_is_audited_with_the_conversation_so_far() -> None:
    auditor = ScriptedAuditor([0, 0, 0])
    handler = TraceguardCallbackHandler(Guard(auditor))
    agent = create_agent(script(), tools=[get_weather])
    state = agent.invoke(
        {"messages": [HumanMessage("Weather in Paris?")]}, config={"callbacks": [handler]}
    )
    assert state["messages"][-1].content.endswith("It is sunny in Paris.")
    first, gate, second = auditor.seen
    assert (gate.stage.value, gate.thinking) == ("tool_call", "I should look it up")
    assert (first.query, first.thinking, first.history) == (
        "Weather in Paris?",
        "I should look it up",
        (),
    )
    assert [c.name for c in first.tool_calls] == ["get_weather"]
    assert second.query == "Weather in Paris?"
    assert second.thinking == "the tool said sunny"
    assert [(t.role, t.content) for t in second.history] == [
        ("assistant", '[tool call] get_weather({"city": "Paris"})'),
        ("tool", "sunny in Paris"),
    ]
    assert handler.active_runs == 0


def test_a_block_in_the_middle_of_the_loop_stops_the_agent() -> None:
    def rule(trace: Trace) -> float:
        return 1.0 if trace.tool_calls else 0.0  # block the tool call: the tool must never run

    ran: list[str] = []

    @tool
    def spy(city: str) -> str:
        """Records that it ran."""
        ran.append(city)
        return "done"

    call = {"name": "spy", "args": {"city": "Paris"}, "id": "c"}
    model = ToolFakeModel(messages=iter([AIMessage(content="", tool_calls=[call])]))
    handler = TraceguardCallbackHandler(Guard(ScriptedAuditor(rule=rule)))
    agent = create_agent(model, tools=[spy])
    with pytest.raises(Blocked):
        agent.invoke({"messages": [HumanMessage("go")]}, config={"callbacks": [handler]})
    assert ran == []


async def test_async_agent_loop_blocks_the_final_answer() -> None:
    def rule(trace: Trace) -> float:
        return 1.0 if "sunny" in trace.response else 0.0

    auditor = ScriptedAuditor(rule=rule)
    handler = AsyncTraceguardCallbackHandler(Guard(auditor))
    agent = create_agent(script(), tools=[get_weather])
    with pytest.raises(Blocked):
        await agent.ainvoke(
            {"messages": [HumanMessage("Weather in Paris?")]}, config={"callbacks": [handler]}
        )
    # Two model turns, and between them the tool call (audited before the tool ran).
    assert [t.stage.value for t in auditor.seen] == ["final", "tool_call", "final"]


def test_guarded_model_redacts_inside_the_agent_loop() -> None:
    # Every step is "potentially harmful" under drop_thinking: the agent keeps working, and the
    # thinking never enters the conversation state. The redacted outputs (checked again, without
    # their thinking) are safe.
    auditor = ScriptedAuditor(rule=lambda t: 0 if t.metadata.get("redaction_check") else 0.5)
    guarded = guard_runnable(script(), Guard(auditor, Policy()))
    agent = create_agent(guarded, tools=[get_weather])
    state = agent.invoke({"messages": [HumanMessage("Weather in Paris?")]})
    messages = state["messages"]
    assert [type(m).__name__ for m in messages] == [
        "HumanMessage",
        "AIMessage",
        "ToolMessage",
        "AIMessage",
    ]
    assert isinstance(messages[2], ToolMessage) and messages[2].content == "sunny in Paris"
    assert messages[1].tool_calls[0]["name"] == "get_weather"
    assert "reasoning_content" not in messages[1].additional_kwargs
    assert messages[-1].content == "It is sunny in Paris."
    assert len(auditor.seen) == 4  # each turn, then its redacted output


def test_guarded_model_refusal_drops_tool_calls_so_the_loop_ends() -> None:
    auditor = ScriptedAuditor(rule=lambda trace: 0.5)
    policy = Policy.model_validate({"redaction": {"strategy": "refuse"}})
    guarded = guard_runnable(script(), Guard(auditor, policy))
    assert isinstance(guarded.bind_tools([get_weather]), GuardedChatModel)
    agent = create_agent(guarded, tools=[get_weather])
    state = agent.invoke({"messages": [HumanMessage("Weather in Paris?")]})
    final = state["messages"][-1]
    assert final.content == policy.redaction.refusal_message
    assert final.tool_calls == []
    assert len(state["messages"]) == 2  # the tool never ran
