"""guard_openai on streamed calls (``stream=True``): buffer, passthrough, early stop.

Real openai SDK streams over real SSE from the loopback server; sync and async (``flavor``).
"""

from __future__ import annotations

import asyncio
import gc
import inspect
import logging
import time
from pathlib import Path
from typing import Any

import openai
import pytest
from _openai_support import call

from traceguard import Action, Blocked, Escalated, ReviewQueue, Stage, Trace
from traceguard._guard import Guard
from traceguard._policy import Policy
from traceguard._sinks import AuditRecord, Sink
from traceguard.integrations.openai import guard_openai
from traceguard.testing import ScriptedAuditor, Step
from traceguard.testing.openai_server import (
    OpenAIServer,
    ScriptedResponse,
    SSEEvent,
    chat_completion_chunks,
    responses_events,
)

USER = [{"role": "user", "content": "Tell me a story."}]


async def drain(stream: Any, received: list[Any] | None = None) -> list[Any]:
    """Every chunk of a sync or async stream, appended to ``received`` as it arrives."""
    out = received if received is not None else []
    if isinstance(stream, openai.AsyncStream):
        async for chunk in stream:
            out.append(chunk)
    else:
        for chunk in stream:
            out.append(chunk)
    return out


def _settles(condition: Any, within_s: float) -> bool:
    """Poll ``condition`` (a loopback server thread changes it) until true or out of time."""
    deadline = time.monotonic() + within_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


class ListSink(Sink):
    """Keeps every record in memory."""

    def __init__(self) -> None:
        self.records: list[AuditRecord] = []

    def emit(self, record: AuditRecord) -> None:
        self.records.append(record)


def guarded(client: Any, *steps: float | Step, **options: Any) -> ScriptedAuditor:
    auditor = ScriptedAuditor(steps)
    guard_openai(client, Guard(auditor, Policy()), **options)
    return auditor


def chat_stream(server: OpenAIServer, **kwargs: Any) -> None:
    event_delay_s = kwargs.pop("event_delay_s", 0.0)
    server.enqueue(
        ScriptedResponse.sse(chat_completion_chunks(**kwargs), event_delay_s=event_delay_s)
    )


def text_of(chunks: list[Any]) -> str:
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def reasoning_of(chunks: list[Any]) -> str:
    parts = []
    for chunk in chunks:
        for choice in chunk.choices:
            extra = choice.delta.model_extra or {}
            parts.append(extra.get("reasoning_content") or extra.get("reasoning") or "")
    return "".join(parts)


# -- chat: buffer --------------------------------------------------------------------------------


async def test_buffer_allow_keeps_type_chunks_and_context_manager(
    server: OpenAIServer, client: Any, flavor: str
) -> None:
    auditor = guarded(client, 0, 0)  # the thinking early, then the whole answer
    chat_stream(server, content="Once upon a time.", reasoning_content="A short tale.")
    stream = await call(client.chat.completions.create, model="m", messages=USER, stream=True)
    expected = openai.Stream if flavor == "sync" else openai.AsyncStream
    assert isinstance(stream, expected)
    if flavor == "sync":
        with stream as s:
            chunks = await drain(s)
    else:
        async with stream as s:
            chunks = await drain(s)
    assert all(isinstance(c, openai.types.chat.ChatCompletionChunk) for c in chunks)
    assert text_of(chunks) == "Once upon a time."
    assert reasoning_of(chunks) == "A short tale."
    assert chunks[-1].usage is not None
    early, final = auditor.seen
    assert (early.stage, early.thinking, early.response) == (
        Stage.THINKING,
        "A short tale.",
        "",
    )
    assert (final.thinking, final.response) == ("A short tale.", "Once upon a time.")
    assert [d.action for d in stream.decisions] == [Action.ALLOW, Action.ALLOW]
    assert stream.response.is_closed


