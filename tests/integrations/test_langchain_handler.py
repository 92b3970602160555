"""TraceguardCallbackHandler / AsyncTraceguardCallbackHandler with real langchain-core models."""

from __future__ import annotations

import asyncio
import base64
import functools
import operator
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("langchain_core")

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.language_models.fake import FakeListLLM
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    HumanMessage,
    SystemMessage,
    message_chunk_to_message,
)
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult, LLMResult
from pydantic import Field

from traceguard import Blocked, Escalated, Trace
from traceguard._guard import Guard
from traceguard._policy import Policy
from traceguard._sinks import AuditRecord, Sink
from traceguard.integrations.langchain import (
    AsyncTraceguardCallbackHandler,
    TraceguardCallbackHandler,
)
from traceguard.testing import ScriptedAuditor, Step

PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\0" * 16).decode()


class ListSink(Sink):
    """Keeps every record in memory."""

    def __init__(self) -> None:
        self.records: list[AuditRecord] = []

    def emit(self, record: AuditRecord) -> None:
        self.records.append(record)


class ScriptModel(BaseChatModel):
    """Answers each call with the next scripted chunk list; streams those very chunks."""

    script: list[list[AIMessageChunk]]
    seen: list[list[BaseMessage]] = Field(default_factory=list)

    @property
    def _llm_type(self) -> str:
        return "script"

    def _next(self, messages: list[BaseMessage]) -> list[AIMessageChunk]:
        self.seen.append(messages)
        return self.script.pop(0)

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        merged = functools.reduce(operator.add, self._next(messages))
        return ChatResult(generations=[ChatGeneration(message=message_chunk_to_message(merged))])

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        for chunk in self._next(messages):
            yield ChatGenerationChunk(message=chunk)


def answer(*pieces: str, **kwargs: Any) -> list[AIMessageChunk]:
    """A scripted answer: text pieces, then one chunk with any extra fields."""
    chunks = [AIMessageChunk(content=piece) for piece in pieces]
    if kwargs:
        chunks.append(AIMessageChunk(content="", **kwargs))
    return chunks


def fake(*messages: AIMessage | str) -> GenericFakeChatModel:
    return GenericFakeChatModel(messages=iter(messages))


def make(
    steps: list[Step | float] | None = None, **policy: Any
) -> tuple[ScriptedAuditor, ListSink, Guard]:
    auditor = ScriptedAuditor(steps or [])
    sink = ListSink()
    return auditor, sink, Guard(auditor, Policy(**policy), sinks=[sink])


# -- block really stops the run, on every entry point -----------------------------------------


def test_handler_sets_the_flags_langchain_needs_to_propagate() -> None:
    _, _, guard = make()
    for handler in (TraceguardCallbackHandler(guard), AsyncTraceguardCallbackHandler(guard)):
        assert handler.raise_error is True
        assert handler.run_inline is True


def test_blocked_invoke_raises_and_allowed_invoke_returns() -> None:
    auditor, sink, guard = make([0, 1])
    handler = TraceguardCallbackHandler(guard)
    model = fake("fine", "bad")
    assert model.invoke("hi", config={"callbacks": [handler]}).content == "fine"
    with pytest.raises(Blocked) as info:
        model.invoke("hi", config={"callbacks": [handler]})
    assert "harmful" in str(info.value)
    assert [r.decision.action.value for r in sink.records] == ["allow", "block"]
    assert handler.active_runs == 0


@pytest.mark.parametrize("handler_cls", [TraceguardCallbackHandler, AsyncTraceguardCallbackHandler])
async def test_blocked_ainvoke_raises(handler_cls: type[Any]) -> None:
    _, _, guard = make([1])
    handler = handler_cls(guard)
    with pytest.raises(Blocked):
        await fake("bad").ainvoke("hi", config={"callbacks": [handler]})
    assert handler.active_runs == 0


