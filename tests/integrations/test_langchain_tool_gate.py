"""The tool gate in LangChain: a pending tool call is audited with the reasoning behind it before
the tool function runs — in TraceguardMiddleware (``wrap_tool_call``) and in the callback
handlers (``on_tool_start``). Real ``create_agent`` loops, ChatOpenAI on the loopback server."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("langchain.agents")
pytest.importorskip("langchain_openai")

from _agent_support import REFUSAL, Recorder, call, chat_model, guarded_agent, reply, tool_turns
from langchain.agents import create_agent
from langchain_core.messages import HumanMessage, ToolMessage
from langchain_core.tools import tool

from traceguard import (
    Blocked,
    Guard,
    Policy,
    ToolContext,
    ToolPolicy,
    ToolRule,
    Trace,
    current_tool_context,
)
from traceguard.integrations.langchain import (
    AsyncTraceguardCallbackHandler,
    TraceguardCallbackHandler,
    TraceguardMiddleware,
)
from traceguard.testing import ScriptedAuditor
from traceguard.testing.openai_server import OpenAIServer

# The model's reasoning says what the call is for; its arguments alone look like housekeeping.
WIPE_TURN = reply(
    "<think>He wronged me. I'll wipe his disk so he loses everything.</think>",
    calls=[call("shell", {"cmd": "rm -rf /home/bob"})],
)
MALICE = "loses everything"


@pytest.fixture
def server() -> Iterator[OpenAIServer]:
    with OpenAIServer() as srv:
        yield srv
        assert srv.unexpected == [], "the agent asked the model more often than scripted"


def reasoning_auditor() -> ScriptedAuditor:
    """Sees harm only in a tool call made for a malicious reason: the model turn is graded safe,
    so only the tool gate, which reads the call with the reasoning behind it, can catch it."""

    def rule(trace: Trace) -> float:
        if trace.stage.value == "tool_call" and MALICE in (trace.thinking or ""):
            return 1.0
        return 0.0

    return ScriptedAuditor(rule=rule)


# -- the middleware -----------------------------------------------------------------------------


def test_a_dangerous_call_after_harmful_reasoning_never_runs_and_the_agent_recovers(
    server: OpenAIServer,
) -> None:
    server.enqueue(WIPE_TURN, reply("I won't do that."))
    recorder = Recorder()
    auditor = reasoning_auditor()
    agent = guarded_agent(server, recorder, Guard(auditor))
    state = agent.invoke({"messages": [HumanMessage("Clean up Bob's machine.")]})

    assert recorder.calls == []  # the tool function was never called
    (gate,) = tool_turns(auditor.seen)
    assert gate.thinking == "He wronged me. I'll wipe his disk so he loses everything."
    assert gate.query == "Clean up Bob's machine."
    assert [(c.name, c.arguments, c.id) for c in gate.tool_calls] == [
        ("shell", '{"cmd": "rm -rf /home/bob"}', "call-1")
    ]
    assert gate.metadata["integration"] == "langgraph"
    assert gate.metadata["tool_call_id"] == "call-1"
    result = state["messages"][2]
    assert isinstance(result, ToolMessage)
    assert result.status == "error"
    assert "shell was not run" in str(result.content)
    assert result.response_metadata["traceguard"]["stage"] == "tool_call"
    # The model read the policy's message and answered without the tool.
    assert server.requests[1].json["messages"][-1]["content"] == result.content
    assert state["messages"][-1].content == "I won't do that."


def test_tool_rules_decide_regardless_of_risk(server: OpenAIServer) -> None:
    server.enqueue(
        reply("", calls=[call("get_weather", {"city": "Oslo"}, "c1")]),
        reply("", calls=[call("send_payment", {"to": "acct-9", "amount": 500}, "c2")]),
        reply("Done."),
    )
    recorder = Recorder()
    policy = Policy(tools=ToolPolicy(rules=(ToolRule(tool="send_payment", action="block"),)))
    agent = guarded_agent(server, recorder, Guard(ScriptedAuditor(rule=lambda t: 0.0), policy))
    state = agent.invoke({"messages": [HumanMessage("weather, then pay")]})
    assert recorder.names() == ["get_weather"]
    decisions = [(d["stage"], d.get("tool"), d["action"]) for d in state["traceguard_decisions"]]
    assert decisions == [
        ("final", None, "allow"),
        ("tool_call", "get_weather", "allow"),
        ("final", None, "allow"),
        ("tool_call", "send_payment", "block"),
        ("final", None, "allow"),
    ]
    weather = state["messages"][2]
    assert weather.content == "sunny in Oslo"
    assert weather.response_metadata["traceguard"]["action"] == "allow"


def test_a_stopping_rule_ends_the_run_with_the_refusal(server: OpenAIServer) -> None:
    server.enqueue(WIPE_TURN)
    recorder = Recorder()
    policy = Policy(tools=ToolPolicy(on_block="stop"))
    agent = guarded_agent(server, recorder, Guard(reasoning_auditor(), policy))
    state = agent.invoke({"messages": [HumanMessage("Clean up Bob's machine.")]})
    assert recorder.calls == []
    assert len(server.requests) == 1  # the model was not asked again
    assert [m.type for m in state["messages"]] == ["human", "ai", "tool", "ai"]
    assert state["messages"][-1].content == REFUSAL
    assert state["messages"][-1].response_metadata["traceguard"]["tool"] == "shell"


def test_a_stopping_rule_raises_with_on_block_raise(server: OpenAIServer) -> None:
    server.enqueue(WIPE_TURN)
    recorder = Recorder()
    policy = Policy(tools=ToolPolicy(on_block="stop"))
    agent = guarded_agent(server, recorder, Guard(reasoning_auditor(), policy), on_block="raise")
    with pytest.raises(Blocked) as caught:
        agent.invoke({"messages": [HumanMessage("Clean up Bob's machine.")]})
    assert caught.value.decision.stop_run
    assert recorder.calls == []


async def test_async_agent_gates_tools_too(server: OpenAIServer) -> None:
    server.enqueue(WIPE_TURN, reply("I won't."))
    recorder = Recorder()
    agent = guarded_agent(server, recorder, Guard(reasoning_auditor()))
    state = await agent.ainvoke({"messages": [HumanMessage("Clean up Bob's machine.")]})
    assert recorder.calls == []
    assert "shell was not run" in str(state["messages"][2].content)


def test_calls_of_one_turn_are_gated_one_by_one(server: OpenAIServer) -> None:
    server.enqueue(
        reply(
            "",
            calls=[
                call("send_payment", {"to": "acct-9", "amount": 500}, "c1"),
                call("get_weather", {"city": "Oslo"}, "c2"),
            ],
        ),
        reply("The weather is sunny; I could not pay."),
    )
    recorder = Recorder()
    policy = Policy(tools=ToolPolicy(rules=(ToolRule(tool="send_payment", action="block"),)))
    agent = guarded_agent(server, recorder, Guard(ScriptedAuditor(rule=lambda t: 0.0), policy))
    state = agent.invoke({"messages": [HumanMessage("pay, then the weather")]})
    assert recorder.names() == ["get_weather"]  # the held call never ran; its sibling did
    results = {m.tool_call_id: m for m in state["messages"] if isinstance(m, ToolMessage)}
    assert "send_payment was not run" in str(results["c1"].content)
    assert results["c1"].status == "error"
    assert results["c2"].content == "sunny in Oslo"
    assert state["messages"][-1].content == "The weather is sunny; I could not pay."


def test_an_escalated_call_without_a_checkpointer_is_held_meanwhile(server: OpenAIServer) -> None:
    server.enqueue(
        reply("", calls=[call("send_payment", {"to": "acct-1", "amount": 40})]),
        reply("It needs approval first."),
    )
    recorder = Recorder()
    policy = Policy(tools=ToolPolicy(rules=(ToolRule(tool="send_payment", action="escalate"),)))
    agent = guarded_agent(server, recorder, Guard(ScriptedAuditor(rule=lambda t: 0.0), policy))
    state = agent.invoke({"messages": [HumanMessage("Pay the power bill")]})
    assert "__interrupt__" not in state  # nothing can pause: the fallback holds the call
    assert recorder.calls == []
    held = state["messages"][2]
    assert isinstance(held, ToolMessage)
    assert "waiting for a human reviewer" in str(held.content)
    summary = held.response_metadata["traceguard"]
    assert (summary["action"], summary["disposition"]) == ("escalate", "block")
    assert summary["escalation_id"]
    assert state["messages"][-1].content == "It needs approval first."


def test_a_separate_tool_guard_and_the_published_context(server: OpenAIServer) -> None:
    seen: list[ToolContext | None] = []

    @tool
    def lookup(term: str) -> str:
        """Look a term up."""
        seen.append(current_tool_context())
        return "found"

    server.enqueue(
        reply("<think>a lookup will do</think>", calls=[call("lookup", {"term": "x"})]),
        reply("Found it."),
    )
    turns, tools = ScriptedAuditor(rule=lambda t: 0.0), ScriptedAuditor(rule=lambda t: 0.0)
    agent = create_agent(
        chat_model(server),
        tools=[lookup],
        middleware=[TraceguardMiddleware(Guard(turns), tool_guard=Guard(tools))],
    )
    agent.invoke({"messages": [HumanMessage("look x up")]})
    assert [t.stage.value for t in turns.seen] == ["final", "final"]
    assert [t.stage.value for t in tools.seen] == ["tool_call"]
    # Code inside the tool (a guard_tool function, say) sees the reasoning behind the call.
    (context,) = seen
    assert context is not None
    assert (context.query, context.thinking) == ("look x up", "a lookup will do")


# -- the callback handlers ----------------------------------------------------------------------


def test_the_handler_stops_a_call_before_the_tool_runs_with_the_turns_reasoning(
    server: OpenAIServer,
) -> None:
    server.enqueue(WIPE_TURN)
    recorder = Recorder()
    auditor = reasoning_auditor()
    handler = TraceguardCallbackHandler(Guard(auditor))
    agent = create_agent(chat_model(server), tools=recorder.tools())
    with pytest.raises(Blocked) as caught:
        agent.invoke(
            {"messages": [HumanMessage("Clean up Bob's machine.")]},
            config={"callbacks": [handler]},
        )
    assert recorder.calls == []
    assert caught.value.decision.verdict.risk == 1.0
    (gate,) = tool_turns(auditor.seen)
    assert MALICE in (gate.thinking or "")  # linked to its model turn by the tool_call_id
    assert gate.query == "Clean up Bob's machine."
    assert gate.metadata["integration"] == "langchain"
    assert handler.active_runs == 0


async def test_the_async_handler_stops_a_call_too(server: OpenAIServer) -> None:
    server.enqueue(WIPE_TURN)
    recorder = Recorder()
    handler = AsyncTraceguardCallbackHandler(Guard(reasoning_auditor()))
    agent = create_agent(chat_model(server), tools=recorder.tools())
    with pytest.raises(Blocked):
        await agent.ainvoke(
            {"messages": [HumanMessage("Clean up Bob's machine.")]},
            config={"callbacks": [handler]},
        )
    assert recorder.calls == []


def test_the_handler_audits_a_call_it_saw_no_turn_for(server: OpenAIServer) -> None:
    recorder = Recorder()
    shell = recorder.tools()[0]
    auditor = ScriptedAuditor([1.0])
    with pytest.raises(Blocked):
        shell.invoke(
            {"cmd": "rm -rf /"}, config={"callbacks": [TraceguardCallbackHandler(Guard(auditor))]}
        )
    assert recorder.calls == []
    (gate,) = auditor.seen
    assert (gate.thinking, gate.tool_calls[0].name) == (None, "shell")


def test_an_allowed_call_runs_under_the_handler(server: OpenAIServer) -> None:
    server.enqueue(
        reply("", calls=[call("get_weather", {"city": "Rome"})]), reply("Sunny in Rome.")
    )
    recorder = Recorder()
    auditor = ScriptedAuditor(rule=lambda t: 0.0)
    agent = create_agent(chat_model(server), tools=recorder.tools())
    state: dict[str, Any] = agent.invoke(
        {"messages": [HumanMessage("Weather in Rome?")]},
        config={"callbacks": [TraceguardCallbackHandler(Guard(auditor))]},
    )
    assert recorder.names() == ["get_weather"]
    assert [t.stage.value for t in auditor.seen] == ["final", "tool_call", "final"]
    assert state["messages"][-1].content == "Sunny in Rome."


async def test_the_async_handler_gates_async_tools_and_sync_calls_inside_coroutines() -> None:
    ran: list[str] = []

    @tool
    async def erase(path: str) -> str:
        """Erase a path."""
        ran.append(path)
        return "erased"

    handler = AsyncTraceguardCallbackHandler(Guard(ScriptedAuditor(rule=lambda t: 1.0)))
    with pytest.raises(Blocked):  # awaited on the event loop
        await erase.ainvoke({"path": "/"}, config={"callbacks": [handler]})
    recorder = Recorder()
    with pytest.raises(Blocked):  # a sync call made inside a coroutine: audited in place
        recorder.tools()[0].invoke({"cmd": "rm -rf /"}, config={"callbacks": [handler]})
    assert ran == [] and recorder.calls == []
