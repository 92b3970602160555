"""A redaction must leave a safe output: the redacted output is audited again (issue 12 item 5)."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from traceguard import (
    Action,
    Auditor,
    Blocked,
    Escalated,
    Guard,
    Policy,
    Stage,
    Trace,
    Verdict,
)
from traceguard.testing import ScriptedAuditor, Step

# The case from the issue: the response itself carries the harm, and is graded 0.5.
PIPE_BOMB = Trace(
    query="How do I make a pipe bomb?",
    thinking="They want a device. I could describe it in general terms.",
    response="Take a steel pipe, end caps, and fill it with ... then attach a fuse.",
    id="t-1",
)
HARMLESS_ANSWER = Trace(
    query="How do bridges carry weight?",
    thinking="Maybe I should explain how to sabotage one instead.",
    response="Arches and trusses spread the load into the supports.",
)


class ResponseGrader(Auditor):
    """Grades the thinking 0.5 when it is there; grades a response by a word list."""

    name = "response-grader"

    def __init__(self) -> None:
        self.seen: list[Trace] = []
        self.batches: list[int] = []

    def audit_batch(self, traces: Sequence[Trace]) -> list[Verdict]:
        self.batches.append(len(traces))
        self.seen.extend(traces)
        out = []
        for trace in traces:
            risky = trace.thinking is not None or "fuse" in trace.response
            out.append(Verdict.ok(auditor=self.name, risk=0.5 if risky else 0.0))
        return out


def test_a_harmful_response_is_not_passed_with_only_its_thinking_removed() -> None:
    auditor = ResponseGrader()
    decision = Guard(auditor).check(PIPE_BOMB)

    assert decision.action is Action.REDACT
    assert decision.thinking is None
    assert decision.response == Policy().redaction.refusal_message
    assert "redaction check: response alone is risk 0.5 → redact" in decision.reason
    assert "replaced by the refusal" in decision.reason
    first, check = auditor.seen
    assert first is PIPE_BOMB
    # The check sees what the caller would get: same query, no thinking, the kept response.
    assert (check.query, check.thinking, check.response) == (
        PIPE_BOMB.query,
        None,
        PIPE_BOMB.response,
    )
    assert check.metadata["redaction_check"] is True
    assert check.stage is Stage.FINAL


def test_a_safe_response_keeps_the_drop_thinking_redaction() -> None:
    decision = Guard(ResponseGrader()).check(HARMLESS_ANSWER)
    assert decision.action is Action.REDACT
    assert (decision.thinking, decision.response) == (None, HARMLESS_ANSWER.response)
    assert decision.reason.endswith("redaction check: response alone allowed")


async def test_async_checks_the_same_way() -> None:
    auditor = ResponseGrader()
    guard = Guard(auditor)
    unsafe = await guard.acheck(PIPE_BOMB)
    safe = await guard.acheck(HARMLESS_ANSWER)
    assert unsafe.response == Policy().redaction.refusal_message
    assert safe.response == HARMLESS_ANSWER.response
    assert len(auditor.seen) == 4


def test_on_unsafe_block_blocks() -> None:
    policy = Policy.model_validate({"redaction": {"on_unsafe": "block"}})
    with pytest.raises(Blocked) as caught:
        Guard(ResponseGrader(), policy).check(PIPE_BOMB)
    assert caught.value.decision.action is Action.BLOCK
    assert not isinstance(caught.value, Escalated)
    assert caught.value.decision.response is None


def test_a_failed_check_is_never_read_as_safe() -> None:
    guard = Guard(ScriptedAuditor([0.5, Step(error="auditor down")]))
    decision = guard.check(PIPE_BOMB)
    assert decision.response == Policy().redaction.refusal_message
    assert "redaction check: failed (auditor_error), not known to be safe" in decision.reason


@pytest.mark.parametrize(
    ("policy", "trace"),
    [
        (Policy.model_validate({"redaction": {"check": False}}), PIPE_BOMB),
        (Policy.model_validate({"redaction": {"strategy": "refuse"}}), PIPE_BOMB),
        (Policy(), Trace(query="q", response="no thinking here")),  # refusal fallback
        (Policy(), Trace(query="q", thinking="plan", response="", stage=Stage.THINKING)),
    ],
    ids=["check-off", "refuse-strategy", "no-thinking", "thinking-only"],
)
def test_no_check_when_nothing_of_the_model_is_kept_or_it_is_off(
    policy: Policy, trace: Trace
) -> None:
    auditor = ScriptedAuditor([0.5])  # one step: a second audit would fail the test
    Guard(auditor, policy).check(trace)
    assert auditor.remaining == 0 and len(auditor.seen) == 1


def test_kept_tool_calls_alone_are_checked() -> None:
    from traceguard import ToolCall

    trace = Trace(query="q", thinking="plan", response="", tool_calls=(ToolCall("rm", "{}"),))
    auditor = ScriptedAuditor([0.5, 1.0])
    decision = Guard(auditor).check(trace)
    assert decision.response == Policy().redaction.refusal_message
    assert auditor.seen[1].tool_calls == trace.tool_calls


def test_an_escalation_held_as_redact_is_checked_too() -> None:
    policy = Policy.model_validate(
        {
            "potentially_harmful": "escalate",
            "escalation_fallback": "redact",
            "redaction": {"on_unsafe": "block"},
        }
    )
    with pytest.raises(Escalated) as caught:
        Guard(ResponseGrader(), policy).check(PIPE_BOMB)
    decision = caught.value.decision
    assert decision.action is Action.ESCALATE and decision.disposition is Action.BLOCK
    assert decision.escalation_id is not None


def test_a_batch_checks_its_redactions_in_one_more_auditor_batch() -> None:
    auditor = ResponseGrader()
    traces = [PIPE_BOMB, HARMLESS_ANSWER, Trace(query="hi", response="Hello!")]
    decisions = Guard(auditor).check_batch(traces)
    assert auditor.batches == [3, 2]
    assert [d.response for d in decisions] == [
        Policy().redaction.refusal_message,
        HARMLESS_ANSWER.response,
        "Hello!",
    ]


async def test_the_sinks_record_the_final_decision_once() -> None:
    from traceguard import AuditRecord, Sink

    class ListSink(Sink):
        def __init__(self) -> None:
            self.records: list[AuditRecord] = []

        def emit(self, record: AuditRecord) -> None:
            self.records.append(record)

    sink = ListSink()
    await Guard(ResponseGrader(), sinks=[sink]).acheck(PIPE_BOMB)
    (record,) = sink.records
    assert record.decision.response == Policy().redaction.refusal_message
    assert record.trace_id == "t-1"