def test_blocked_batch_raises() -> None:
    auditor = ScriptedAuditor(rule=lambda t: 1.0 if "bad" in t.response else 0.0)
    handler = TraceguardCallbackHandler(Guard(auditor))
    model = ScriptModel(script=[answer("good"), answer("bad")])
    with pytest.raises(Blocked):
        model.batch(["a", "b"], config={"callbacks": [handler]})
    assert len(auditor.seen) == 2
    assert handler.active_runs == 0


async def test_blocked_abatch_raises() -> None:
    auditor = ScriptedAuditor(rule=lambda t: 1.0 if "bad" in t.response else 0.0)
    handler = AsyncTraceguardCallbackHandler(Guard(auditor))
    model = ScriptModel(script=[answer("good"), answer("bad")])
    with pytest.raises(Blocked):
        await model.abatch(["a", "b"], config={"callbacks": [handler]})


def test_blocked_stream_raises_at_the_end_after_accumulating_tokens() -> None:
    auditor, _, guard = make([1])
    handler = TraceguardCallbackHandler(guard)
    model = ScriptModel(script=[answer("<thi", "nk>plan</th", "ink> do", " it")])
    received: list[str] = []
    with pytest.raises(Blocked):
        for chunk in model.stream("hi", config={"callbacks": [handler]}):
            received.append(str(chunk.content))
    # Callbacks cannot hold chunks back: they were shown, and the run then fails.
    assert "".join(received) == "<think>plan</think> do it"
    assert auditor.seen[0].thinking == "plan"
    assert auditor.seen[0].response == "do it"
    assert handler.active_runs == 0


async def test_blocked_astream_raises() -> None:
    auditor, _, guard = make([1])
    handler = AsyncTraceguardCallbackHandler(guard)
    model = ScriptModel(
        script=[answer("an", "swer", additional_kwargs={"reasoning_content": "secret plan"})]
    )
    with pytest.raises(Blocked):
        async for _ in model.astream("hi", config={"callbacks": [handler]}):
            pass
    assert auditor.seen[0].thinking == "secret plan"
    assert auditor.seen[0].response == "answer"


def test_handler_blocks_even_when_the_guard_does_not_raise() -> None:
    auditor = ScriptedAuditor([1])
    handler = TraceguardCallbackHandler(Guard(auditor, raise_on_block=False))
    with pytest.raises(Blocked):
        fake("bad").invoke("hi", config={"callbacks": [handler]})


def test_escalation_raises_escalated_and_reaches_the_sinks() -> None:
    auditor, sink, guard = make([Step(error="auditor down")])
    handler = TraceguardCallbackHandler(guard)
    with pytest.raises(Escalated):
        fake("answer").invoke("hi", config={"callbacks": [handler]})
    (record,) = sink.records
    assert record.decision.action.value == "escalate"
    assert record.verdict.status.value == "auditor_error"


def test_unparseable_audit_never_passes_as_safe() -> None:
    _, _, guard = make([Step(unparseable='"Judgment": 0 ... garbled')])
    with pytest.raises(Escalated):
        fake("answer").invoke("hi", config={"callbacks": [TraceguardCallbackHandler(guard)]})


# -- redaction, which a callback cannot apply -------------------------------------------------


def test_redact_raises_by_default_and_passes_with_on_redact_allow(
    caplog: pytest.LogCaptureFixture,
) -> None:
    reasoned = AIMessage(content="ok", additional_kwargs={"reasoning_content": "risky plan"})
    _, _, guard = make([0.5, 0, 0.5, 0])  # each redaction, then its check
    with pytest.raises(Blocked) as info:
        fake(reasoned).invoke("hi", config={"callbacks": [TraceguardCallbackHandler(guard)]})
    assert info.value.decision.action.value == "redact"
    lenient = TraceguardCallbackHandler(guard, on_redact="allow")
    assert fake(reasoned).invoke("hi", config={"callbacks": [lenient]}).content == "ok"
    assert "cannot apply" in caplog.text


