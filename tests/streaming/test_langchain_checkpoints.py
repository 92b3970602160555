"""Checkpoints in LangChain: the guarded model (``guard_runnable``) and the callback handlers,
around a real ``ChatOpenAI`` streaming from the loopback server, sync and async.

ChatOpenAI drops ``reasoning_content``, so the thinking travels as ``<think>`` tags in the
content, which is how R1-style models stream it anyway.
"""

from __future__ import annotations

import asyncio
import gc
import threading
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("langchain_openai")

from langchain_openai import ChatOpenAI
from pydantic import SecretStr

from traceguard import (
    Action,
    AuditSchedule,
    AuditStatus,
    Blocked,
    Escalated,
    Guard,
    Policy,
    Stage,
    Trace,
)
from traceguard.integrations.langchain import (
    AsyncTraceguardCallbackHandler,
    TraceguardCallbackHandler,
    guard_runnable,
)
from traceguard.testing.openai_server import (
    OpenAIServer,
    ScriptedResponse,
    StreamControl,
    chat_completion_chunks,
)

from .conftest import HARM, ListSink, RecordingAuditor, paced_by_checkpoints, thinking_tokens

EVERY = 16
FIRST_TOKEN_EVENT = 2  # event 0: the role chunk, event 1: "<think>", then one token per event


@pytest.fixture
def server() -> Iterator[OpenAIServer]:
    # One per test: langchain-openai caches its async HTTP client per base URL, and a pooled
    # connection must not outlive the event loop of the test that opened it.
    with OpenAIServer() as srv:
        yield srv
        assert not srv.unexpected


