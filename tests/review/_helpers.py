"""Shared builders for the review tests."""

from __future__ import annotations

import io
import uuid
from collections.abc import Mapping
from typing import Any

from traceguard import AuditRecord, Policy, Trace
from traceguard._decision import Decision
from traceguard._exceptions import AuditorTimeout
from traceguard._images import ImageRef
from traceguard._trace import ToolCall
from traceguard._verdict import AuditStatus, Verdict

ESCALATE_POLICY = Policy(harmful="escalate", potentially_harmful="escalate")


def png_bytes(
    size: tuple[int, int] = (32, 24), color: tuple[int, int, int] = (200, 30, 30)
) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def escalated(
    trace: Trace,
    *,
    risk: float | None = 1.0,
    categories: tuple[str, ...] = ("violence",),
    analysis: str = "the thinking plans harm",
    escalation_id: str | None = None,
) -> AuditRecord:
    """The audit record of an escalation of ``trace`` (risk None: an auditor timeout)."""
    if risk is None:
        verdict = Verdict.failed(
            AuditStatus.AUDITOR_ERROR, auditor="t", error=AuditorTimeout("slow")
        )
    else:
        verdict = Verdict.ok(
            auditor="guardtrace-test",
            risk=risk,
            categories=categories,
            analysis=analysis,
            probabilities={"0": 0.1, "0.5": 0.2, "1": 0.7},
        )
    decision = ESCALATE_POLICY.decide(verdict, trace)
    decision = Decision(
        action=decision.action,
        reason=decision.reason,
        verdict=decision.verdict,
        disposition=decision.disposition,
        trace_id=trace.id,
        escalation_id=escalation_id or uuid.uuid4().hex,
    )
    return AuditRecord.from_decision(trace, decision)


def trace(
    n: int = 0,
    *,
    thinking: str | None = "step 1: plan",
    metadata: Mapping[str, Any] | None = None,
    images: tuple[ImageRef, ...] = (),
) -> Trace:
    return Trace(
        query=f"question {n}",
        thinking=thinking,
        response=f"answer {n}",
        id=f"t{n}",
        model="m-1",
        images=images,
        tool_calls=(ToolCall(name="search", arguments='{"q": "x"}', id="c1"),),
        metadata=dict(metadata or {"integration": "openai", "session_id": "s-9"}),
    )