async def test_buffer_holds_every_chunk_until_the_audit(server: OpenAIServer, client: Any) -> None:
    received: list[Any] = []
    seen_at_audit: list[int] = []

    def rule(trace: Trace) -> float:
        seen_at_audit.append(len(received))
        return 0

    guard_openai(client, Guard(ScriptedAuditor(rule=rule)), early_stop=False)
    chat_stream(server, content="Hello there, general.")
    stream = await call(client.chat.completions.create, model="m", messages=USER, stream=True)
    await drain(stream, received)
    assert seen_at_audit == [0]
    assert text_of(received) == "Hello there, general."


async def test_buffer_redacts_reasoning_deltas(server: OpenAIServer, client: Any) -> None:
    guarded(client, 0, 0.5, 0)  # thinking, whole output, then the redaction's check
    chat_stream(server, content="The end.", reasoning_content="Dark secret plan here.")
    stream = await call(client.chat.completions.create, model="m", messages=USER, stream=True)
    chunks = await drain(stream)
    assert text_of(chunks) == "The end."
    assert reasoning_of(chunks) == ""
    assert not any(c.choices and c.choices[0].delta.model_extra for c in chunks)
    assert chunks[-1].usage is not None
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"


async def test_early_redaction_of_thinking_survives_a_safe_final_audit(
    server: OpenAIServer, client: Any
) -> None:
    guarded(client, 0.5, 0)
    chat_stream(server, content="Fine.", reasoning="Troubling musings.")
    stream = await call(client.chat.completions.create, model="m", messages=USER, stream=True)
    chunks = await drain(stream)
    assert (text_of(chunks), reasoning_of(chunks)) == ("Fine.", "")


async def test_think_tags_split_across_chunks(server: OpenAIServer, client: Any) -> None:
    auditor = guarded(client, 0, 0.5, 0)
    pieces = ["<th", "ink>I will", " plan</th", "ink>\n\nThe ", "answer."]
    chat_stream(server, content=pieces)
    stream = await call(client.chat.completions.create, model="m", messages=USER, stream=True)
    chunks = await drain(stream)
    assert auditor.seen[-2].thinking == "I will plan"  # the last is the redaction's check
    assert auditor.seen[-2].response == "The answer."
    assert auditor.seen[-1].thinking is None
    assert text_of(chunks) == "The answer."
    assert "think" not in text_of(chunks)


async def test_stream_tool_calls_are_audited(server: OpenAIServer, client: Any) -> None:
    auditor = guarded(client, 1, on_block="refusal", refusal="Refused.")
    spec = {"name": "rm", "arguments": {"path": "/"}, "id": "call_1"}
    chat_stream(server, content=None, tool_calls=[spec])
    stream = await call(client.chat.completions.create, model="m", messages=USER, stream=True)
    chunks = await drain(stream)
    (trace,) = auditor.seen
    assert [(c.name, c.arguments, c.id) for c in trace.tool_calls] == [
        ("rm", '{"path": "/"}', "call_1")
    ]
    assert text_of(chunks) == "Refused."
    assert not any(c.choices[0].delta.tool_calls for c in chunks if c.choices)
    assert chunks[-1].choices[0].finish_reason == "content_filter"


async def test_buffer_block_raises_before_any_chunk(server: OpenAIServer, client: Any) -> None:
    guarded(client, 1, early_stop=False)
    chat_stream(server, content="Harmful details.")
    stream = await call(client.chat.completions.create, model="m", messages=USER, stream=True)
    received: list[Any] = []
    with pytest.raises(Blocked):
        await drain(stream, received)
    assert received == []
    assert stream.response.is_closed


async def test_auditor_error_in_a_stream_escalates(server: OpenAIServer, client: Any) -> None:
    guarded(client, Step(error="connection refused"), early_stop=False)
    chat_stream(server, content="Whatever.")
    stream = await call(client.chat.completions.create, model="m", messages=USER, stream=True)
    received: list[Any] = []
    with pytest.raises(Escalated):
        await drain(stream, received)
    assert received == []


# -- chat: passthrough ---------------------------------------------------------------------------


