"""GuardedChatModel / guard_runnable: allow, redact and block on every entry point."""

from __future__ import annotations

import functools
import operator
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("langchain_core")

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    message_chunk_to_message,
)
from langchain_core.messages.tool import tool_call_chunk
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import RunnableLambda
from pydantic import ValidationError

from traceguard import Blocked, Escalated
from traceguard._guard import Guard
from traceguard._policy import Policy
from traceguard.integrations.langchain import GuardedChatModel, guard_runnable
from traceguard.testing import ScriptedAuditor, Step

REFUSE = Policy.model_validate({"redaction": {"strategy": "refuse"}})


class ScriptModel(BaseChatModel):
    """Answers each call with the next scripted chunk list; streams those very chunks."""

    script: list[list[AIMessageChunk]]

    @property
    def _llm_type(self) -> str:
        return "script"

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        merged = functools.reduce(operator.add, self.script.pop(0))
        return ChatResult(generations=[ChatGeneration(message=message_chunk_to_message(merged))])

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        for chunk in self.script.pop(0):
            yield ChatGenerationChunk(message=chunk)


def reasoned() -> list[AIMessageChunk]:
    """An answer whose thinking sits in all three places LangChain keeps it."""
    return [
        AIMessageChunk(content="", additional_kwargs={"reasoning_content": "kwarg plan. "}),
        AIMessageChunk(content=[{"type": "reasoning", "reasoning": "block plan", "index": 0}]),
        AIMessageChunk(content=[{"type": "text", "text": "<think>tag plan</think>", "index": 1}]),
        AIMessageChunk(content=[{"type": "text", "text": "The answer.", "index": 1}]),
    ]


def guarded(
    *scripts: list[AIMessageChunk],
    steps: list[Step | float],
    policy: Policy | None = None,
    **kw: Any,
) -> tuple[GuardedChatModel, ScriptedAuditor]:
    auditor = ScriptedAuditor(steps)
    model = guard_runnable(ScriptModel(script=list(scripts)), Guard(auditor, policy), **kw)
    return model, auditor


def assert_no_thinking(message: BaseMessage) -> None:
    assert "reasoning_content" not in message.additional_kwargs
    assert all(block["type"] != "reasoning" for block in message.content_blocks)
    assert "plan" not in str(message.content)


# -- allow and redact ---------------------------------------------------------------------------


def test_allow_returns_the_answer_unchanged() -> None:
    model, auditor = guarded(reasoned(), steps=[0])
    out = model.invoke("q")
    assert out.additional_kwargs["reasoning_content"] == "kwarg plan. "
    assert any(block["type"] == "reasoning" for block in out.content_blocks)
    assert auditor.seen[0].thinking == "kwarg plan.\n\nblock plan\n\ntag plan"
    assert auditor.seen[0].response == "The answer."


def test_redact_drops_thinking_from_every_place() -> None:
    model, _ = guarded(reasoned(), steps=[0.5, 0])  # the redaction, then its check
    out = model.invoke("q")
    assert_no_thinking(out)
    assert out.text == "The answer."


def test_redact_of_think_tags_in_a_string() -> None:
    model = guard_runnable(
        GenericFakeChatModel(messages=iter(["<think>secret</think>\nvisible"])),
        Guard(ScriptedAuditor([0.5, 0])),
    )
    assert model.invoke("q").content == "visible"


def test_refusal_replaces_the_answer_and_drops_tool_calls() -> None:
    call = tool_call_chunk(name="launch", args='{"target": "x"}', id="c", index=0)
    script = [AIMessageChunk(content="sure", tool_call_chunks=[call])]
    model, auditor = guarded(script, steps=[0.5], policy=REFUSE)
    out = model.invoke("q")
    assert out.content == REFUSE.redaction.refusal_message
    assert out.tool_calls == []
    assert auditor.seen[0].tool_calls[0].name == "launch"


def test_redacted_stream_is_one_clean_chunk_in_buffer_mode() -> None:
    call = tool_call_chunk(name="search", args='{"q": 1}', id="c", index=0)
    script = [*reasoned(), AIMessageChunk(content="", tool_call_chunks=[call])]
    model, _ = guarded(script, steps=[0.5, 0])
    chunks = list(model.stream("q"))
    content_chunks = [c for c in chunks if c.content or c.tool_call_chunks]
    assert len(content_chunks) == 1
    whole = functools.reduce(operator.add, chunks)
    assert_no_thinking(whole)
    assert whole.text == "The answer."
    assert [c["name"] for c in whole.tool_calls] == ["search"]


def test_allowed_stream_keeps_the_original_chunks() -> None:
    script = [AIMessageChunk(content=piece) for piece in ("a ", "b ", "c")]
    model, _ = guarded(script, steps=[0])
    assert [c.content for c in model.stream("q") if c.content] == ["a ", "b ", "c"]


# -- block, on every entry point ----------------------------------------------------------------


