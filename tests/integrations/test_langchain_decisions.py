"""Decisions are visible on LangChain results, and a run whose usage reports reasoning tokens but
whose message carries no thinking says so once per model — on every LangChain path."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

pytest.importorskip("langchain_openai")

from _agent_support import call, chat_model, reply, streamed
from langchain_core.messages import AIMessage
from langchain_openai import ChatOpenAI
from pydantic import SecretStr

from traceguard import Guard, Policy, Redaction, Trace
from traceguard.integrations.langchain import TraceguardCallbackHandler, guard_runnable
from traceguard.testing import ScriptedAuditor
from traceguard.testing.openai_server import OpenAIServer


@pytest.fixture
def server() -> Iterator[OpenAIServer]:
    with OpenAIServer() as srv:
        yield srv
        assert srv.unexpected == []


def test_a_guarded_models_answer_carries_its_decision(server: OpenAIServer) -> None:
    server.enqueue(reply("<think>fine</think>Paris."), reply("<think>risky aside</think>Oslo."))
    auditor = ScriptedAuditor([0.0, 0.5, 0.0])  # the redacted answer is audited again: safe
    guarded = guard_runnable(chat_model(server), Guard(auditor))
    allowed = guarded.invoke("Capital of France?")
    assert allowed.content == "<think>fine</think>Paris."
    assert allowed.response_metadata["traceguard"]["action"] == "allow"
    assert allowed.response_metadata["finish_reason"] == "stop"  # the provider's keys stay
    redacted = guarded.invoke("Capital of Norway?")
    assert redacted.content == "Oslo."
    summary = redacted.response_metadata["traceguard"]
    assert (summary["disposition"], summary["risk"]) == ("redact", 0.5)
    assert "analysis" not in summary and "scripted" not in str(summary.get("reason"))


def test_a_buffered_stream_carries_the_decision_on_the_merged_message(
    server: OpenAIServer,
) -> None:
    server.enqueue(streamed("Hello there."))
    guarded = guard_runnable(chat_model(server), Guard(ScriptedAuditor([0.0])))
    chunks = list(guarded.stream("hi"))
    merged = chunks[0]
    for chunk in chunks[1:]:
        merged += chunk
    assert merged.content == "Hello there."
    assert merged.response_metadata["traceguard"]["action"] == "allow"


def test_a_redaction_that_replaces_the_answer_drops_its_tool_calls(server: OpenAIServer) -> None:
    # drop_thinking on an answer without thinking falls back to the refusal: the tool call the
    # refused answer asked for must go with it.
    server.enqueue(reply("On it.", calls=[call("shell", {"cmd": "rm -rf /"})]))
    policy = Policy(redaction=Redaction(strategy="drop_thinking"))
    guarded = guard_runnable(chat_model(server), Guard(ScriptedAuditor([0.5]), policy))
    answer = guarded.invoke("clean up")
    assert isinstance(answer, AIMessage)
    assert (answer.content, answer.tool_calls) == ("I can't help with that request.", [])


@pytest.mark.parametrize("path", ["handler", "guarded"])
def test_hidden_reasoning_is_reported_once_per_model(
    server: OpenAIServer, caplog: pytest.LogCaptureFixture, path: str
) -> None:
    server.enqueue(
        *[
            reply("Paris.", reasoning_content="the capital...", reasoning_tokens=64)
            for _ in range(2)
        ]
    )
    model = ChatOpenAI(
        model=f"hidden-reasoner-{path}",
        base_url=server.base_url,
        api_key=SecretStr("x"),
        max_retries=0,
    )
    auditor = ScriptedAuditor(rule=lambda trace: 0.0)
    with caplog.at_level(logging.WARNING, logger="traceguard.integrations.langchain"):
        for _ in range(2):
            if path == "handler":
                model.invoke("q", config={"callbacks": [TraceguardCallbackHandler(Guard(auditor))]})
            else:
                guard_runnable(model, Guard(auditor)).invoke("q")
    warnings = [r.getMessage() for r in caplog.records if "reasoning tokens" in r.getMessage()]
    assert len(warnings) == 1
    assert f"hidden-reasoner-{path}" in warnings[0] and "64 reasoning tokens" in warnings[0]
    assert all(isinstance(t, Trace) and t.thinking is None for t in auditor.seen)
