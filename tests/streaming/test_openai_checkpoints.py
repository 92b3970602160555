"""Checkpoints in the OpenAI wrapper: real ``openai`` SDK streams over real SSE from the loopback
server, sync and async (``flavor``).

Timing is never asserted: the server counts the events it wrote and notices the client leave,
and audits that must overlap the stream wait on events the test sets.
"""

from __future__ import annotations

import asyncio
import inspect
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import openai
import pytest

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
from traceguard._reasoning import ReasoningStream
from traceguard.integrations.openai import guard_openai
from traceguard.testing.openai_server import (
    OpenAIServer,
    ScriptedResponse,
    StreamControl,
    chat_completion_chunks,
    responses_events,
)

from .conftest import HARM, ListSink, RecordingAuditor, paced_by_checkpoints, thinking_tokens

USER = [{"role": "user", "content": "Plan a picnic."}]
EVERY = 16  # tokens between checkpoints


@pytest.fixture(scope="module")
def server() -> Iterator[OpenAIServer]:
    with OpenAIServer() as srv:
        yield srv


@pytest.fixture(autouse=True)
def _fresh(server: OpenAIServer) -> Iterator[None]:
    server.reset()
    yield
    assert not server.unexpected, "a request found no scripted answer"


@pytest.fixture(params=["sync", "async"])
def flavor(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def client(server: OpenAIServer, flavor: str) -> AsyncIterator[Any]:
    if flavor == "sync":
        sync = openai.OpenAI(base_url=server.base_url, api_key="test", max_retries=0)
        yield sync
        sync.close()
    else:
        async_client = openai.AsyncOpenAI(base_url=server.base_url, api_key="test", max_retries=0)
        yield async_client
        await async_client.close()


async def open_stream(client: Any, **kwargs: Any) -> Any:
    result = client.chat.completions.create(model="m", messages=USER, stream=True, **kwargs)
    return await result if inspect.isawaitable(result) else result


async def drain(stream: Any, received: list[Any], on_chunk: Any = None) -> None:
    """Read ``stream`` to its end; ``on_chunk`` sees each chunk before the next is asked for
    (when it returns an awaitable, that is awaited first: the stream waits for the test)."""
    if isinstance(stream, openai.AsyncStream):
        async for chunk in stream:
            received.append(chunk)
            await _called(on_chunk, chunk)
    else:
        for chunk in stream:
            received.append(chunk)
            await _called(on_chunk, chunk)


async def _called(on_chunk: Any, chunk: Any) -> None:
    if on_chunk is not None:
        result = on_chunk(chunk)
        if inspect.isawaitable(result):
            await result


def when_fed(stream: Any, reached: Callable[[ReasoningStream], bool]) -> threading.Event:
    """An event set as soon as the guarded ``stream`` has taken in a chunk after which
    ``reached`` holds for its output: what the stream has read, whether or not it let the
    caller see it yet (buffer mode, a chunk held for an audit)."""
    adapter = stream._state.adapter
    feed = adapter.feed
    event = threading.Event()

    def feeding(chunk: Any) -> None:
        feed(chunk)
        if reached(adapter.reasoning_streams()[0]):
            event.set()

    adapter.feed = feeding
    return event


def reasoning_of(chunks: list[Any]) -> str:
    return "".join(
        (c.choices[0].delta.model_extra or {}).get("reasoning_content") or ""
        for c in chunks
        if c.choices
    )


def content_of(chunks: list[Any]) -> str:
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def guarded(
    client: Any, auditor: RecordingAuditor, *, policy: Policy | None = None, **options: Any
) -> tuple[Guard, ListSink]:
    sink = ListSink()
    guard = Guard(
        auditor,
        policy or Policy(),
        [sink],
        checkpoints=AuditSchedule(every_tokens=EVERY),
    )
    guard_openai(client, guard, **options)
    return guard, sink


# -- a harmful stream is cut --------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["buffer", "passthrough"])
async def test_harmful_thinking_is_cut_within_one_checkpoint_interval(
    server: OpenAIServer, client: Any, flavor: str, mode: str
) -> None:
    harmful_at = 2 * EVERY + 14  # token 46: the checkpoint after token 48 sees it first
    tokens = thinking_tokens(400, harmful_at=harmful_at)
    events = chat_completion_chunks(reasoning_content=tokens, content="Done.")
    # Event 0 is the role chunk, so thinking token k travels in event k + 1.
    last_allowed = harmful_at + 1 + EVERY  # no more than one interval past the harm
    auditor = RecordingAuditor()
    if flavor == "async":
        # The server sends up to that bound and then waits for the client to leave: the async
        # stream hears a finished audit even while it waits for the next chunk. How many
        # checkpoints that takes varies (one may still be in flight when the next falls due),
        # but the text up to the bound holds the harm and a whole interval after it.
        control = StreamControl(hold_at=last_allowed)
    else:
        # The sync stream hears a finished audit at the next chunk: the model keeps writing,
        # each checkpoint's audit ending before the next chunk goes out.
        pacing = paced_by_checkpoints(auditor, ["", *tokens], every_tokens=EVERY)
        control = StreamControl(hold_at=last_allowed, pauses=pacing)
    server.enqueue(ScriptedResponse.sse(events, control=control))
    _, sink = guarded(client, auditor, stream_mode=mode)
    stream = await open_stream(client)
    received: list[Any] = []
    with pytest.raises(Blocked) as caught:
        await drain(stream, received)

    decision = caught.value.decision
    assert decision.action is Action.BLOCK
    stages = auditor.stages()
    assert stages and set(stages) == {Stage.CHECKPOINT}
    blocking = auditor.seen[-1]
    assert HARM.strip() in (blocking.thinking or "")
    assert HARM.strip() not in "".join(t.thinking or "" for t in auditor.seen[:-1])
    assert len(blocking.thinking or "") <= last_allowed * 4
    assert blocking.metadata["checkpoint"] == len(stages)
    assert control.finished.wait(10)
    assert control.disconnected.is_set(), f"the upstream was not closed ({control.sent} sent)"
    assert control.sent <= last_allowed
    assert control.gave_up == []
    if flavor == "async":
        assert control.sent == last_allowed
    else:
        assert len(stages) == 3  # the first checkpoint after the harm, heard at the next chunk
    assert stream.response.is_closed
    # What the caller saw: nothing in buffer mode; the thinking up to the stop in passthrough.
    shown = reasoning_of(received)
    if mode == "buffer":
        assert received == []
    else:
        assert len(shown) <= last_allowed * 4
        assert content_of(received) == ""
    assert [r.trace.stage for r in sink.records if r.trace is not None] == stages


async def test_refusal_ends_a_stream_cut_at_a_checkpoint(server: OpenAIServer, client: Any) -> None:
    tokens = thinking_tokens(3 * EVERY, harmful_at=5)
    server.enqueue(ScriptedResponse.sse(chat_completion_chunks(reasoning_content=tokens)))
    guarded(client, RecordingAuditor(), on_block="refusal", refusal="Stopped.")
    stream = await open_stream(client)
    received: list[Any] = []
    await drain(stream, received)
    assert content_of(received) == "Stopped."
    assert received[-1].choices[0].finish_reason == "content_filter"
    assert [d.action for d in stream.decisions] == [Action.BLOCK]


# -- a safe stream flows ------------------------------------------------------------------------


async def test_passthrough_keeps_flowing_while_a_checkpoint_is_audited(
    server: OpenAIServer, client: Any
) -> None:
    thinking = thinking_tokens(10 * EVERY)
    events = chat_completion_chunks(reasoning_content=thinking, content=["An", " answer."])
    server.enqueue(ScriptedResponse.sse(events))
    answer_read: list[threading.Event] = []
    auditor = RecordingAuditor(
        gate=lambda t: answer_read[0] if t.metadata.get("checkpoint") == 1 else None
    )
    guarded(client, auditor, stream_mode="passthrough")
    stream = await open_stream(client)
    # The first checkpoint's audit ends only once the stream has read the first answer chunk:
    # that chunk waits for the thinking-done audit, which hears the checkpoint first, so no
    # other checkpoint can start in between.
    answer_read.append(when_fed(stream, lambda output: bool(output.response)))
    received: list[Any] = []
    during: list[int] = []  # chunks the caller got while the first checkpoint was in flight

    def watch(chunk: Any) -> None:
        if len(reasoning_of(received)) >= 4 * EVERY and not answer_read[0].is_set():
            during.append(len(received))

    await drain(stream, received, watch)
    assert content_of(received) == "An answer."
    assert auditor.gate_timeouts == 0
    # The chunk that made the checkpoint due, and every thinking token after it, went out while
    # its audit was pending: the stream was not held for it, and nothing queued up behind it.
    assert len(during) == 10 * EVERY - EVERY + 1
    assert auditor.stages() == [Stage.CHECKPOINT, Stage.THINKING, Stage.FINAL]
    assert len((auditor.seen[0].thinking or "").split()) == EVERY  # taken when it fell due
    assert auditor.most_at_once == 1


async def test_buffer_mode_reads_on_while_a_checkpoint_is_audited(
    server: OpenAIServer, client: Any
) -> None:
    thinking = "".join(thinking_tokens(6 * EVERY))
    events = chat_completion_chunks(reasoning_content=thinking_tokens(6 * EVERY))
    read_all: list[threading.Event] = []
    auditor = RecordingAuditor(
        gate=lambda t: read_all[0] if t.metadata.get("checkpoint") == 1 else None
    )
    # After the thinking (event 0 is the role chunk) the upstream waits until the first
    # checkpoint's audit is over, so the stream hears it before the output ends.
    control = StreamControl(pauses={1 + 6 * EVERY: auditor.ended(1)})
    server.enqueue(ScriptedResponse.sse(events, control=control))
    guarded(client, auditor, early_stop=False)
    stream = await open_stream(client)
    # The first checkpoint's audit ends only once the stream has read all of the thinking: a
    # stream that waited for the audit would never get there (gate timeout).
    read_all.append(when_fed(stream, lambda output: output.fed_chars >= len(thinking)))
    received: list[Any] = []
    await drain(stream, received)
    assert auditor.gate_timeouts == 0
    assert control.gave_up == []
    assert reasoning_of(received) == thinking
    # Nothing started while the first was in flight; the one taken when it ended had it all.
    assert auditor.stages() == [Stage.CHECKPOINT, Stage.CHECKPOINT, Stage.FINAL]
    whole = [thinking[: 4 * EVERY].strip(), thinking.strip()]
    assert [t.thinking for t in auditor.checkpoints()] == whole
    assert auditor.most_at_once == 1


async def test_checkpoints_never_queue_up(server: OpenAIServer, client: Any, flavor: str) -> None:
    """A slow first audit: the next checkpoint, taken when it ends, covers the latest text."""
    thinking = thinking_tokens(8 * EVERY)
    server.enqueue(ScriptedResponse.sse(chat_completion_chunks(reasoning_content=thinking)))
    halfway = threading.Event()
    auditor = RecordingAuditor(
        gate=lambda t: halfway if t.metadata.get("checkpoint") == 1 else None
    )
    guarded(client, auditor, stream_mode="passthrough", early_stop=False)
    stream = await open_stream(client)
    received: list[Any] = []

    async def watch(chunk: Any) -> None:
        if len(reasoning_of(received)) >= 4 * 4 * EVERY and not halfway.is_set():
            # Four intervals went out while the first audit was held. Let it end, and read on
            # only once the stream's audit is over, so that the stream hears it next.
            halfway.set()
            assert await asyncio.to_thread(auditor.ended(1).wait, 10)

    await drain(stream, received, watch)
    assert auditor.gate_timeouts == 0
    checkpoints = auditor.checkpoints()
    # Eight intervals passed, but the one audit in flight kept the others from starting.
    assert len(checkpoints) < 8
    assert [t.metadata["checkpoint"] for t in checkpoints] == list(range(1, len(checkpoints) + 1))
    assert len((checkpoints[0].thinking or "").split()) == EVERY
    # The next one took the text as it was when the first was heard: the async stream hears it
    # before it reads on, the sync one with the next chunk.
    heard_at = 4 * EVERY if flavor == "async" else 4 * EVERY + 1
    assert len((checkpoints[1].thinking or "").split()) == heard_at
    assert auditor.most_at_once == 1


async def test_closing_a_sync_stream_ends_its_checkpoint_audit_first(
    server: OpenAIServer,
) -> None:
    """Finding: a sync stream closed while a checkpoint was audited ran the audit of what it
    had shown alongside the checkpoint's (two audits of one stream at once) and left the
    checkpoint's running: its record reached the sinks after the stream had ended, and its
    decision never reached ``stream.decisions``. A thread cannot be cancelled: it is waited
    for, and its decision recorded, before the audit of what was shown."""
    server.enqueue(
        ScriptedResponse.sse(chat_completion_chunks(reasoning_content=thinking_tokens(96)))
    )
    auditing, closing = threading.Event(), threading.Event()

    def gate(trace: Trace) -> threading.Event | None:
        if trace.stage is not Stage.CHECKPOINT:
            return None
        auditing.set()
        return closing

    auditor = RecordingAuditor(gate=gate)
    with openai.OpenAI(base_url=server.base_url, api_key="test", max_retries=0) as client:
        _, sink = guarded(client, auditor, stream_mode="passthrough")
        stream = await open_stream(client)
        for count, _chunk in enumerate(stream):
            if count == 2 * EVERY:
                break
        assert await asyncio.to_thread(auditing.wait, 10)  # the first checkpoint is held
        assert auditor.running == 1
        closing.set()
        stream.close()
        assert auditor.running == 0  # nothing of this stream is audited after close()
    assert auditor.gate_timeouts == 0
    assert auditor.most_at_once == 1
    assert auditor.stages() == [Stage.CHECKPOINT, Stage.PARTIAL]
    assert [r.trace.stage for r in sink.records if r.trace is not None] == auditor.stages()
    assert [d.verdict.status for d in stream.decisions] == [AuditStatus.OK] * 2


# -- auditor errors -----------------------------------------------------------------------------


async def test_a_failed_checkpoint_takes_the_policys_error_action(
    server: OpenAIServer, client: Any
) -> None:
    control = StreamControl()
    thinking = thinking_tokens(6 * EVERY)
    server.enqueue(
        ScriptedResponse.sse(chat_completion_chunks(reasoning_content=thinking), control=control)
    )
    auditor = RecordingAuditor(fail=lambda t: t.stage is Stage.CHECKPOINT)
    guarded(client, auditor, stream_mode="passthrough")  # default policy: escalate, held as block
    stream = await open_stream(client)
    with pytest.raises(Escalated) as caught:
        await drain(stream, [])
    decision = caught.value.decision
    assert decision.verdict.status is AuditStatus.AUDITOR_ERROR
    assert decision.escalation_id is not None
    assert auditor.stages() == [Stage.CHECKPOINT]
    assert stream.response.is_closed


@pytest.mark.parametrize("how", ["error_verdict", "auditor_raises"])
async def test_a_failed_checkpoint_under_allow_lets_the_stream_run_on(
    server: OpenAIServer, client: Any, how: str
) -> None:
    thinking = thinking_tokens(3 * EVERY)
    events = chat_completion_chunks(reasoning_content=thinking, content="Fine.")
    server.enqueue(ScriptedResponse.sse(events))

    def failing(trace: Trace) -> bool:
        return trace.stage is Stage.CHECKPOINT

    auditor = (
        RecordingAuditor(fail=failing)
        if how == "error_verdict"
        else RecordingAuditor(raises=failing)
    )
    guarded(client, auditor, policy=Policy(auditor_error=Action.ALLOW))
    stream = await open_stream(client)
    received: list[Any] = []
    await drain(stream, received)
    assert content_of(received) == "Fine."
    stages = auditor.stages()
    checkpoints = len(stages) - 2  # how many fell due while none was in flight varies
    assert checkpoints >= 1
    assert stages == [Stage.CHECKPOINT] * checkpoints + [Stage.THINKING, Stage.FINAL]
    statuses = [d.verdict.status for d in stream.decisions]
    assert statuses == [AuditStatus.AUDITOR_ERROR] * checkpoints + [AuditStatus.OK] * 2


# -- other shapes -------------------------------------------------------------------------------


async def test_no_schedule_no_checkpoints(server: OpenAIServer, client: Any) -> None:
    server.enqueue(
        ScriptedResponse.sse(
            chat_completion_chunks(reasoning_content=thinking_tokens(200), content="Done.")
        )
    )
    auditor = RecordingAuditor()
    guard_openai(client, Guard(auditor))
    await drain(await open_stream(client), [])
    assert auditor.stages() == [Stage.THINKING, Stage.FINAL]


async def test_responses_stream_is_cut_at_a_checkpoint(
    server: OpenAIServer, client: Any, flavor: str
) -> None:
    tokens = thinking_tokens(6 * EVERY, harmful_at=EVERY + 3)
    events = responses_events("An answer.", reasoning_summary=tokens)
    auditor = RecordingAuditor()
    # Four events open the response and its summary; each checkpoint is heard before the next
    # token goes out, so the second one sees the harm while the model is still thinking.
    pacing = paced_by_checkpoints(auditor, ["", "", "", "", *tokens], every_tokens=EVERY)
    control = StreamControl(pauses=pacing)
    server.enqueue(ScriptedResponse.sse(events, done=False, control=control), path="/v1/responses")
    guarded(client, auditor)
    result = client.responses.create(model="m", input="Plan a picnic.", stream=True)
    stream = await result if inspect.isawaitable(result) else result
    with pytest.raises(Blocked):
        await drain(stream, [])
    assert auditor.stages() == [Stage.CHECKPOINT, Stage.CHECKPOINT]
    assert HARM.strip() in (auditor.seen[-1].thinking or "")
    assert control.gave_up == []