async def test_passthrough_releases_at_once_and_blocks_at_the_end(
    server: OpenAIServer, client: Any
) -> None:
    received: list[Any] = []
    seen_at_audit: list[int] = []

    def rule(trace: Trace) -> float:
        seen_at_audit.append(len(received))
        return 1

    guard_openai(client, Guard(ScriptedAuditor(rule=rule)), stream_mode="passthrough")
    chat_stream(server, content="Leaked words.")
    stream = await call(client.chat.completions.create, model="m", messages=USER, stream=True)
    with pytest.raises(Blocked):
        await drain(stream, received)
    assert seen_at_audit == [len(received)] and len(received) > 2  # the documented leak window
    assert text_of(received) == "Leaked words."


async def test_passthrough_first_chunk_comes_before_the_stream_ends(
    server: OpenAIServer, client: Any, flavor: str
) -> None:
    guarded(client, 0, stream_mode="passthrough")
    chat_stream(server, content="a" * 40, chunk_size=4, event_delay_s=0.05)
    start = time.perf_counter()
    stream = await call(client.chat.completions.create, model="m", messages=USER, stream=True)
    first = await (anext(stream) if flavor == "async" else asyncio.sleep(0, next(stream)))
    first_at = time.perf_counter() - start
    rest = await drain(stream)
    total = time.perf_counter() - start
    assert first.choices[0].delta.role == "assistant"
    assert first_at < total / 2
    assert text_of([first, *rest]) == "a" * 40


# -- early stop ----------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["buffer", "passthrough"])
async def test_early_stop_closes_upstream_on_harmful_thinking(
    server: OpenAIServer, client: Any, mode: str
) -> None:
    auditor = guarded(client, 1, stream_mode=mode)
    # 80 answer chunks at 25 ms each: two seconds of generation nobody should pay for.
    chat_stream(
        server,
        reasoning_content="Harmful plan.",
        content="x" * 80,
        chunk_size=1,
        event_delay_s=0.025,
    )
    start = time.perf_counter()
    stream = await call(client.chat.completions.create, model="m", messages=USER, stream=True)
    received: list[Any] = []
    with pytest.raises(Blocked) as caught:
        await drain(stream, received)
    elapsed = time.perf_counter() - start
    assert caught.value.decision.action is Action.BLOCK
    (trace,) = auditor.seen
    assert trace.stage is Stage.THINKING and trace.response == ""
    assert elapsed < 1.0
    assert stream.response.is_closed
    # The server notices the disconnect: its handler stops well before the scripted end.
    assert _settles(lambda: server.in_flight == 0, within_s=1.0)
    assert text_of(received) == ""


async def test_early_stop_with_refusal(server: OpenAIServer, client: Any) -> None:
    guarded(client, 1, on_block="refusal", refusal="Stopped.")
    chat_stream(server, reasoning_content="Bad idea.", content="Worse answer.")
    stream = await call(client.chat.completions.create, model="m", messages=USER, stream=True)
    chunks = await drain(stream)
    assert text_of(chunks) == "Stopped."
    assert reasoning_of(chunks) == ""
    assert chunks[-1].choices[0].finish_reason == "content_filter"


async def test_early_stop_off_audits_once(server: OpenAIServer, client: Any) -> None:
    auditor = guarded(client, 0, early_stop=False)
    chat_stream(server, reasoning_content="Think.", content="Done.")
    stream = await call(client.chat.completions.create, model="m", messages=USER, stream=True)
    await drain(stream)
    assert [t.stage for t in auditor.seen] == [Stage.FINAL]


async def test_close_closes_upstream(server: OpenAIServer, client: Any, flavor: str) -> None:
    guarded(client, 0, stream_mode="passthrough")
    chat_stream(server, content="y" * 50, chunk_size=1, event_delay_s=0.02)
    stream = await call(client.chat.completions.create, model="m", messages=USER, stream=True)
    if flavor == "sync":
        next(stream)
        stream.close()
    else:
        await anext(stream)
        await stream.close()
    assert stream.response.is_closed
    assert _settles(lambda: server.in_flight == 0, within_s=1.0)


