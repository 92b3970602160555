"""Escalations inside a ``create_agent`` loop: the middleware pauses the graph with ``interrupt()``,
``Command(resume=...)`` continues it, and ``resume_reviewed`` delivers a reviewer's decision once.

Real langgraph (``InMemorySaver``), real ChatOpenAI on the loopback server, a real SQLite queue.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("langchain.agents")
pytest.importorskip("langchain_openai")

from _agent_support import REFUSAL, Recorder, call, guarded_agent, reply, streamed, tool_turns
from langchain_core.messages import AIMessage, HumanMessage
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.types import Command

from traceguard import Guard, Policy, ReviewOutcome, ReviewQueue, ToolPolicy, ToolRule, Trace
from traceguard.integrations.langgraph import INTERRUPT_TYPE, aresume_reviewed, resume_reviewed
from traceguard.testing import ScriptedAuditor
from traceguard.testing.openai_server import OpenAIServer

HELD_TURN = reply(
    "<think>a port scan of that host</think>Running the scan.",
    calls=[call("shell", {"cmd": "nmap 10.0.0.5"})],
)


@pytest.fixture
def server() -> Iterator[OpenAIServer]:
    with OpenAIServer() as srv:
        yield srv
        assert srv.unexpected == [], "the agent asked the model more often than scripted"


@pytest.fixture
def queue(tmp_path: Path) -> Iterator[ReviewQueue]:
    q = ReviewQueue(tmp_path / "reviews.sqlite")
    yield q
    q.close()


def scan_is_harmful(trace: Trace) -> float:
    """The model turn that plans the scan is harmful; everything else (the tool gate included,
    which the reviewer's approval does not bypass) is safe."""
    return 1.0 if trace.stage.value == "final" and "port scan" in (trace.thinking or "") else 0.0


def escalating_agent(
    server: OpenAIServer, recorder: Recorder, sinks: list[Any] | None = None, **guard: Any
) -> tuple[Any, ScriptedAuditor]:
    auditor = ScriptedAuditor(rule=scan_is_harmful)
    agent = guarded_agent(
        server,
        recorder,
        Guard(auditor, Policy(harmful="escalate"), sinks=sinks or [], **guard),
        checkpointer=InMemorySaver(),
    )
    return agent, auditor


def config(thread: str) -> dict[str, Any]:
    return {"configurable": {"thread_id": thread}}


def test_an_escalated_turn_pauses_and_approval_lets_the_held_output_go_on(
    server: OpenAIServer,
) -> None:
    server.enqueue(HELD_TURN, reply("The scan shows port 22 open."))
    recorder = Recorder()
    agent, auditor = escalating_agent(server, recorder)
    paused = agent.invoke({"messages": [HumanMessage("Scan 10.0.0.5")]}, config("lab-1"))

    (pending,) = paused["__interrupt__"]
    value = pending.value
    assert value["type"] == INTERRUPT_TYPE
    assert (value["risk"], value["held_as"]) == (1.0, "block")
    assert "port scan" not in str(value)  # the interrupt carries no audited text
    placeholder = paused["messages"][-1]
    assert (placeholder.content, placeholder.tool_calls) == (REFUSAL, [])
    assert placeholder.response_metadata["traceguard"]["awaiting_review"] is True
    assert recorder.calls == []  # nothing the held turn asked for ran
    assert len(server.requests) == 1

    done = agent.invoke(Command(resume="approved"), config("lab-1"))
    assert recorder.names() == ["shell"]  # the held tool call went on, once
    assert [m.type for m in done["messages"]] == ["human", "ai", "tool", "ai"]
    released = done["messages"][1]
    assert released.tool_calls[0]["args"] == {"cmd": "nmap 10.0.0.5"}
    assert released.content == "<think>a port scan of that host</think>Running the scan."
    assert released.response_metadata["traceguard"]["review"] == "approved"
    assert done["messages"][-1].content == "The scan shows port 22 open."
    reviews = [(d["action"], d["disposition"], d["review"]) for d in done["traceguard_decisions"]]
    assert reviews[:2] == [("escalate", "block", None), ("escalate", "allow", "approved")]
    assert len(model_turns := [t for t in auditor.seen if t.stage.value == "final"]) == 2
    assert model_turns[0].metadata["thread_id"] == "lab-1"


def test_rejection_ends_the_run_with_the_refusal(server: OpenAIServer) -> None:
    server.enqueue(HELD_TURN)
    recorder = Recorder()
    agent, _ = escalating_agent(server, recorder)
    agent.invoke({"messages": [HumanMessage("Scan 10.0.0.5")]}, config("lab-2"))
    (pending,) = agent.get_state(config("lab-2")).interrupts
    outcome = ReviewOutcome(
        escalation_id=pending.value["escalation_id"], resolution="rejected", reviewer="ana"
    )
    done = agent.invoke(Command(resume={pending.id: outcome.to_dict()}), config("lab-2"))
    assert recorder.calls == []
    assert [m.type for m in done["messages"]] == ["human", "ai"]
    final = done["messages"][-1]
    assert (final.content, final.tool_calls) == (REFUSAL, [])
    assert final.response_metadata["traceguard"]["review"] == "rejected"
    assert len(server.requests) == 1  # no further model call


def test_a_streamed_resume_shows_the_approved_message(server: OpenAIServer) -> None:
    server.enqueue(HELD_TURN, streamed("Port 22 is open."))
    recorder = Recorder()
    agent, _ = escalating_agent(server, recorder)
    agent.invoke({"messages": [HumanMessage("Scan 10.0.0.5")]}, config("lab-3"))
    shown = [
        message
        for message, _ in agent.stream(
            Command(resume="approved"), config("lab-3"), stream_mode="messages"
        )
    ]
    ai = [m for m in shown if isinstance(m, AIMessage)]
    assert ai[0].tool_calls[0]["name"] == "shell"  # the released turn reaches the stream
    assert "".join(str(m.content) for m in ai[1:]) == "Port 22 is open."


async def test_async_agent_pauses_and_resumes(server: OpenAIServer) -> None:
    server.enqueue(HELD_TURN, reply("Done."))
    recorder = Recorder()
    agent, _ = escalating_agent(server, recorder)
    paused = await agent.ainvoke({"messages": [HumanMessage("Scan 10.0.0.5")]}, config("lab-4"))
    assert paused["__interrupt__"]
    done = await agent.ainvoke(Command(resume="approved"), config("lab-4"))
    assert recorder.names() == ["shell"]
    assert done["messages"][-1].content == "Done."


def test_a_new_input_instead_of_a_resume_abandons_the_pause(server: OpenAIServer) -> None:
    server.enqueue(HELD_TURN, reply("Hello!"))
    recorder = Recorder()
    agent, _ = escalating_agent(server, recorder)
    agent.invoke({"messages": [HumanMessage("Scan 10.0.0.5")]}, config("lab-5"))
    state = agent.invoke({"messages": [HumanMessage("Never mind, say hello.")]}, config("lab-5"))
    assert "__interrupt__" not in state
    assert state["messages"][-1].content == "Hello!"
    assert recorder.calls == []  # the held turn's call never ran


def test_resume_reviewed_delivers_the_reviewers_decision_exactly_once(
    server: OpenAIServer, queue: ReviewQueue
) -> None:
    server.enqueue(HELD_TURN, reply("Port 22 is open."))
    recorder = Recorder()
    agent, _ = escalating_agent(server, recorder, sinks=[queue])
    paused = agent.invoke({"messages": [HumanMessage("Scan 10.0.0.5")]}, config("lab-6"))
    escalation_id = paused["__interrupt__"][0].value["escalation_id"]

    assert resume_reviewed(agent, queue) == []  # nobody decided yet: nothing resumes
    item = queue.get(escalation_id)
    assert (item.integration, item.thread_id, item.model) == ("langgraph", "lab-6", "m")
    assert item.content is not None and item.content.thinking == "a port scan of that host"
    queue.resolve(escalation_id, "approved", reviewer="ana", note="our own lab host")

    (resumed,) = resume_reviewed(agent, queue)
    assert (resumed.thread_id, resumed.resolution, resumed.resumed) == ("lab-6", "approved", True)
    assert resumed.result["messages"][-1].content == "Port 22 is open."
    assert recorder.names() == ["shell"]
    assert resume_reviewed(agent, queue) == []  # delivered once
    assert recorder.names() == ["shell"]


async def test_aresume_reviewed_delivers_a_rejection(
    server: OpenAIServer, queue: ReviewQueue
) -> None:
    server.enqueue(HELD_TURN)
    recorder = Recorder()
    agent, _ = escalating_agent(server, recorder, sinks=[queue])
    paused = await agent.ainvoke({"messages": [HumanMessage("Scan 10.0.0.5")]}, config("lab-7"))
    queue.resolve(paused["__interrupt__"][0].value["escalation_id"], "rejected", reviewer="ana")
    (resumed,) = await aresume_reviewed(agent, queue)
    assert resumed.result["messages"][-1].content == REFUSAL
    assert recorder.calls == []
    assert await aresume_reviewed(agent, queue) == []


def test_a_resume_value_that_disagrees_with_the_queue_loses(
    server: OpenAIServer, queue: ReviewQueue
) -> None:
    server.enqueue(HELD_TURN)
    recorder = Recorder()
    agent, _ = escalating_agent(server, recorder, sinks=[queue])
    paused = agent.invoke({"messages": [HumanMessage("Scan 10.0.0.5")]}, config("lab-8"))
    queue.resolve(paused["__interrupt__"][0].value["escalation_id"], "rejected", reviewer="ana")
    done = agent.invoke(Command(resume="approved"), config("lab-8"))
    assert done["messages"][-1].content == REFUSAL
    assert recorder.calls == []


def test_an_escalated_tool_call_pauses_and_runs_only_when_approved(
    server: OpenAIServer, queue: ReviewQueue
) -> None:
    server.enqueue(
        reply("", calls=[call("send_payment", {"to": "acct-1", "amount": 40})]),
        reply("Paid."),
    )
    recorder = Recorder()
    policy = Policy(tools=ToolPolicy(rules=(ToolRule(tool="send_payment", action="escalate"),)))
    agent = guarded_agent(
        server,
        recorder,
        Guard(ScriptedAuditor(rule=lambda t: 0.0), policy, sinks=[queue]),
        checkpointer=InMemorySaver(),
    )
    paused = agent.invoke({"messages": [HumanMessage("Pay the power bill")]}, config("pay-1"))
    value = paused["__interrupt__"][0].value
    assert value["type"] == INTERRUPT_TYPE
    assert recorder.calls == []
    item = queue.get(value["escalation_id"])
    assert item.content is not None and "send_payment" in str(item.content.tool_calls)
    queue.resolve(value["escalation_id"], "approved", reviewer="ana")
    (resumed,) = resume_reviewed(agent, queue)
    assert recorder.names() == ["send_payment"]
    assert resumed.result["messages"][-1].content == "Paid."


def test_a_rejected_tool_call_becomes_the_policys_message(server: OpenAIServer) -> None:
    server.enqueue(
        reply("", calls=[call("send_payment", {"to": "acct-1", "amount": 40})]),
        reply("I could not pay it."),
    )
    recorder = Recorder()
    policy = Policy(tools=ToolPolicy(rules=(ToolRule(tool="send_payment", action="escalate"),)))
    agent = guarded_agent(
        server,
        recorder,
        Guard(ScriptedAuditor(rule=lambda t: 0.0), policy),
        checkpointer=InMemorySaver(),
    )
    agent.invoke({"messages": [HumanMessage("Pay the power bill")]}, config("pay-2"))
    done = agent.invoke(Command(resume="rejected"), config("pay-2"))
    assert recorder.calls == []
    tool_result = done["messages"][2]
    assert "send_payment was not run" in str(tool_result.content)
    assert "safety policy blocked it" in str(tool_result.content)
    assert done["messages"][-1].content == "I could not pay it."


def test_approving_one_call_of_a_turn_never_runs_its_sibling_again(
    server: OpenAIServer, queue: ReviewQueue
) -> None:
    server.enqueue(
        reply(
            "",
            calls=[
                call("send_payment", {"to": "acct-1", "amount": 40}, "c1"),
                call("get_weather", {"city": "Oslo"}, "c2"),
            ],
        ),
        reply("Paid; sunny in Oslo."),
    )
    recorder = Recorder()
    policy = Policy(tools=ToolPolicy(rules=(ToolRule(tool="send_payment", action="escalate"),)))
    auditor = ScriptedAuditor(rule=lambda t: 0.0)
    guard = Guard(auditor, policy, sinks=[queue])
    agent = guarded_agent(server, recorder, guard, checkpointer=InMemorySaver())
    paused = agent.invoke({"messages": [HumanMessage("Pay, then the weather")]}, config("pay-3"))
    assert recorder.names() == ["get_weather"]  # the allowed sibling ran; the payment waits
    queue.resolve(paused["__interrupt__"][0].value["escalation_id"], "approved", reviewer="ana")
    (resumed,) = resume_reviewed(agent, queue)
    assert sorted(recorder.names()) == ["get_weather", "send_payment"]  # each exactly once
    assert resumed.result["messages"][-1].content == "Paid; sunny in Oslo."
    # The resumed gate took the recorded verdict from the queue: two calls, two audits.
    assert len(tool_turns(auditor.seen)) == 2


async def test_an_async_agent_resumes_an_escalated_call_under_astream(
    server: OpenAIServer,
) -> None:
    server.enqueue(
        reply("", calls=[call("send_payment", {"to": "acct-1", "amount": 40})]), streamed("Paid.")
    )
    recorder = Recorder()
    policy = Policy(tools=ToolPolicy(rules=(ToolRule(tool="send_payment", action="escalate"),)))
    agent = guarded_agent(
        server,
        recorder,
        Guard(ScriptedAuditor(rule=lambda t: 0.0), policy),
        checkpointer=InMemorySaver(),
    )
    paused = await agent.ainvoke({"messages": [HumanMessage("Pay the bill")]}, config("pay-4"))
    assert paused["__interrupt__"] and recorder.calls == []
    shown = [
        message.content
        async for message, _ in agent.astream(
            Command(resume="approved"), config("pay-4"), stream_mode="messages"
        )
    ]
    assert recorder.names() == ["send_payment"]
    assert "Paid." in "".join(str(text) for text in shown)
