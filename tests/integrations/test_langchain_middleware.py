"""TraceguardMiddleware on model turns: a real ``create_agent`` loop, ChatOpenAI on the loopback
OpenAI-compatible server, and every action acting inside the loop (sync, async, streaming)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any
from uuid import UUID

import pytest

pytest.importorskip("langchain.agents")
pytest.importorskip("langchain_openai")

from _agent_support import REFUSAL, Recorder, call, guarded_agent, model_turns, reply, streamed
from langchain.agents import create_agent
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import AIMessage, AIMessageChunk, HumanMessage
from langgraph.checkpoint.memory import InMemorySaver

from traceguard import Blocked, Escalated, Guard, Policy, Redaction, Trace
from traceguard.integrations.langchain import TraceguardMiddleware
from traceguard.testing import ScriptedAuditor, Step
from traceguard.testing.openai_server import OpenAIServer

HARMFUL_PLAN = "<think>they want to hurt him; a concrete plan first</think>Step 1: buy the parts."


@pytest.fixture
def server() -> Iterator[OpenAIServer]:
    with OpenAIServer() as srv:
        yield srv
        assert srv.unexpected == [], "the agent asked the model more often than scripted"


def by_response(**risks: float) -> ScriptedAuditor:
    """Grades a model turn by words in its response or thinking; anything else is safe."""

    def rule(trace: Trace) -> float:
        text = f"{trace.thinking or ''} {trace.response_with_tools}"
        return max((risk for word, risk in risks.items() if word in text), default=0.0)

    return ScriptedAuditor(rule=rule)


def agent_for(server: OpenAIServer, guard: Guard, recorder: Recorder, **options: Any) -> Any:
    return guarded_agent(server, recorder, guard, **options)


def ask(agent: Any, question: str, thread: str = "t-1") -> dict[str, Any]:
    config = {"configurable": {"thread_id": thread}}
    result: dict[str, Any] = agent.invoke({"messages": [HumanMessage(question)]}, config)
    return result


# -- allow ----------------------------------------------------------------------------------------


def test_an_allowed_loop_runs_unchanged_and_every_turn_carries_its_decision(
    server: OpenAIServer,
) -> None:
    server.enqueue(
        reply("<think>look it up</think>", calls=[call("get_weather", {"city": "Paris"})]),
        reply("<think>the tool says sunny</think>It is sunny in Paris."),
    )
    auditor = by_response()
    recorder = Recorder()
    agent = agent_for(server, Guard(auditor), recorder, checkpointer=InMemorySaver())
    state = ask(agent, "Weather in Paris?", thread="weather-1")

    assert recorder.names() == ["get_weather"]
    final = state["messages"][-1]
    assert isinstance(final, AIMessage)
    assert final.content == "<think>the tool says sunny</think>It is sunny in Paris."
    assert final.response_metadata["traceguard"]["action"] == "allow"
    assert [(d["stage"], d["action"]) for d in state["traceguard_decisions"]] == [
        ("final", "allow"),
        ("tool_call", "allow"),
        ("final", "allow"),
    ]
    first, second = model_turns(auditor.seen)
    assert (first.query, first.thinking, first.response) == ("Weather in Paris?", "look it up", "")
    assert [c.name for c in first.tool_calls] == ["get_weather"]
    assert first.model == "m"
    assert first.metadata["integration"] == "langgraph"
    assert first.metadata["thread_id"] == "weather-1"
    assert first.metadata["model"] == "m"
    UUID(first.metadata["run_id"])  # the model node's run, as tracers show it
    assert [t.role for t in second.history] == ["assistant", "tool"]
    assert "traceguard_held" not in state  # private keys stay out of the result


def test_history_is_bounded(server: OpenAIServer) -> None:
    server.enqueue(reply("fine"))
    auditor = by_response()
    agent = agent_for(server, Guard(auditor), Recorder(), history_turns=2)
    earlier = [HumanMessage(f"q{n}") if n % 2 == 0 else AIMessage(f"a{n}") for n in range(6)]
    agent.invoke({"messages": [*earlier, HumanMessage("last question")]})
    (trace,) = auditor.seen
    assert trace.query == "last question"
    assert [t.content for t in trace.history] == ["q4", "a5"]


# -- redact -----------------------------------------------------------------------------------


def test_redact_strips_the_thinking_from_the_message_in_the_state(server: OpenAIServer) -> None:
    server.enqueue(reply("<think>a risky aside</think>Here is the safe part."))
    agent = agent_for(server, Guard(by_response(risky=0.5)), Recorder())
    state = ask(agent, "q")
    final = state["messages"][-1]
    assert final.content == "Here is the safe part."
    assert final.response_metadata["traceguard"]["disposition"] == "redact"
    assert "risky" not in str(state["messages"])


def test_a_refusing_redaction_replaces_the_answer_and_drops_its_tool_calls(
    server: OpenAIServer,
) -> None:
    server.enqueue(reply("<think>risky</think>Sure.", calls=[call("shell", {"cmd": "ls"})]))
    recorder = Recorder()
    policy = Policy(redaction=Redaction(strategy="refuse"))
    agent = agent_for(server, Guard(by_response(risky=0.5), policy), recorder)
    state = ask(agent, "q")
    final = state["messages"][-1]
    assert (final.content, final.tool_calls) == (REFUSAL, [])
    assert recorder.calls == []  # the refused turn's tool call never ran
    assert len(server.requests) == 1  # and the loop ended there


# -- block ------------------------------------------------------------------------------------


def test_block_ends_the_run_with_the_refusal_before_any_tool_runs(server: OpenAIServer) -> None:
    server.enqueue(reply(HARMFUL_PLAN, calls=[call("shell", {"cmd": "rm -rf /"})]))
    recorder = Recorder()
    agent = agent_for(server, Guard(by_response(hurt=1.0)), recorder)
    state = ask(agent, "help me")
    assert recorder.calls == []
    assert [m.type for m in state["messages"]] == ["human", "ai"]
    final = state["messages"][-1]
    assert (final.content, final.tool_calls) == (REFUSAL, [])
    assert final.response_metadata["traceguard"]["action"] == "block"
    assert "hurt" not in str(state)


def test_block_can_raise_instead(server: OpenAIServer) -> None:
    server.enqueue(reply(HARMFUL_PLAN, calls=[call("shell", {"cmd": "rm -rf /"})]))
    recorder = Recorder()
    agent = agent_for(server, Guard(by_response(hurt=1.0)), recorder, on_block="raise")
    with pytest.raises(Blocked) as caught:
        ask(agent, "help me")
    assert caught.value.decision.verdict.risk == 1.0
    assert recorder.calls == []


def test_an_auditor_failure_is_never_an_allow(server: OpenAIServer) -> None:
    server.enqueue(reply(HARMFUL_PLAN, calls=[call("shell", {"cmd": "rm -rf /"})]))
    recorder = Recorder()
    auditor = ScriptedAuditor([Step(error="auditor down")])
    agent = agent_for(server, Guard(auditor), recorder)  # auditor_error → escalate, held as block
    state = ask(agent, "help me")
    final = state["messages"][-1]
    assert final.content == REFUSAL
    assert final.response_metadata["traceguard"]["status"] == "auditor_error"
    assert recorder.calls == []


# -- escalate without a checkpointer ------------------------------------------------------------


def test_an_escalation_without_a_checkpointer_takes_the_fallback(server: OpenAIServer) -> None:
    server.enqueue(reply(HARMFUL_PLAN))
    agent = agent_for(server, Guard(by_response(hurt=1.0), Policy(harmful="escalate")), Recorder())
    state = ask(agent, "help me")  # nothing can pause: held as block
    summary = state["messages"][-1].response_metadata["traceguard"]
    assert (summary["action"], summary["disposition"]) == ("escalate", "block")
    assert summary["awaiting_review"] is True
    assert summary["escalation_id"]
    assert state["messages"][-1].content == REFUSAL


def test_an_escalation_held_as_redact_without_a_checkpointer(server: OpenAIServer) -> None:
    server.enqueue(reply("<think>hurt</think>The answer."))
    policy = Policy(harmful="escalate", escalation_fallback="redact")
    agent = agent_for(server, Guard(by_response(hurt=1.0), policy), Recorder(), on_block="raise")
    state = ask(agent, "q")
    assert state["messages"][-1].content == "The answer."


def test_raise_gives_escalated_for_an_escalation(server: OpenAIServer) -> None:
    server.enqueue(reply(HARMFUL_PLAN))
    policy = Policy(harmful="escalate")
    agent = agent_for(server, Guard(by_response(hurt=1.0), policy), Recorder(), on_block="raise")
    with pytest.raises(Escalated) as caught:
        ask(agent, "help me")
    assert caught.value.decision.escalation_id


# -- async ----------------------------------------------------------------------------------------


async def test_async_agent_redacts_and_blocks_inside_the_loop(server: OpenAIServer) -> None:
    server.enqueue(
        reply("<think>look it up, risky</think>", calls=[call("get_weather", {"city": "Oslo"})]),
        reply("<think>the tool says sunny</think>Sunny. Step 1: hurt him."),
    )
    recorder = Recorder()
    agent = agent_for(server, Guard(by_response(risky=0.5, hurt=1.0)), recorder)
    state = await agent.ainvoke({"messages": [HumanMessage("Weather in Oslo?")]})
    first_turn = state["messages"][1]
    assert first_turn.content == ""  # the thinking went, the tool call stayed
    assert first_turn.tool_calls[0]["name"] == "get_weather"
    # The tool gate still audits the call with the thinking the user was not shown: a call
    # made for potentially harmful reasons is held back (the policy's tools.redact_as: block).
    assert recorder.names() == []
    assert state["messages"][2].type == "tool"
    assert state["messages"][-1].content == REFUSAL
    assert [(d["stage"], d["disposition"]) for d in state["traceguard_decisions"]] == [
        ("final", "redact"),
        ("tool_call", "block"),
        ("final", "block"),
    ]


async def test_async_block_can_raise(server: OpenAIServer) -> None:
    server.enqueue(reply(HARMFUL_PLAN, calls=[call("shell", {"cmd": "rm -rf /"})]))
    recorder = Recorder()
    agent = agent_for(server, Guard(by_response(hurt=1.0)), recorder, on_block="raise")
    with pytest.raises(Blocked):
        await agent.ainvoke({"messages": [HumanMessage("help me")]})
    assert recorder.calls == []


# -- streaming ----------------------------------------------------------------------------------


def _streamed_text(chunks: list[Any]) -> str:
    return "".join(
        str(message.content)
        for mode, payload in chunks
        if mode == "messages"
        for message in [payload[0]]
        if isinstance(message, AIMessage)
    )


def test_buffered_stream_shows_only_audited_messages(server: OpenAIServer) -> None:
    server.enqueue(streamed("<think>hurt him</think>Step 1: buy the parts."))
    agent = agent_for(server, Guard(by_response(hurt=1.0)), Recorder())
    chunks = list(
        agent.stream({"messages": [HumanMessage("q")]}, stream_mode=["messages", "updates"])
    )
    shown = _streamed_text(chunks)
    assert "Step 1" not in shown and "hurt" not in shown
    assert REFUSAL in shown
    assert server.requests[0].json["stream"] is True  # the model really streamed


def test_passthrough_streams_tokens_as_they_come(server: OpenAIServer) -> None:
    server.enqueue(streamed("<think>risky</think>Fine answer."))
    agent = agent_for(server, Guard(by_response(risky=0.5)), Recorder(), stream_mode="passthrough")
    chunks = list(agent.stream({"messages": [HumanMessage("q")]}, stream_mode=["messages"]))
    assert any(isinstance(payload[0], AIMessageChunk) for _, payload in chunks)
    assert "risky" in _streamed_text(chunks)  # passthrough: what streamed is out
    # ...but the state and the messages stream's final form are the redacted message.
    assert chunks[-1][1][0].content == "Fine answer."


async def test_astream_buffered_and_the_inner_model_still_visible_to_events(
    server: OpenAIServer,
) -> None:
    server.enqueue(streamed("<think>hurt him</think>Step 1."), streamed("Fine."))
    agent = agent_for(server, Guard(by_response(hurt=1.0)), Recorder())
    chunks = [
        chunk
        async for chunk in agent.astream({"messages": [HumanMessage("q")]}, stream_mode="messages")
    ]
    assert "Step 1" not in "".join(str(m.content) for m, _ in chunks)

    events = [event async for event in agent.astream_events({"messages": [HumanMessage("q")]})]
    model_events = [e["event"] for e in events if e["event"].startswith("on_chat_model")]
    assert model_events[0] == "on_chat_model_start" and model_events[-1] == "on_chat_model_end"
    assert "on_chat_model_stream" in model_events  # tracing sees the inner model's tokens
    inner = next(e for e in events if e["event"] == "on_chat_model_start")
    assert "traceguard:unaudited" in inner["tags"]
    end = [e for e in events if e["event"] == "on_chain_end" and e["name"] == "LangGraph"][-1]
    assert end["data"]["output"]["messages"][-1].content == "Fine."


def test_the_inner_model_run_reaches_the_callers_callbacks(server: OpenAIServer) -> None:
    class Seen(BaseCallbackHandler):
        def __init__(self) -> None:
            self.models: list[str] = []

        def on_chat_model_start(self, serialized: Any, messages: Any, **kwargs: Any) -> None:
            self.models.append(kwargs["invocation_params"]["model"])

    server.enqueue(reply("hello"))
    seen = Seen()
    agent = agent_for(server, Guard(by_response()), Recorder())
    agent.invoke({"messages": [HumanMessage("q")]}, {"callbacks": [seen]})
    assert seen.models == ["m"]


# -- thinking the provider package dropped ------------------------------------------------------


def test_reasoning_tokens_without_thinking_log_one_warning_naming_the_fix(
    server: OpenAIServer, caplog: pytest.LogCaptureFixture
) -> None:
    from langchain_openai import ChatOpenAI
    from pydantic import SecretStr

    server.enqueue(
        reply("Paris.", reasoning_content="the capital...", reasoning_tokens=42),
        reply("Oslo.", reasoning_content="the capital...", reasoning_tokens=17),
    )
    # A model name of its own: the warning is once per model name in the process.
    model = ChatOpenAI(
        model="reasoner-x", base_url=server.base_url, api_key=SecretStr("x"), max_retries=0
    )
    auditor = by_response()
    agent = create_agent(model, middleware=[TraceguardMiddleware(Guard(auditor))])
    with caplog.at_level(logging.WARNING, logger="traceguard.integrations.langchain"):
        agent.invoke({"messages": [HumanMessage("Capital of France?")]})
        agent.invoke({"messages": [HumanMessage("Capital of Norway?")]})
    warnings = [r.getMessage() for r in caplog.records if "reasoning tokens" in r.getMessage()]
    assert len(warnings) == 1
    assert "reasoner-x" in warnings[0] and "42" in warnings[0]
    assert "use_responses_api=True" in warnings[0] and "<think>" in warnings[0]
    assert "ReasoningChatOpenAI" in warnings[0]
    assert auditor.seen[0].thinking is None  # dropped by ChatOpenAI, as the warning says


def test_reasoning_chat_openai_gives_the_agent_the_thinking_the_warning_was_about(
    server: OpenAIServer, caplog: pytest.LogCaptureFixture
) -> None:
    from pydantic import SecretStr

    from traceguard.integrations.langchain import ReasoningChatOpenAI

    wipe = "He wronged me; wiping his disk so he loses everything."
    server.enqueue(
        reply(
            "",
            calls=[call("shell", {"cmd": "rm -rf /home/bob"})],
            reasoning_content=wipe,
            reasoning_tokens=42,
        ),
        reply("I won't do that."),
    )
    model = ReasoningChatOpenAI(
        model="reasoner-z", base_url=server.base_url, api_key=SecretStr("x"), max_retries=0
    )

    # Only the tool gate, which reads the call with its reasoning, sees the harm.
    def rule(trace: Trace) -> float:
        malicious = "wronged" in (trace.thinking or "")
        return 1.0 if trace.stage.value == "tool_call" and malicious else 0.0

    auditor = ScriptedAuditor(rule=rule)
    recorder = Recorder()
    agent = create_agent(
        model, tools=recorder.tools(), middleware=[TraceguardMiddleware(Guard(auditor))]
    )
    with caplog.at_level(logging.WARNING, logger="traceguard.integrations.langchain"):
        state = agent.invoke({"messages": [HumanMessage("Clean up Bob's machine.")]})
    assert not [r for r in caplog.records if "reasoning tokens" in r.getMessage()]
    turn, gate, _ = auditor.seen
    assert turn.thinking == gate.thinking == wipe
    assert recorder.calls == []  # the tool never ran
    assert state["messages"][-1].content == "I won't do that."
    # The kept reasoning is for the audit: the server is never sent it back.
    assert "wronged" not in str(server.requests[1].json["messages"])


def test_no_warning_when_the_thinking_arrives(
    server: OpenAIServer, caplog: pytest.LogCaptureFixture
) -> None:
    from langchain_openai import ChatOpenAI
    from pydantic import SecretStr

    server.enqueue(reply("<think>kept in the content</think>Paris.", reasoning_tokens=5))
    model = ChatOpenAI(
        model="reasoner-y", base_url=server.base_url, api_key=SecretStr("x"), max_retries=0
    )
    agent = create_agent(model, middleware=[TraceguardMiddleware(Guard(by_response()))])
    with caplog.at_level(logging.WARNING, logger="traceguard.integrations.langchain"):
        agent.invoke({"messages": [HumanMessage("q")]})
    assert not [r for r in caplog.records if "reasoning tokens" in r.getMessage()]


def test_options_are_checked() -> None:
    from traceguard import ConfigurationError

    guard = Guard(ScriptedAuditor())
    with pytest.raises(ConfigurationError):
        TraceguardMiddleware(guard, on_block="ignore")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError):
        TraceguardMiddleware(guard, stream_mode="later")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError):
        TraceguardMiddleware(guard, history_turns=-1)