async def run_entry(model: GuardedChatModel, entry: str, received: list[Any]) -> None:
    if entry == "invoke":
        received.append(model.invoke("q"))
    elif entry == "ainvoke":
        received.append(await model.ainvoke("q"))
    elif entry == "batch":
        received.extend(model.batch(["q"]))
    elif entry == "abatch":
        received.extend(await model.abatch(["q"]))
    elif entry == "stream":
        received.extend(model.stream("q"))
    else:
        async for chunk in model.astream("q"):
            received.append(chunk)


ENTRIES = ["invoke", "ainvoke", "batch", "abatch", "stream", "astream"]


@pytest.mark.parametrize("entry", ENTRIES)
async def test_block_raises_and_releases_nothing(entry: str) -> None:
    model, _ = guarded([AIMessageChunk(content="harmful text")], steps=[1])
    received: list[Any] = []
    with pytest.raises(Blocked):
        await run_entry(model, entry, received)
    assert received == []


@pytest.mark.parametrize("entry", ENTRIES)
async def test_escalation_raises_escalated(entry: str) -> None:
    model, _ = guarded([AIMessageChunk(content="x")], steps=[Step(error="timeout")])
    with pytest.raises(Escalated):
        await run_entry(model, entry, [])


@pytest.mark.parametrize("entry", ENTRIES)
async def test_redact_applies_on_every_entry_point(entry: str) -> None:
    model, _ = guarded(reasoned(), steps=[0.5])
    received: list[Any] = []
    await run_entry(model, entry, received)
    whole = functools.reduce(operator.add, received) if "stream" in entry else received[0]
    assert_no_thinking(whole)


def test_guard_without_raise_on_block_still_blocks() -> None:
    auditor = ScriptedAuditor([1])
    model = guard_runnable(
        ScriptModel(script=[[AIMessageChunk(content="x")]]), Guard(auditor, raise_on_block=False)
    )
    with pytest.raises(Blocked):
        model.invoke("q")


# -- passthrough streams ------------------------------------------------------------------------


async def test_passthrough_yields_as_it_goes_then_raises() -> None:
    script = [AIMessageChunk(content=piece) for piece in ("one ", "two")]
    model, _ = guarded(script, list(script), steps=[1, 1], stream_mode="passthrough")
    received: list[str] = []
    with pytest.raises(Blocked):
        for chunk in model.stream("q"):
            received.append(str(chunk.content))
    assert "".join(received) == "one two"
    received.clear()
    with pytest.raises(Blocked):
        async for chunk in model.astream("q"):
            received.append(str(chunk.content))
    assert "".join(received) == "one two"


def test_passthrough_cannot_redact_and_says_so(caplog: pytest.LogCaptureFixture) -> None:
    model, _ = guarded(reasoned(), steps=[0.5], stream_mode="passthrough")
    whole = functools.reduce(operator.add, model.stream("q"))
    assert whole.additional_kwargs["reasoning_content"] == "kwarg plan. "
    assert "stream_mode='buffer'" in caplog.text


def test_stream_mode_is_validated() -> None:
    with pytest.raises(ValidationError):
        guard_runnable(ScriptModel(script=[]), Guard(ScriptedAuditor()), stream_mode="fast")  # type: ignore[arg-type]


# -- composition ----------------------------------------------------------------------------


def test_composes_in_a_chain_and_sees_the_prompt() -> None:
    model, auditor = guarded([AIMessageChunk(content="hi Ada")], steps=[0])
    prompt = ChatPromptTemplate.from_messages([("system", "be brief"), ("human", "greet {name}")])
    assert (prompt | model).invoke({"name": "Ada"}).content == "hi Ada"
    (trace,) = auditor.seen
    assert trace.query == "greet Ada"
    assert [(t.role, t.content) for t in trace.history] == [("system", "be brief")]


def test_bind_tools_keeps_the_guard_and_needs_an_inner_that_binds() -> None:
    model, _ = guarded(steps=[])
    with pytest.raises(NotImplementedError):
        model.bind_tools([])

    class Binding(GenericFakeChatModel):
        bound_tools: list[Any] = []

        def bind_tools(self, tools: Any, **kwargs: Any) -> Any:
            return self.bind(tools=list(tools), **kwargs)

    inner = Binding(messages=iter([AIMessage("ok")]))
    rebound = guard_runnable(inner, Guard(ScriptedAuditor([1]))).bind_tools(
        [{"name": "f", "description": "d", "parameters": {}}], tool_choice="any"
    )
    assert isinstance(rebound, GuardedChatModel)
    assert rebound.model.kwargs["tool_choice"] == "any"  # type: ignore[attr-defined]
    with pytest.raises(Blocked):
        rebound.invoke("q")


async def test_event_streams_never_see_unaudited_tokens() -> None:
    model, _ = guarded([AIMessageChunk(content=p) for p in ("leak ", "this")], steps=[1])
    # Inside a chain, LangChain hands the chain's callbacks to nested runs through a context
    # variable; the inner model must not inherit the event stream's handler from it.
    chain = RunnableLambda(lambda text: text) | model
    streamed: list[str] = []
    with pytest.raises(Blocked):
        async for event in chain.astream_events("q", version="v2"):
            if event["event"] == "on_chat_model_stream":
                streamed.append(str(event["data"]["chunk"].content))
    assert "".join(streamed) == ""