def test_redact_without_thinking_to_drop_stops_the_run() -> None:
    # drop_thinking on an answer without thinking would change nothing; the policy then replaces
    # the response with the refusal, which a callback cannot do, so the run is stopped.
    _, _, guard = make([0.5])
    handler = TraceguardCallbackHandler(guard)
    with pytest.raises(Blocked, match="no thinking to drop"):
        fake("plain").invoke("hi", config={"callbacks": [handler]})


def test_on_redact_is_validated() -> None:
    _, _, guard = make()
    with pytest.raises(ValueError, match="on_redact"):
        TraceguardCallbackHandler(guard, on_redact="maybe")  # type: ignore[arg-type]


# -- what the auditor sees ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("message", "thinking", "response"),
    [
        (
            AIMessage(content="4", additional_kwargs={"reasoning_content": "add 2 and 2"}),
            "add 2 and 2",
            "4",
        ),
        (
            AIMessage(
                content=[
                    {"type": "reasoning", "reasoning": "add 2 and 2"},
                    {"type": "text", "text": "4"},
                ]
            ),
            "add 2 and 2",
            "4",
        ),
        (AIMessage(content="<think>add 2 and 2</think>\n4"), "add 2 and 2", "4"),
        (AIMessage(content="4"), None, "4"),
    ],
    ids=["reasoning_content", "reasoning-block", "think-tags", "none"],
)
def test_thinking_in_each_form(message: AIMessage, thinking: str | None, response: str) -> None:
    auditor, _, guard = make([0])
    fake(message).invoke("2+2?", config={"callbacks": [TraceguardCallbackHandler(guard)]})
    (trace,) = auditor.seen
    assert (trace.query, trace.thinking, trace.response) == ("2+2?", thinking, response)


