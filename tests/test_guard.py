"""Guard: audit → policy → sinks → decision or Blocked/Escalated, sync and async alike."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from traceguard._auditor import Auditor
from traceguard._decision import Action, Decision
from traceguard._exceptions import AuditorUnavailable, Blocked, Escalated
from traceguard._guard import Guard
from traceguard._policy import Policy
from traceguard._sinks import AuditRecord, BackgroundSink, JsonlSink, Sink
from traceguard._trace import Trace
from traceguard._verdict import AuditStatus, Verdict
from traceguard._webhook import WebhookSink
from traceguard.review import ReviewQueue
from traceguard.testing import ScriptedAuditor, Step

TRACE = Trace(query="q", thinking="reasoning", response="answer", id="t-1")


def guard(*steps: Step | float, **kwargs: object) -> Guard:
    return Guard(ScriptedAuditor(steps), **kwargs)  # type: ignore[arg-type]


# -- levels -------------------------------------------------------------------------------------


def test_safe_is_allowed_unchanged() -> None:
    decision = guard(0.0).check(TRACE)
    assert decision.action is Action.ALLOW
    assert (decision.thinking, decision.response) == ("reasoning", "answer")


def test_potentially_harmful_is_redacted() -> None:
    # The second step grades the redacted output (the response alone): safe, so it stands.
    decision = guard(0.5, 0).check(TRACE)
    assert decision.action is Action.REDACT
    assert (decision.thinking, decision.response) == (None, "answer")
    assert decision.reason.endswith("redaction check: response alone allowed")


def test_refuse_redaction_replaces_the_response() -> None:
    policy = Policy.model_validate({"redaction": {"strategy": "refuse", "refusal_message": "No."}})
    decision = guard(0.5, policy=policy).check(TRACE)
    assert (decision.thinking, decision.response) == (None, "No.")


def test_harmful_raises_blocked_with_the_decision() -> None:
    with pytest.raises(Blocked) as info:
        guard(1.0).check(TRACE)
    assert type(info.value) is Blocked
    decision = info.value.decision
    assert decision.action is Action.BLOCK
    assert decision.verdict.risk == 1.0
    assert decision.trace_id == "t-1"
    assert "risk 1 (harmful) → block" in str(info.value)


def test_raise_on_block_false_returns_the_blocked_decision() -> None:
    decision = guard(1.0, raise_on_block=False).check(TRACE)
    assert decision.blocked and decision.response is None


# -- failures never fail open -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("step", "status"),
    [
        (Step(error="connection refused"), AuditStatus.AUDITOR_ERROR),
        (Step(unparseable="“Judgment”: 0 (but not really)"), AuditStatus.UNPARSEABLE),
    ],
)
def test_failed_audits_escalate_and_block(step: Step, status: AuditStatus) -> None:
    with pytest.raises(Escalated) as info:
        guard(step).check(TRACE)
    decision = info.value.decision
    assert decision.action is Action.ESCALATE and decision.blocked
    assert decision.verdict.status is status
    assert decision.response is None


class _InvalidInputAuditor(Auditor):
    name = "strict"

    def audit_batch(self, traces: Sequence[Trace]) -> list[Verdict]:
        return [
            Verdict.failed(
                AuditStatus.INVALID_INPUT, auditor=self.name, error=ValueError("image too large")
            )
            for _ in traces
        ]


def test_invalid_input_escalates_and_blocks() -> None:
    with pytest.raises(Escalated) as info:
        Guard(_InvalidInputAuditor()).check(TRACE)
    assert "invalid input (ValueError: image too large)" in info.value.decision.reason


class _RaisingAuditor(Auditor):
    """Breaks the auditor contract by raising; the guard must still not let the output through."""

    def __init__(self, verdicts: int | None = None) -> None:
        self.verdicts = verdicts

    def audit_batch(self, traces: Sequence[Trace]) -> list[Verdict]:
        if self.verdicts is not None:
            return [Verdict.ok(auditor="x", risk=0.0)] * self.verdicts
        raise AuditorUnavailable("server down")


async def test_an_auditor_that_raises_is_an_auditor_error() -> None:
    with pytest.raises(Escalated) as info:
        Guard(_RaisingAuditor()).check(TRACE)
    assert info.value.decision.verdict.status is AuditStatus.AUDITOR_ERROR
    assert "AuditorUnavailable: server down" in info.value.decision.reason
    with pytest.raises(Escalated):
        await Guard(_RaisingAuditor()).acheck(TRACE)


def test_a_wrong_number_of_verdicts_is_an_auditor_error() -> None:
    decisions = Guard(_RaisingAuditor(verdicts=1)).check_batch([TRACE, TRACE])
    assert [d.verdict.status for d in decisions] == [AuditStatus.AUDITOR_ERROR] * 2
    assert all(d.blocked for d in decisions)


def test_escalation_with_redact_fallback_returns_redacted() -> None:
    policy = Policy(auditor_error=Action.ESCALATE, escalation_fallback=Action.REDACT)
    decision = guard(Step(error="timeout"), 0, policy=policy).check(TRACE)
    assert decision.escalated and decision.redacted
    assert (decision.thinking, decision.response) == (None, "answer")


# -- policy features through the guard ----------------------------------------------------------


def test_category_override() -> None:
    policy = Policy.model_validate(
        {"categories": {"extremism": {"potentially_harmful": "escalate"}}}
    )
    g = guard(Step(risk=0.5, categories=("extremism",)), Step(risk=0.5), policy=policy)
    with pytest.raises(Escalated):
        g.check(TRACE)
    assert g.check(TRACE).action is Action.REDACT


class _ScoreAuditor(Auditor):
    name = "score"

    def __init__(self, probabilities: dict[str, float]) -> None:
        self.probabilities = probabilities

    def audit_batch(self, traces: Sequence[Trace]) -> list[Verdict]:
        top = max(self.probabilities, key=self.probabilities.__getitem__)
        return [
            Verdict.ok(auditor=self.name, risk=float(top), probabilities=self.probabilities)
            for _ in traces
        ]


def test_thresholds_with_probabilities() -> None:
    policy = Policy.model_validate({"thresholds": {"harmful": 0.3, "potentially_harmful": 0.6}})
    # The most likely level is safe, but P(1) = 0.35 crosses the harmful threshold.
    auditor = _ScoreAuditor({"0": 0.5, "0.5": 0.15, "1": 0.35})
    with pytest.raises(Blocked):
        Guard(auditor, policy).check(TRACE)
    assert Guard(auditor).check(TRACE).action is Action.ALLOW


# -- batches and async parity -------------------------------------------------------------------

SCRIPT: tuple[Step | float, ...] = (0.0, 0.5, 1.0, Step(error="boom"), Step(unparseable="??"))


def _shape(decision: Decision) -> tuple[object, ...]:
    return (
        decision.action,
        decision.disposition,
        decision.reason,
        decision.thinking,
        decision.response,
        decision.trace_id,
    )


def test_check_batch_never_raises() -> None:
    decisions = guard(*SCRIPT).check_batch([TRACE] * len(SCRIPT))
    assert [d.action for d in decisions] == [
        Action.ALLOW,
        Action.REDACT,
        Action.BLOCK,
        Action.ESCALATE,
        Action.ESCALATE,
    ]


async def test_sync_and_async_agree(tmp_path: Path) -> None:
    sync_guard = guard(*SCRIPT, sinks=[JsonlSink(tmp_path / "s.jsonl")])
    async_guard = guard(*SCRIPT, sinks=[JsonlSink(tmp_path / "a.jsonl")])

    def outcome_sync() -> list[object]:
        out: list[object] = []
        for _ in SCRIPT:
            try:
                out.append(_shape(sync_guard.check(TRACE)))
            except Blocked as exc:
                out.append((type(exc).__name__, *_shape(exc.decision)))
        return out

    async def outcome_async() -> list[object]:
        out: list[object] = []
        for _ in SCRIPT:
            try:
                out.append(_shape(await async_guard.acheck(TRACE)))
            except Blocked as exc:
                out.append((type(exc).__name__, *_shape(exc.decision)))
        return out

    assert outcome_sync() == await outcome_async()
    batch_sync = [_shape(d) for d in guard(*SCRIPT).check_batch([TRACE] * 5)]
    batch_async = [_shape(d) for d in await guard(*SCRIPT).acheck_batch([TRACE] * 5)]
    assert batch_sync == batch_async
    sync_guard.close()
    await async_guard.aclose()

    def actions(path: Path) -> list[str]:
        lines = path.read_text().splitlines()
        return [json.loads(line)["decision"]["action"] for line in lines]

    assert actions(tmp_path / "s.jsonl") == actions(tmp_path / "a.jsonl")
    assert len(actions(tmp_path / "s.jsonl")) == 5


async def test_acheck_does_not_block_the_event_loop_on_a_slow_sink() -> None:
    class SlowSink(Sink):
        def emit(self, record: AuditRecord) -> None:
            time.sleep(0.2)

    g = guard(0.0, sinks=[SlowSink()])
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    task = asyncio.create_task(ticker())
    await g.acheck(TRACE)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert ticks >= 5


# -- sinks --------------------------------------------------------------------------------------


class _BrokenSink(Sink):
    def emit(self, record: AuditRecord) -> None:
        raise OSError("disk full")


def test_sink_failure_does_not_break_or_change_the_check(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "audit.jsonl"
    g = guard(0.0, 1.0, sinks=[_BrokenSink(), JsonlSink(path)])
    with caplog.at_level(logging.ERROR, logger="traceguard.guard"):
        assert g.check(TRACE).action is Action.ALLOW
        with pytest.raises(Blocked):
            g.check(TRACE)
    assert g.sink_errors == 2
    assert "disk full" in caplog.text
    # The healthy sink still got both records.
    assert len(path.read_text().splitlines()) == 2
    g.close()


def test_escalations_reach_the_review_queue(tmp_path: Path) -> None:
    queue = ReviewQueue(tmp_path / "review.db")
    g = guard(Step(error="timeout"), 1.0, 0.0, sinks=[queue], raise_on_block=False)
    g.check_batch([Trace(query="q", response="r", id=f"t{i}") for i in range(3)])
    pending = queue.pending()
    assert [e.trace_id for e in pending] == ["t0"]
    assert pending[0].reason.startswith("auditor error")
    g.close()


class _SlowSink(Sink):
    slow = True

    def emit(self, record: AuditRecord) -> None:
        pass


def test_slow_sinks_run_in_the_background(tmp_path: Path) -> None:
    slow = _SlowSink()
    g = guard(sinks=[slow])
    assert isinstance(g.sinks[0], BackgroundSink) and g.sinks[0].inner is slow
    plain = guard(sinks=[slow], background_slow_sinks=False)
    assert plain.sinks[0] is slow
    g.close()
    # The webhook queues and delivers on its own thread: it needs no background wrapper.
    webhook = WebhookSink("http://127.0.0.1:9/hook", allow_private=True, spill_dir=tmp_path)
    assert guard(sinks=[webhook]).sinks[0] is webhook
    webhook.close(timeout=0)


async def test_guard_context_managers_close_sinks(tmp_path: Path) -> None:
    sink = JsonlSink(tmp_path / "a.jsonl")
    with guard(0.0, sinks=[sink]) as g:
        g.check(TRACE)
    assert sink._fd is None
    sink2 = JsonlSink(tmp_path / "b.jsonl")
    async with guard(0.0, sinks=[sink2]) as g2:
        await g2.acheck(TRACE)
    assert sink2._fd is None