@pytest.fixture(params=["sync", "async"])
def flavor(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def chat(server: OpenAIServer) -> ChatOpenAI:
    return ChatOpenAI(model="m", base_url=server.base_url, api_key=SecretStr("x"), max_retries=0)


def tagged(tokens: list[str], answer: str = "Answer.") -> list[dict[str, Any]]:
    return chat_completion_chunks(["<think>", *tokens, "</think>", answer])


def checkpoint_guard(auditor: RecordingAuditor, policy: Policy | None = None) -> Guard:
    return Guard(auditor, policy or Policy(), [ListSink()], checkpoints=AuditSchedule(EVERY))


async def consume(runnable: Any, flavor: str, seen: list[Any], **kwargs: Any) -> None:
    if flavor == "sync":
        for chunk in runnable.stream("Plan a picnic.", **kwargs):
            seen.append(chunk)
    else:
        async for chunk in runnable.astream("Plan a picnic.", **kwargs):
            seen.append(chunk)


def paced(auditor: RecordingAuditor, tokens: list[str]) -> dict[int, threading.Event]:
    """Pauses pacing :func:`tagged` events by the checkpoint audits (``<think>`` counts)."""
    return paced_by_checkpoints(auditor, ["", "<think>", *tokens], every_tokens=EVERY)


def text(chunks: list[Any]) -> str:
    return "".join(str(chunk.content) for chunk in chunks)


# -- guard_runnable -----------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["buffer", "passthrough"])
async def test_guarded_model_cuts_harmful_thinking_and_closes_the_upstream(
    server: OpenAIServer, flavor: str, mode: str
) -> None:
    harmful_at = 2 * EVERY + 14
    last_allowed = harmful_at + FIRST_TOKEN_EVENT + EVERY
    tokens = thinking_tokens(400, harmful_at=harmful_at)
    events = tagged(tokens)
    auditor = RecordingAuditor()
    if flavor == "async":
        control = StreamControl(hold_at=last_allowed)  # heard while the upstream is silent
    else:
        # Heard at the next chunk: each checkpoint's audit ends before the next chunk goes out.
        control = StreamControl(hold_at=last_allowed, pauses=paced(auditor, tokens))
    server.enqueue(ScriptedResponse.sse(events, control=control))
    guarded = guard_runnable(chat(server), checkpoint_guard(auditor), stream_mode=mode)
    seen: list[Any] = []
    with pytest.raises(Blocked) as caught:
        await consume(guarded, flavor, seen)
    assert caught.value.decision.action is Action.BLOCK
    assert set(auditor.stages()) == {Stage.CHECKPOINT}
    assert HARM.strip() in (auditor.seen[-1].thinking or "")
    assert control.finished.wait(10)
    assert control.disconnected.is_set(), f"the upstream was not closed ({control.sent} sent)"
    assert control.sent <= last_allowed
    assert control.gave_up == []
    if flavor == "async":
        assert control.sent == last_allowed
    else:
        assert len(auditor.stages()) == 3  # the first checkpoint after the harm
    if mode == "buffer":
        assert seen == []
    else:
        assert "Answer" not in text(seen)


async def test_guarded_model_keeps_streaming_while_a_checkpoint_is_audited(
    server: OpenAIServer, flavor: str
) -> None:
    tokens = thinking_tokens(8 * EVERY)
    server.enqueue(ScriptedResponse.sse(tagged(tokens)))
    slow = threading.Event()
    auditor = RecordingAuditor(gate=lambda t: slow if t.metadata.get("checkpoint") == 1 else None)
    guarded = guard_runnable(chat(server), checkpoint_guard(auditor), stream_mode="passthrough")
    seen: list[Any] = []
    during: list[int] = []

    class Watch(list[Any]):
        def append(self, chunk: Any) -> None:
            super().append(chunk)
            if len(text(self)) >= len("<think>") + 4 * EVERY and not slow.is_set():
                during.append(len(self))
            if "Answer." in text(self):
                slow.set()  # the whole answer is out: let the first checkpoint finish

    seen = Watch()
    await consume(guarded, flavor, seen)
    assert auditor.gate_timeouts == 0
    assert text(seen).endswith("Answer.")
    # From the chunk that made the first checkpoint due to the answer's end, everything went
    # out while that audit was pending; no other checkpoint started meanwhile.
    assert len(during) == 8 * EVERY - EVERY + 1 + 2  # the rest of the thinking, </think>, answer
    assert auditor.stages() == [Stage.CHECKPOINT, Stage.FINAL]
    assert auditor.most_at_once == 1


async def test_guarded_model_checkpoint_errors_follow_the_policy(
    server: OpenAIServer, flavor: str
) -> None:
    def failing(trace: Trace) -> bool:
        return trace.stage is Stage.CHECKPOINT

    server.enqueue(ScriptedResponse.sse(tagged(thinking_tokens(3 * EVERY))))
    auditor = RecordingAuditor(fail=failing)
    guarded = guard_runnable(chat(server), checkpoint_guard(auditor), stream_mode="passthrough")
    with pytest.raises(Escalated) as caught:  # default policy: escalate, held as a block
        await consume(guarded, flavor, [])
    assert caught.value.decision.verdict.status is AuditStatus.AUDITOR_ERROR

    server.enqueue(ScriptedResponse.sse(tagged(thinking_tokens(3 * EVERY))))
    auditor = RecordingAuditor(fail=failing)
    lenient = checkpoint_guard(auditor, Policy(auditor_error=Action.ALLOW))
    seen: list[Any] = []
    await consume(guard_runnable(chat(server), lenient), flavor, seen)
    assert text(seen).endswith("Answer.")
    assert auditor.stages()[-1] is Stage.FINAL
    assert Stage.CHECKPOINT in auditor.stages()


# -- the callback handlers ----------------------------------------------------------------------


async def test_handler_cuts_harmful_thinking_at_the_next_token(
    server: OpenAIServer, flavor: str
) -> None:
    harmful_at = 2 * EVERY + 14
    last_allowed = harmful_at + FIRST_TOKEN_EVENT + EVERY
    tokens = thinking_tokens(400, harmful_at=harmful_at)
    auditor = RecordingAuditor()
    # A handler hears a finished checkpoint at the next token: each checkpoint's audit ends
    # before the next token goes out.
    control = StreamControl(hold_at=last_allowed, pauses=paced(auditor, tokens))
    server.enqueue(ScriptedResponse.sse(tagged(tokens), control=control))
    guard = checkpoint_guard(auditor)
    handler: Any = (
        TraceguardCallbackHandler(guard)
        if flavor == "sync"
        else AsyncTraceguardCallbackHandler(guard)
    )
    blocked = False
    try:
        await consume(chat(server), flavor, [], config={"callbacks": [handler]})
    except Blocked:
        blocked = True
    assert blocked
    # A callback can only raise: LangChain's stream ends, and the model's HTTP stream closes as
    # its generator is finalised (an async one by the event loop, once no traceback holds it).
    gc.collect()
    assert await asyncio.to_thread(control.finished.wait, 10)
    assert auditor.stages() == [Stage.CHECKPOINT] * 3  # the first one after the harm
    assert HARM.strip() in (auditor.seen[-1].thinking or "")
    assert control.disconnected.is_set(), f"the upstream was not closed ({control.sent} sent)"
    assert control.sent <= last_allowed
    assert control.gave_up == []
    assert handler.active_runs == 0


async def test_handler_audits_a_safe_stream_at_checkpoints_and_at_the_end(
    server: OpenAIServer, flavor: str
) -> None:
    server.enqueue(ScriptedResponse.sse(tagged(thinking_tokens(5 * EVERY))))
    auditor = RecordingAuditor()
    guard = checkpoint_guard(auditor)
    handler: Any = (
        TraceguardCallbackHandler(guard)
        if flavor == "sync"
        else AsyncTraceguardCallbackHandler(guard)
    )
    seen: list[Any] = []
    await consume(chat(server), flavor, seen, config={"callbacks": [handler]})
    assert text(seen).endswith("Answer.")
    stages = auditor.stages()
    assert stages[-1] is Stage.FINAL and stages[:-1] and set(stages[:-1]) == {Stage.CHECKPOINT}
    assert auditor.most_at_once == 1
    assert handler.active_runs == 0


def handler_for(guard: Guard, flavor: str) -> Any:
    return (
        TraceguardCallbackHandler(guard)
        if flavor == "sync"
        else AsyncTraceguardCallbackHandler(guard)
    )


async def test_handler_keeps_streaming_while_a_checkpoint_is_audited(
    server: OpenAIServer, flavor: str
) -> None:
    tokens = thinking_tokens(8 * EVERY)
    server.enqueue(ScriptedResponse.sse(tagged(tokens)))
    slow = threading.Event()
    auditor = RecordingAuditor(gate=lambda t: slow if t.metadata.get("checkpoint") == 1 else None)
    handler = handler_for(checkpoint_guard(auditor), flavor)
    during: list[int] = []

    class Watch(list[Any]):
        def append(self, chunk: Any) -> None:
            super().append(chunk)
            if len(text(self)) >= len("<think>") + 4 * EVERY and not slow.is_set():
                during.append(len(self))
            if "Answer." in text(self):
                slow.set()  # the whole answer is out: let the first checkpoint finish

    seen = Watch()
    await consume(chat(server), flavor, seen, config={"callbacks": [handler]})
    # A handler that audited on the token callback would have held the stream until the gate
    # gave up: the answer could not reach the caller while the first checkpoint was pending.
    assert auditor.gate_timeouts == 0
    assert text(seen).endswith("Answer.")
    assert len(during) == 8 * EVERY - EVERY + 1 + 2  # the rest of the thinking, </think>, answer
    assert auditor.stages() == [Stage.CHECKPOINT, Stage.FINAL]
    assert auditor.most_at_once == 1
    assert handler.active_runs == 0


async def test_handler_checkpoint_errors_follow_the_policy(
    server: OpenAIServer, flavor: str
) -> None:
    def failing(trace: Trace) -> bool:
        return trace.stage is Stage.CHECKPOINT

    # Default policy: an auditor error escalates, held as a block; the run stops mid-stream,
    # at the token after the first checkpoint's audit ended (the upstream waits for it, then
    # sends that token and holds until the client leaves).
    tokens = thinking_tokens(400)
    events = tagged(tokens)
    auditor = RecordingAuditor(fail=failing)
    [(heard_at, first_ended), *_] = paced(auditor, tokens).items()
    control = StreamControl(hold_at=heard_at + 1, pauses={heard_at: first_ended})
    server.enqueue(ScriptedResponse.sse(events, control=control))
    handler = handler_for(checkpoint_guard(auditor), flavor)
    escalated = None
    try:
        await consume(chat(server), flavor, [], config={"callbacks": [handler]})
    except Escalated as exc:
        escalated = exc
    assert escalated is not None
    assert escalated.decision.verdict.status is AuditStatus.AUDITOR_ERROR
    del escalated
    gc.collect()
    assert await asyncio.to_thread(control.finished.wait, 10)
    assert auditor.stages() == [Stage.CHECKPOINT]
    assert control.disconnected.is_set(), f"the upstream was not closed ({control.sent} sent)"
    assert control.sent == heard_at + 1
    assert control.gave_up == []
    assert handler.active_runs == 0

    # Errors allowed: the stream runs to its end, each failed checkpoint recorded as one.
    server.enqueue(ScriptedResponse.sse(tagged(thinking_tokens(3 * EVERY))))
    auditor = RecordingAuditor(fail=failing)
    sink = ListSink()
    lenient = Guard(
        auditor,
        Policy(auditor_error=Action.ALLOW),
        [sink],
        checkpoints=AuditSchedule(EVERY),
    )
    seen: list[Any] = []
    await consume(chat(server), flavor, seen, config={"callbacks": [handler_for(lenient, flavor)]})
    assert text(seen).endswith("Answer.")
    stages = auditor.stages()
    assert stages[-1] is Stage.FINAL and stages[:-1] and set(stages[:-1]) == {Stage.CHECKPOINT}
    statuses = [r.decision.verdict.status for r in sink.records]
    assert statuses == [AuditStatus.AUDITOR_ERROR] * (len(stages) - 1) + [AuditStatus.OK]
