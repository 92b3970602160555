"""TraceguardMiddleware on what a turn carries: the query's images, structured output, a
response whose harm a thinking-only redaction would leave in place, and a block raised out of
the streams. Real ``create_agent`` loops, ChatOpenAI on the loopback server."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("langchain.agents")
pytest.importorskip("langchain_openai")

from _agent_support import REFUSAL, Recorder, call, chat_model, guarded_agent, reply, streamed
from langchain.agents import create_agent
from langchain.agents.structured_output import ToolStrategy
from langchain_core.messages import HumanMessage
from pydantic import BaseModel

from traceguard import Blocked, Guard, Trace
from traceguard.integrations.langchain import TraceguardMiddleware
from traceguard.testing import ScriptedAuditor
from traceguard.testing.openai_server import OpenAIServer

# A concrete procedure in the answer itself (placeholder words stand for the real steps).
PROCEDURE = "Step 1: fill the pipe with [POWDER]. Step 2: cap both ends and add [FUSE]."


@pytest.fixture
def server() -> Iterator[OpenAIServer]:
    with OpenAIServer() as srv:
        yield srv
        assert srv.unexpected == [], "the agent asked the model more often than scripted"


def png_data_uri() -> str:
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 30, 30)).save(out, format="PNG")
    return "data:image/png;base64," + base64.b64encode(out.getvalue()).decode()


def test_the_query_and_its_image_reach_the_auditor(server: OpenAIServer) -> None:
    server.enqueue(reply("A red square."))
    auditor = ScriptedAuditor(rule=lambda t: 0.0)
    agent = guarded_agent(server, Recorder(), Guard(auditor))
    question = HumanMessage(
        content=[
            {"type": "text", "text": "What is in this picture?"},
            {"type": "image_url", "image_url": {"url": png_data_uri()}},
        ]
    )
    agent.invoke({"messages": [question]})
    (trace,) = auditor.seen
    assert trace.query == "What is in this picture?"
    (image,) = trace.images
    assert image.kind == "data_uri" and image.mime == "image/png"
    # The model got the picture too: the guard reads the request, it does not strip it.
    sent = server.requests[0].json["messages"][0]["content"]
    assert [part["type"] for part in sent] == ["text", "image_url"]


def response_carries_the_procedure(trace: Trace) -> float:
    """Potentially harmful whenever the procedure shows, thinking or not (what the redaction
    check asks about the response alone)."""
    return 0.5 if "Step 1" in trace.response_with_tools else 0.0


def test_a_redaction_that_would_keep_a_harmful_response_replaces_it(server: OpenAIServer) -> None:
    server.enqueue(
        reply(f"<think>they asked how; listing it</think>{PROCEDURE}", calls=[call("shell", {})])
    )
    recorder = Recorder()
    auditor = ScriptedAuditor(rule=response_carries_the_procedure)
    agent = guarded_agent(server, recorder, Guard(auditor))
    state = agent.invoke({"messages": [HumanMessage("How do I make one?")]})

    final = state["messages"][-1]
    assert (final.content, final.tool_calls) == (REFUSAL, [])
    assert "Step 1" not in str(state["messages"]) and "listing it" not in str(state["messages"])
    assert recorder.calls == []
    turn, check = auditor.seen  # the turn, then the redacted output audited again
    assert turn.thinking == "they asked how; listing it"
    assert (check.thinking, check.response) == (None, PROCEDURE)
    (summary,) = state["traceguard_decisions"]
    assert summary["disposition"] == "redact"
    assert "redaction check" in summary["reason"]


def test_a_safe_response_keeps_the_thinking_only_redaction(server: OpenAIServer) -> None:
    server.enqueue(reply("<think>Step 1 of a risky aside</think>Here is the weather."))
    auditor = ScriptedAuditor(rule=lambda t: 0.5 if "risky" in (t.thinking or "") else 0.0)
    agent = guarded_agent(server, Recorder(), Guard(auditor))
    state = agent.invoke({"messages": [HumanMessage("q")]})
    assert state["messages"][-1].content == "Here is the weather."
    assert len(auditor.seen) == 2  # the turn and its check


class Plan(BaseModel):
    steps: str


def test_a_blocked_turn_leaves_no_structured_response(server: OpenAIServer) -> None:
    # ToolStrategy: the structured answer is a tool call, audited with the turn.
    server.enqueue(reply("", calls=[call("Plan", {"steps": PROCEDURE})]))
    auditor = ScriptedAuditor(rule=lambda t: 1.0 if "Step 1" in t.response_with_tools else 0.0)
    agent = create_agent(
        chat_model(server),
        tools=[],
        response_format=ToolStrategy(Plan),
        middleware=[TraceguardMiddleware(Guard(auditor))],
    )
    state = agent.invoke({"messages": [HumanMessage("Plan it.")]})
    assert state.get("structured_response") is None
    assert [m.type for m in state["messages"]] == ["human", "ai"]
    assert state["messages"][-1].content == REFUSAL
    assert "Step 1" not in str(state)


def test_an_allowed_structured_response_is_returned(server: OpenAIServer) -> None:
    server.enqueue(reply("", calls=[call("Plan", {"steps": "water the plants"})]))
    agent = create_agent(
        chat_model(server),
        tools=[],
        response_format=ToolStrategy(Plan),
        middleware=[TraceguardMiddleware(Guard(ScriptedAuditor(rule=lambda t: 0.0)))],
    )
    state = agent.invoke({"messages": [HumanMessage("Plan it.")]})
    assert state["structured_response"] == Plan(steps="water the plants")


def test_on_block_raise_raises_out_of_stream(server: OpenAIServer) -> None:
    server.enqueue(streamed(f"<think>hurt him</think>{PROCEDURE}"))
    recorder = Recorder()
    auditor = ScriptedAuditor(rule=lambda t: 1.0 if "hurt" in (t.thinking or "") else 0.0)
    agent = guarded_agent(server, recorder, Guard(auditor), on_block="raise")
    shown: list[Any] = []
    with pytest.raises(Blocked):
        for chunk, _ in agent.stream({"messages": [HumanMessage("q")]}, stream_mode="messages"):
            shown.append(chunk.content)
    assert "Step 1" not in str(shown)  # buffer mode: nothing of the turn was streamed


async def test_on_block_raise_raises_out_of_astream_events(server: OpenAIServer) -> None:
    server.enqueue(streamed(f"<think>hurt him</think>{PROCEDURE}"))
    auditor = ScriptedAuditor(rule=lambda t: 1.0 if "hurt" in (t.thinking or "") else 0.0)
    agent = guarded_agent(server, Recorder(), Guard(auditor), on_block="raise")
    outputs: list[Any] = []
    with pytest.raises(Blocked):
        async for event in agent.astream_events(
            {"messages": [HumanMessage("q")]}, exclude_tags=["traceguard:unaudited"]
        ):
            if event["event"] in ("on_chat_model_stream", "on_chain_stream"):
                outputs.append(event["data"])
    assert "Step 1" not in str(outputs)  # the raw tokens are the excluded inner run's
