"""The data model: verdicts, decisions, traces."""

from __future__ import annotations

import json

import pytest

from traceguard import (
    Action,
    AuditStatus,
    Blocked,
    Decision,
    ErrorInfo,
    Escalated,
    ImageRef,
    Label,
    ToolCall,
    Trace,
    Verdict,
)


def test_label_round_trips_risk() -> None:
    for risk, label in ((0, Label.SAFE), (0.5, Label.POTENTIALLY_HARMFUL), (1.0, Label.HARMFUL)):
        assert Label.from_risk(risk) is label
        assert label.risk == float(risk)
    with pytest.raises(ValueError):
        Label.from_risk(0.7)


def test_ok_verdict_sets_label_and_serialises() -> None:
    v = Verdict.ok(auditor="a", risk=0.5, categories=("cybersecurity",), analysis="x")
    assert v.is_ok and v.label is Label.POTENTIALLY_HARMFUL and v.risk == 0.5
    d = v.to_dict()
    assert json.loads(json.dumps(d))["label"] == "potentially_harmful"


def test_failed_verdict_has_no_risk() -> None:
    v = Verdict.failed(AuditStatus.AUDITOR_ERROR, auditor="a", error=TimeoutError("slow"))
    assert not v.is_ok and v.risk is None and v.label is None
    assert v.error == ErrorInfo("TimeoutError", "slow")
    with pytest.raises(ValueError):
        Verdict.failed(AuditStatus.OK, auditor="a", error=ErrorInfo("x", "y"))


def test_decision_disposition_rules() -> None:
    v = Verdict.ok(auditor="a", risk=1)
    d = Decision(action=Action.ESCALATE, reason="r", verdict=v, disposition=Action.BLOCK)
    assert d.blocked and d.escalated and not d.redacted
    with pytest.raises(ValueError):
        Decision(action=Action.BLOCK, reason="r", verdict=v, disposition=Action.ALLOW)
    with pytest.raises(ValueError):
        Decision(action=Action.ESCALATE, reason="r", verdict=v, disposition=Action.ESCALATE)
    err = Escalated(d)
    assert isinstance(err, Blocked) and err.decision is d


def test_content_hash_ignores_metadata_but_not_content() -> None:
    a = Trace(query="q", response="r", thinking="t", id="1", metadata={"x": 1})
    b = Trace(query="q", response="r", thinking="t", id="2")
    c = Trace(query="q", response="r", thinking=None)
    assert a.content_hash() == b.content_hash()
    assert a.content_hash() != c.content_hash()
    with_image = Trace(query="q", response="r", images=(ImageRef.from_bytes(b"\x89PNG..."),))
    assert with_image.content_hash() != Trace(query="q", response="r").content_hash()


def test_tool_calls_are_part_of_the_audited_response() -> None:
    t = Trace(query="q", response="ok", tool_calls=(ToolCall("rm", '{"path": "/"}'),))
    assert t.response_with_tools == 'ok\n[tool call] rm({"path": "/"})'
    assert t.summary()["tool_calls"] == ["rm"]