# -- passthrough streams cut short: what was shown is still audited --------------------------------


async def close(stream: Any) -> None:
    result = stream.close()
    if inspect.isawaitable(result):
        await result


async def take(stream: Any, n: int) -> list[Any]:
    if isinstance(stream, openai.AsyncStream):
        return [await anext(stream) for _ in range(n)]
    return [next(stream) for _ in range(n)]


def guarded_with_sink(client: Any, *steps: float | Step, **options: Any) -> tuple[Any, ListSink]:
    sink = ListSink()
    auditor = ScriptedAuditor(steps)
    guard_openai(client, Guard(auditor, Policy(), sinks=[sink]), **options)
    return auditor, sink


async def test_early_close_audits_what_was_shown(
    server: OpenAIServer, client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    auditor, sink = guarded_with_sink(client, 1, stream_mode="passthrough")
    chat_stream(server, content="a" * 60, chunk_size=4, event_delay_s=0.01)
    stream = await call(client.chat.completions.create, model="m", messages=USER, stream=True)
    shown = await take(stream, 4)
    with caplog.at_level(logging.WARNING, logger="traceguard.streaming"):
        await close(stream)  # would block: recorded and logged, never raised
        await close(stream)  # a second close audits nothing more
    (trace,) = auditor.seen
    assert trace.response == text_of(shown) and 0 < len(trace.response) < 60
    assert (trace.stage, trace.metadata["cut"]) == (Stage.PARTIAL, "closed")
    (decision,) = stream.decisions
    assert decision.action is Action.BLOCK
    assert [r.decision for r in sink.records] == [decision]
    assert "cut short" in caplog.text
    assert stream.response.is_closed


async def test_with_exit_after_partial_iteration_audits(
    server: OpenAIServer, client: Any, flavor: str
) -> None:
    auditor, sink = guarded_with_sink(client, 0, stream_mode="passthrough")
    chat_stream(server, reasoning_content="Plan.", content="b" * 40, chunk_size=4)
    stream = await call(client.chat.completions.create, model="m", messages=USER, stream=True)
    shown: list[Any] = []
    if flavor == "sync":
        with stream:
            for chunk in stream:
                shown.append(chunk)
                if len(shown) == 3:
                    break
    else:
        async with stream:
            async for chunk in stream:
                shown.append(chunk)
                if len(shown) == 3:
                    break
    assert [t.stage for t in auditor.seen] == [Stage.PARTIAL]
    (trace,) = auditor.seen
    assert trace.thinking == reasoning_of(shown) == "Plan."
    assert trace.response == text_of(shown)
    assert [d.action for d in stream.decisions] == [Action.ALLOW]
    assert len(sink.records) == 1


async def test_closing_never_masks_the_callers_exception(
    server: OpenAIServer, client: Any, flavor: str
) -> None:
    auditor = guarded(client, 1, stream_mode="passthrough")
    chat_stream(server, content="c" * 40, chunk_size=4)
    stream = await call(client.chat.completions.create, model="m", messages=USER, stream=True)
    with pytest.raises(KeyError):
        if flavor == "sync":
            with stream:
                next(stream)
                raise KeyError("the caller's own error")
        else:
            async with stream:
                await anext(stream)
                raise KeyError("the caller's own error")
    assert len(auditor.seen) == 1
    assert stream.decisions[0].blocked


async def test_escalation_on_early_close_reaches_the_review_queue(
    server: OpenAIServer, client: Any, tmp_path: Path
) -> None:
    queue = ReviewQueue(tmp_path / "review.db")
    auditor = ScriptedAuditor([Step(error="connection refused")])
    guard_openai(client, Guard(auditor, Policy(), sinks=[queue]), stream_mode="passthrough")
    chat_stream(server, content="d" * 40, chunk_size=4)
    stream = await call(client.chat.completions.create, model="m", messages=USER, stream=True)
    await take(stream, 2)
    await close(stream)
    assert [d.action for d in stream.decisions] == [Action.ESCALATE]
    assert len(queue.pending()) == 1
    queue.close()


async def test_upstream_drop_mid_stream_audits_then_propagates(
    server: OpenAIServer, client: Any
) -> None:
    auditor, sink = guarded_with_sink(client, 1, stream_mode="passthrough")
    server.enqueue(
        ScriptedResponse.sse(chat_completion_chunks(content="e" * 40, chunk_size=4), drop_after=4)
    )
    stream = await call(client.chat.completions.create, model="m", messages=USER, stream=True)
    received: list[Any] = []
    with pytest.raises(Exception) as caught:
        await drain(stream, received)
    assert not isinstance(caught.value, Blocked)  # the upstream's own error, not the guard's
    assert len(received) == 4
    (trace,) = auditor.seen
    assert (trace.stage, trace.metadata["cut"]) == (Stage.PARTIAL, "upstream_error")
    assert trace.response == text_of(received)
    assert stream.decisions[0].blocked and len(sink.records) == 1
    await close(stream)  # closing afterwards audits nothing more
    assert len(auditor.seen) == 1


@pytest.mark.parametrize("then", ["close", "with"])
async def test_completed_stream_is_audited_once(
    server: OpenAIServer, client: Any, flavor: str, then: str
) -> None:
    auditor, sink = guarded_with_sink(client, 0, stream_mode="passthrough")
    chat_stream(server, content="Complete.")
    stream = await call(client.chat.completions.create, model="m", messages=USER, stream=True)
    if then == "close":
        await drain(stream)
        await close(stream)
    elif flavor == "sync":
        with stream:
            await drain(stream)
    else:
        async with stream:
            await drain(stream)
    assert [t.stage for t in auditor.seen] == [Stage.FINAL]
    assert len(stream.decisions) == 1 and len(sink.records) == 1


async def test_blocked_at_the_end_is_not_audited_again_on_close(
    server: OpenAIServer, client: Any
) -> None:
    auditor = guarded(client, 1, stream_mode="passthrough")
    chat_stream(server, content="Leaked.")
    stream = await call(client.chat.completions.create, model="m", messages=USER, stream=True)
    with pytest.raises(Blocked):
        await drain(stream)
    await close(stream)
    assert len(auditor.seen) == 1 and len(stream.decisions) == 1


async def test_buffer_stream_closed_early_shows_and_audits_nothing(
    server: OpenAIServer, client: Any
) -> None:
    auditor = guarded(client)  # buffer mode: nothing reached the caller, nothing is owed
    chat_stream(server, content="f" * 40, chunk_size=4, event_delay_s=0.01)
    stream = await call(client.chat.completions.create, model="m", messages=USER, stream=True)
    await close(stream)
    assert auditor.seen == [] and stream.decisions == []


def test_garbage_collected_stream_audits_what_was_shown(server: OpenAIServer) -> None:
    sync = openai.OpenAI(base_url=server.base_url, api_key="test", max_retries=0)
    try:
        auditor, sink = guarded_with_sink(sync, 0, stream_mode="passthrough")
        chat_stream(server, content="g" * 40, chunk_size=4)
        stream = sync.chat.completions.create(model="m", messages=USER, stream=True)
        next(stream)
        del stream
        gc.collect()
        assert [t.metadata["cut"] for t in auditor.seen] == ["closed"]
        assert len(sink.records) == 1
    finally:
        sync.close()


# -- Responses streams ---------------------------------------------------------------------------


def responses_stream(server: OpenAIServer, *args: Any, **kwargs: Any) -> None:
    server.enqueue(ScriptedResponse.sse(responses_events(*args, **kwargs), done=False))


async def test_responses_stream_buffer_allow_and_redact(server: OpenAIServer, client: Any) -> None:
    auditor = guarded(client, 0, 0)
    responses_stream(server, "The answer is 4.", reasoning_summary="Add two and two.")
    stream = await call(client.responses.create, model="m", input="2+2?", stream=True)
    events = await drain(stream)
    kinds = [e.type for e in events]
    assert "response.reasoning_summary_text.delta" in kinds
    assert kinds[-1] == "response.completed"
    assert (auditor.seen[-1].thinking, auditor.seen[-1].response) == (
        "Add two and two.",
        "The answer is 4.",
    )

    auditor.enqueue(0, 0.5, 0)  # thinking, whole output, the redaction's check
    responses_stream(server, "The answer is 4.", reasoning_summary="Add two and two.")
    stream = await call(client.responses.create, model="m", input="2+2?", stream=True)
    events = await drain(stream)
    kinds = [e.type for e in events]
    assert not any(k.startswith("response.reasoning") for k in kinds)
    assert not any(getattr(getattr(e, "item", None), "type", "") == "reasoning" for e in events)
    completed = events[-1].response
    assert [item.type for item in completed.output] == ["message"]
    assert completed.output_text == "The answer is 4."


async def test_responses_stream_block_and_refusal(server: OpenAIServer, client: Any) -> None:
    guarded(client, 0, 1, on_block="refusal", refusal="No way.")
    responses_stream(server, "Harmful.", reasoning_summary="Plan.")
    stream = await call(client.responses.create, model="m", input="q", stream=True)
    events = await drain(stream)
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert deltas == ["No way."]
    assert events[-1].type == "response.completed"
    assert events[-1].response.output_text == "No way."


async def test_responses_stream_passthrough_and_early_stop(
    server: OpenAIServer, client: Any
) -> None:
    auditor = guarded(client, 1, stream_mode="passthrough")
    responses_stream(server, "z" * 60, reasoning_summary="Evil plan.", chunk_size=1)
    stream = await call(client.responses.create, model="m", input="q", stream=True)
    received: list[Any] = []
    with pytest.raises(Blocked):
        await drain(stream, received)
    assert auditor.seen[0].thinking == "Evil plan."
    # Reasoning events flowed at once (passthrough); not one answer delta did.
    kinds = [e.type for e in received]
    assert "response.reasoning_summary_text.delta" in kinds
    assert "response.output_text.delta" not in kinds


async def test_sync_async_parity(server: OpenAIServer) -> None:
    """The same script gives the same chunks and decisions on both clients."""
    results = []
    for make in (openai.OpenAI, openai.AsyncOpenAI):
        client = make(base_url=server.base_url, api_key="t", max_retries=0)
        auditor = ScriptedAuditor([0, 0.5])
        guard_openai(client, Guard(auditor))
        chat_stream(server, content="Same answer.", reasoning_content="Same thinking.")
        stream = await call(client.chat.completions.create, model="m", messages=USER, stream=True)
        chunks = await drain(stream)
        results.append(
            (
                [c.model_dump() for c in chunks],
                [d.to_dict() for d in stream.decisions],
                [t.content_hash() for t in auditor.seen],
            )
        )
    assert results[0] == results[1]


def test_unknown_sse_events_pass_through(server: OpenAIServer) -> None:
    client = openai.OpenAI(base_url=server.base_url, api_key="t", max_retries=0)
    guard_openai(client, Guard(ScriptedAuditor([0])))
    events = [SSEEvent(e.data, e.event) for e in responses_events("ok")]
    events.insert(2, SSEEvent({"type": "response.future_feature", "sequence_number": 99}))
    server.enqueue(ScriptedResponse.sse(events, done=False))
    stream = client.responses.create(model="m", input="q", stream=True)
    kinds = [e.type for e in stream]
    assert "response.future_feature" in kinds


async def test_passthrough_cannot_retract_a_redaction(server: OpenAIServer, client: Any) -> None:
    guarded(client, 0, 0.5, stream_mode="passthrough")
    chat_stream(server, content="Visible.", reasoning_content="Already shown.")
    stream = await call(client.chat.completions.create, model="m", messages=USER, stream=True)
    chunks = await drain(stream)
    assert (text_of(chunks), reasoning_of(chunks)) == ("Visible.", "Already shown.")
    assert [d.action for d in stream.decisions] == [Action.ALLOW, Action.REDACT]