def test_images_in_each_form_and_history() -> None:
    auditor, _, guard = make([0])
    url = "https://example.test/cat.png"
    earlier = HumanMessage(
        content=[{"type": "text", "text": "first"}, {"type": "image_url", "image_url": url}]
    )
    question = HumanMessage(
        content=[
            {"type": "text", "text": "what is in these?"},
            {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
            {"type": "image_url", "image_url": {"url": url}},
            {"type": "image", "base64": PNG, "mime_type": "image/png"},
            {"type": "image", "url": url},
            {"type": "image", "source_type": "base64", "data": PNG, "mime_type": "image/png"},
        ]
    )
    messages = [SystemMessage("be nice"), earlier, AIMessage("a cat"), question]
    fake("cats").invoke(messages, config={"callbacks": [TraceguardCallbackHandler(guard)]})
    (trace,) = auditor.seen
    assert trace.query == "what is in these?"
    assert [image.kind for image in trace.images] == ["data_uri", "url"] * 2 + ["data_uri"]
    assert trace.images[0] == trace.images[2] == trace.images[4]  # same bytes, same identity
    assert [(t.role, t.content) for t in trace.history] == [
        ("system", "be nice"),
        ("user", "first"),
        ("assistant", "a cat"),
    ]
    assert trace.history[1].images[0].identity() == f"url:{url}"
    assert "base64" not in repr(trace.summary())


def test_tool_calls_are_audited() -> None:
    auditor, _, guard = make([0])
    call = {"name": "search", "args": {"q": "weather"}, "id": "c1"}
    fake(AIMessage(content="", tool_calls=[call])).invoke(
        "weather?", config={"callbacks": [TraceguardCallbackHandler(guard)]}
    )
    (trace,) = auditor.seen
    assert [(c.name, c.arguments, c.id) for c in trace.tool_calls] == [
        ("search", '{"q": "weather"}', "c1")
    ]
    assert "[tool call] search" in trace.response_with_tools


def test_streamed_reasoning_blocks_and_tool_calls_accumulate() -> None:
    auditor, _, guard = make([0])
    chunks = [
        AIMessageChunk(content=[{"type": "reasoning", "reasoning": "look ", "index": 0}]),
        AIMessageChunk(content=[{"type": "reasoning", "reasoning": "it up", "index": 0}]),
        AIMessageChunk(content=[{"type": "text", "text": "calling", "index": 1}]),
        AIMessageChunk(
            content="",
            tool_call_chunks=[{"name": "search", "args": '{"q": 1}', "id": "c", "index": 0}],
        ),
    ]
    model = ScriptModel(script=[chunks])
    list(model.stream("q", config={"callbacks": [TraceguardCallbackHandler(guard)]}))
    (trace,) = auditor.seen
    assert trace.thinking == "look it up"
    assert trace.response == "calling"
    assert [c.name for c in trace.tool_calls] == ["search"]


def test_streamed_deltas_are_used_when_the_result_has_no_generation() -> None:
    # Driven by hand: LangChain always ends a run with its merged result, but a handler must not
    # audit nothing when a provider ends with an empty one.
    auditor, _, guard = make([0])
    handler = TraceguardCallbackHandler(guard)
    run = uuid.uuid4()
    handler.on_chat_model_start({}, [[HumanMessage("q")]], run_id=run)
    for piece in ("<think>hm", "</think>", "yes"):
        chunk = ChatGenerationChunk(message=AIMessageChunk(content=piece))
        handler.on_llm_new_token(piece, chunk=chunk, run_id=run)
    handler.on_llm_end(LLMResult(generations=[]), run_id=run)
    assert (auditor.seen[0].thinking, auditor.seen[0].response) == ("hm", "yes")
    assert handler.active_runs == 0


def test_concurrent_runs_never_mix() -> None:
    def rule(trace: Trace) -> float:
        assert trace.response == trace.query.upper(), trace
        return 0.0

    auditor = ScriptedAuditor(rule=rule)
    handler = AsyncTraceguardCallbackHandler(Guard(auditor))

    class Echo(GenericFakeChatModel):
        async def _agenerate(self, messages: list[BaseMessage], *a: Any, **k: Any) -> ChatResult:
            await asyncio.sleep(0.01)  # interleave the runs
            text = str(messages[-1].content).upper()
            return ChatResult(generations=[ChatGeneration(message=AIMessage(text))])

    model = Echo(messages=iter(()))
    queries = [f"query {i}" for i in range(8)]
    inputs: list[LanguageModelInput] = list(queries)
    outs = asyncio.run(model.abatch(inputs, config={"callbacks": [handler]}))
    assert [o.content for o in outs] == [q.upper() for q in queries]
    assert len(auditor.seen) == 8
    assert handler.active_runs == 0


def test_state_is_cleared_when_the_model_fails() -> None:
    class Broken(GenericFakeChatModel):
        def _generate(self, *args: Any, **kwargs: Any) -> ChatResult:
            raise RuntimeError("provider down")

    auditor, _, guard = make()
    handler = TraceguardCallbackHandler(guard)
    with pytest.raises(RuntimeError, match="provider down"):
        Broken(messages=iter(())).invoke("hi", config={"callbacks": [handler]})
    assert handler.active_runs == 0
    assert auditor.seen == []  # nothing was produced, so nothing to audit


def test_plain_llm_runs_are_audited_too() -> None:
    auditor, _, guard = make([0, 1])
    handler = TraceguardCallbackHandler(guard)
    llm = FakeListLLM(responses=["<think>hm</think>fine", "bad"])
    assert llm.invoke("prompt", config={"callbacks": [handler]}) == "<think>hm</think>fine"
    assert (auditor.seen[0].query, auditor.seen[0].thinking) == ("prompt", "hm")
    with pytest.raises(Blocked):
        llm.invoke("prompt", config={"callbacks": [handler]})
    assert handler.active_runs == 0
