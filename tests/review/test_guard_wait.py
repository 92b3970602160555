"""The decision flows back: a guard holds an escalated output until a reviewer decides.

Reviewers here resolve through their own :class:`EscalationStore` connection, as the web app in
another process would. The OpenAI tests run the real ``openai`` SDK against the loopback server.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import openai
import pytest

from traceguard import (
    Action,
    Blocked,
    ConfigurationError,
    Escalated,
    Guard,
    ReviewOutcome,
    ReviewQueue,
    Trace,
)
from traceguard.integrations.openai import guard_openai
from traceguard.review import EscalationStore
from traceguard.testing import ScriptedAuditor, Step
from traceguard.testing.openai_server import OpenAIServer, ScriptedResponse, chat_completion

TRACE = Trace(query="q", thinking="plan", response="answer", id="t-1")


class Reviewer:
    """A reviewer in another thread: resolves each new pending item as told."""

    def __init__(self, path: Path, resolution: Literal["approved", "rejected"], count: int = 1):
        self.store = EscalationStore(path)
        self.resolution = resolution
        self.count = count
        self.done: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set() and len(self.done) < self.count:
            for item in self.store.pending():
                self.store.resolve(item.escalation_id, self.resolution, "ana", "looked at it")
                self.done.append(item.escalation_id)
            self._stop.wait(0.02)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)
        self.store.close()


@pytest.fixture
def queue(tmp_path: Path) -> Iterator[ReviewQueue]:
    q = ReviewQueue(tmp_path / "reviews.sqlite")
    yield q
    q.close()


def waiting_guard(queue: ReviewQueue, *steps: Step | float, **options: Any) -> Guard:
    options.setdefault("review_timeout", 60)
    return Guard(ScriptedAuditor(steps), sinks=[queue], on_escalate="wait", **options)


def test_escalations_carry_the_queue_item_id(queue: ReviewQueue) -> None:
    guard = Guard(ScriptedAuditor([Step(error="timeout")]), sinks=[queue])
    with pytest.raises(Escalated) as info:
        guard.check(TRACE)
    eid = info.value.escalation_id
    assert eid and eid == info.value.decision.escalation_id
    assert queue.get(eid).trace_id == "t-1"
    assert info.value.decision.awaiting_review


def test_approved_output_goes_on_as_allowed(queue: ReviewQueue) -> None:
    reviewer = Reviewer(queue.path, "approved")
    try:
        decision = waiting_guard(queue, Step(error="timeout")).check(TRACE)
    finally:
        reviewer.stop()
    assert decision.action is Action.ESCALATE and decision.disposition is Action.ALLOW
    assert (decision.thinking, decision.response) == ("plan", "answer")
    assert decision.review is not None and decision.review.approved
    assert (decision.review.reviewer, decision.review.note) == ("ana", "looked at it")
    assert decision.escalation_id == reviewer.done[0]
    assert "approved by ana" in decision.reason


def test_rejected_output_is_blocked(queue: ReviewQueue) -> None:
    reviewer = Reviewer(queue.path, "rejected")
    try:
        with pytest.raises(Blocked) as info:
            waiting_guard(queue, Step(error="timeout")).check(TRACE)
    finally:
        reviewer.stop()
    assert type(info.value) is Blocked  # decided: no longer "held pending review"
    review = info.value.decision.review
    assert review is not None and review.resolution == "rejected"
    assert info.value.decision.response is None


def test_no_decision_in_time_takes_the_policy_fallback(queue: ReviewQueue) -> None:
    guard = waiting_guard(queue, Step(error="timeout"), review_timeout=0.2)
    with pytest.raises(Escalated) as info:
        guard.check(TRACE)
    review = info.value.decision.review
    assert review is not None and review.resolution == "timeout" and not review.decided
    from traceguard import Policy

    redact = waiting_guard(
        queue,
        Step(error="timeout"),
        review_timeout=0.2,
        policy=Policy(escalation_fallback="redact"),
    )
    decision = redact.check(TRACE)
    assert decision.disposition is Action.REDACT and decision.thinking is None


def test_batch_waits_for_every_escalation(queue: ReviewQueue) -> None:
    reviewer = Reviewer(queue.path, "approved", count=2)
    traces = [Trace(query="q", response=f"r{n}", id=f"t{n}") for n in range(3)]
    try:
        decisions = waiting_guard(
            queue, Step(error="timeout"), 0.0, Step(error="timeout")
        ).check_batch(traces)
    finally:
        reviewer.stop()
    assert [d.disposition for d in decisions] == [Action.ALLOW] * 3
    assert [d.review.resolution if d.review else None for d in decisions] == [
        "approved",
        None,
        "approved",
    ]


async def test_async_wait_never_blocks_the_event_loop(queue: ReviewQueue) -> None:
    guard = waiting_guard(queue, Step(error="timeout"), Step(error="timeout"))
    ticks = 0
    reviewed = asyncio.Event()

    async def ticker() -> None:
        nonlocal ticks
        while not reviewed.is_set():
            ticks += 1
            await asyncio.sleep(0.01)

    async def reviewer() -> None:
        store = EscalationStore(queue.path)
        while True:  # the reviewer runs on the same loop: it only gets turns if nobody blocks
            items = await asyncio.to_thread(store.pending)
            if len(items) == 2:
                break
            await asyncio.sleep(0.02)
        for item, resolution in zip(items, ("approved", "rejected"), strict=True):
            store.resolve(item.escalation_id, resolution, "bo")  # type: ignore[arg-type]
        store.close()
        reviewed.set()

    tick_task = asyncio.create_task(ticker())
    review_task = asyncio.create_task(reviewer())
    decisions = await guard.acheck_batch([Trace(query="q", response="a"), TRACE])
    await review_task
    await tick_task
    assert ticks > 0
    assert [d.disposition for d in decisions] == [Action.ALLOW, Action.BLOCK]
    outcome = await guard.await_review(decisions[0].escalation_id or "", timeout=1)
    assert outcome == decisions[0].review


def test_wait_for_review_directly(queue: ReviewQueue) -> None:
    guard = Guard(ScriptedAuditor([Step(error="timeout")]), sinks=[queue], raise_on_block=False)
    decision = guard.check(TRACE)
    eid = decision.escalation_id or ""
    assert guard.wait_for_review(eid, timeout=0.05).resolution == "timeout"
    queue.resolve(eid, "approved", reviewer="cy")
    outcome = guard.wait_for_review(eid, timeout=5)
    assert outcome == ReviewOutcome(
        escalation_id=eid,
        resolution="approved",
        reviewer="cy",
        note="",
        resolved_at=outcome.resolved_at,
    )
    assert guard.wait_for_review("no-such-item", timeout=0).resolution == "timeout"


def test_waiting_needs_a_queue() -> None:
    with pytest.raises(ConfigurationError, match="ReviewQueue"):
        Guard(ScriptedAuditor([]), on_escalate="wait")
    with pytest.raises(ConfigurationError, match="ReviewQueue"):
        Guard(ScriptedAuditor([])).wait_for_review("x", 1)
    with pytest.raises(ConfigurationError, match="on_escalate"):
        Guard(ScriptedAuditor([]), on_escalate="later")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="review_timeout"):
        Guard(ScriptedAuditor([]), review_timeout=0)


def test_a_fixed_escalation_id_is_used(queue: ReviewQueue) -> None:
    guard = Guard(ScriptedAuditor([Step(error="x")]), sinks=[queue], raise_on_block=False)
    traced = Trace(query="q", response="r", metadata={"escalation_id": "lg-123"})
    assert guard.check(traced).escalation_id == "lg-123"


# -- the OpenAI wrapper, end to end ------------------------------------------------------------


@pytest.fixture(scope="module")
def server() -> Iterator[OpenAIServer]:
    with OpenAIServer() as srv:
        yield srv


@pytest.mark.parametrize("flavor", ["sync", "async"])
@pytest.mark.parametrize("resolution", ["approved", "rejected"])
async def test_openai_call_waits_for_the_reviewer(
    server: OpenAIServer,
    queue: ReviewQueue,
    flavor: str,
    resolution: Literal["approved", "rejected"],
) -> None:
    server.reset()
    server.enqueue(ScriptedResponse.json(chat_completion("Here is the plan.", reasoning="hmm")))
    guard = waiting_guard(queue, Step(risk=1.0, categories=("weapons",)), policy=_escalate_harm())
    reviewer = Reviewer(queue.path, resolution)
    messages = [{"role": "user", "content": "How do I do it?"}]
    try:
        if flavor == "sync":
            client: Any = openai.OpenAI(base_url=server.base_url, api_key="k", max_retries=0)
            with guard_openai(client, guard):
                outcome = _call(
                    lambda: client.chat.completions.create(model="m", messages=messages)
                )
        else:
            client = openai.AsyncOpenAI(base_url=server.base_url, api_key="k", max_retries=0)
            with guard_openai(client, guard):
                outcome = await _acall(client.chat.completions.create(model="m", messages=messages))
    finally:
        reviewer.stop()
    item = queue.get(reviewer.done[0])
    assert item.integration == "openai" and item.model == "m"
    assert item.content is not None and item.content.query == "How do I do it?"
    if resolution == "approved":
        assert not isinstance(outcome, BaseException)
        assert outcome.choices[0].message.content == "Here is the plan."
    else:
        assert type(outcome) is Blocked  # decided by a reviewer: not "held pending review"
        assert outcome.decision.review is not None
        assert outcome.decision.review.resolution == "rejected"
    assert not server.unexpected


def _escalate_harm() -> Any:
    from traceguard import Policy

    return Policy(harmful="escalate")


def _call(fn: Any) -> Any:
    try:
        return fn()
    except Blocked as exc:
        return exc


async def _acall(awaitable: Any) -> Any:
    try:
        return await awaitable
    except Blocked as exc:
        return exc


def test_no_wait_when_the_queue_did_not_take_the_escalation(
    queue: ReviewQueue, caplog: pytest.LogCaptureFixture
) -> None:
    guard = waiting_guard(queue, Step(error="timeout"), review_timeout=3600)
    queue.close()  # emit now fails: nothing for a reviewer to decide
    with pytest.raises(Escalated) as info:
        guard.check(TRACE)  # returns at once (a wait would take the hour)
    assert info.value.decision.review is None
    assert guard.sink_errors == 1
    assert "not in the review queue" in caplog.text
