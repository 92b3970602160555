"""Adversarial tests of the core: the guard, the policy, traces and sinks never fail open.

Each test here reproduces a hole found in review; without its fix the test fails.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from traceguard._auditor import Auditor
from traceguard._decision import Action
from traceguard._exceptions import Escalated
from traceguard._guard import Guard
from traceguard._policy import Policy
from traceguard._sinks import AuditRecord, JsonlSink
from traceguard._trace import Trace
from traceguard._verdict import AuditStatus, Label, Verdict
from traceguard.review import ReviewQueue

# A lone surrogate is what json.loads makes of "\ud800" in a log line: legal in a str, not UTF-8.
LONE = "\ud800"


class _Crashing(Auditor):
    """An auditor with a bug: it raises something that is not a TraceguardError."""

    name = "crashing"

    def __init__(self, exc: Exception) -> None:
        self.exc = exc

    def audit_batch(self, traces: Sequence[Trace]) -> list[Verdict]:
        raise self.exc


class _Returns(Auditor):
    """An auditor whose answer is whatever the test says (a wrong type, a bad verdict)."""

    name = "returns"

    def __init__(self, answer: Any) -> None:
        self.answer = answer

    def audit_batch(self, traces: Sequence[Trace]) -> list[Verdict]:
        result: list[Verdict] = self.answer
        return result


TRACE = Trace(query="q", thinking="t", response="r", id="t-1")


# -- a crashing auditor is an auditor error, recorded, never a bare exception --------------------


@pytest.mark.parametrize("exc", [RuntimeError("boom"), ValueError("bad"), KeyError("k")])
def test_auditor_crash_is_an_escalated_auditor_error(exc: Exception, tmp_path: Path) -> None:
    sink = JsonlSink(tmp_path / "audit.jsonl")
    guard = Guard(_Crashing(exc), sinks=[sink])
    with pytest.raises(Escalated) as caught:
        guard.check(TRACE)
    verdict = caught.value.decision.verdict
    assert verdict.status is AuditStatus.AUDITOR_ERROR
    assert verdict.error is not None and verdict.error.type == type(exc).__name__
    guard.close()
    # The failure left an audit record, as every other audit does.
    (line,) = (tmp_path / "audit.jsonl").read_text().splitlines()
    assert json.loads(line)["decision"]["verdict"]["status"] == "auditor_error"


async def test_auditor_crash_async_is_an_auditor_error() -> None:
    guard = Guard(_Crashing(RuntimeError("boom")), raise_on_block=False)
    decision = await guard.acheck(TRACE)
    assert decision.verdict.status is AuditStatus.AUDITOR_ERROR
    assert decision.blocked


def test_auditor_crash_with_fail_open_policy_follows_the_policy() -> None:
    # The user spelled out auditor_error: allow; a crash must obey it like any auditor error.
    guard = Guard(_Crashing(RuntimeError("boom")), Policy(auditor_error=Action.ALLOW))
    assert guard.check(TRACE).action is Action.ALLOW


def test_cancellation_is_not_swallowed() -> None:
    guard = Guard(_Crashing(asyncio.CancelledError()))  # type: ignore[arg-type]
    with pytest.raises(asyncio.CancelledError):
        guard.check(TRACE)


# -- malformed auditor answers ----------------------------------------------------------------


@pytest.mark.parametrize(
    "answer",
    [
        [None],
        [{"risk": 0}],
        "not a list",
        [Verdict(status=AuditStatus.OK, auditor="x")],  # OK without a level
        [Verdict(status=AuditStatus.OK, auditor="x", risk=0.0, label=Label.HARMFUL)],
    ],
    ids=["none", "dict", "str", "ok-without-label", "risk-label-mismatch"],
)
def test_malformed_auditor_answer_is_an_auditor_error(answer: Any) -> None:
    decision = Guard(_Returns(answer), raise_on_block=False).check(TRACE)
    assert decision.verdict.status is AuditStatus.AUDITOR_ERROR
    assert decision.action is Action.ESCALATE and decision.blocked


@pytest.mark.parametrize(
    "verdict",
    [
        Verdict(status=AuditStatus.OK, auditor="x"),
        Verdict(status=AuditStatus.OK, auditor="x", risk=0.0, label=Label.HARMFUL),
        Verdict(status=AuditStatus.OK, auditor="x", risk=1.0, label=Label.SAFE),
        Verdict(status="auditor_error", auditor="x"),  # type: ignore[arg-type]
    ],
    ids=["no-label", "risk0-harmful", "risk1-safe", "status-as-str"],
)
def test_policy_never_allows_a_malformed_verdict(verdict: Verdict) -> None:
    decision = Policy().decide(verdict, TRACE)
    assert decision.action is Action.ESCALATE
    assert decision.blocked
    assert decision.response is None


# -- hostile text in traces and records ----------------------------------------------------------


def test_content_hash_of_a_lone_surrogate() -> None:
    trace = Trace(query=f"q{LONE}", response="r")
    assert len(trace.content_hash()) == 64
    assert trace.content_hash() != Trace(query="q", response="r").content_hash()


def test_lone_surrogate_does_not_crash_check_with_a_sink(tmp_path: Path) -> None:
    # Before the fix the record could not be hashed, so check() raised UnicodeEncodeError even
    # for an allowed trace; the decision must come back and the record must be written.
    from traceguard.testing import ScriptedAuditor

    sink = JsonlSink(tmp_path / "a.jsonl")
    guard = Guard(ScriptedAuditor([0.0]), sinks=[sink])
    decision = guard.check(Trace(query=f"q{LONE}", response="r", id=f"id{LONE}"))
    assert decision.action is Action.ALLOW
    guard.close()
    assert guard.sink_errors == 0
    record = json.loads((tmp_path / "a.jsonl").read_bytes())
    assert record["trace_id"] == f"id{LONE}"  # the JSON escape decodes back to the same text


def test_jsonl_sink_writes_a_lone_surrogate_as_valid_json(tmp_path: Path) -> None:
    verdict = Verdict.ok(auditor="a", risk=1.0, analysis=f"echo {LONE} end")
    decision = Policy().decide(verdict, TRACE)
    with JsonlSink(tmp_path / "a.jsonl") as sink:
        sink.emit(AuditRecord.from_decision(TRACE, decision))
    raw = (tmp_path / "a.jsonl").read_bytes()
    raw.decode("utf-8")  # strict UTF-8 on disk
    assert json.loads(raw)["decision"]["verdict"]["analysis"] == f"echo {LONE} end"


def test_review_queue_keeps_an_escalation_with_a_lone_surrogate(tmp_path: Path) -> None:
    verdict = Verdict.failed(
        AuditStatus.UNPARSEABLE, auditor="a", error=ValueError(f"bad {LONE}"), raw_output=LONE
    )
    trace = Trace(query="q", response="r", id=f"t{LONE}")
    decision = Policy().decide(verdict, trace)
    queue = ReviewQueue(tmp_path / "review.sqlite")
    queue.emit(AuditRecord.from_decision(trace, decision))
    (pending,) = queue.pending()
    assert pending.verdict["raw_output"] == LONE
    assert "bad" in pending.reason
    queue.close()
    # The file holds valid UTF-8 text only.
    with sqlite3.connect(tmp_path / "review.sqlite") as conn:
        (trace_id,) = conn.execute("SELECT trace_id FROM escalations").fetchone()
    assert trace_id == "t\\ud800"
