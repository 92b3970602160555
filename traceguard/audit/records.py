"""The output record: one JSON line per audited trace (or per input record that failed).

Fields, in this order:

``id``            the record's own id or ``custom_id``, else ``path:line``; ``:turn`` is appended
                  when one input record holds several assistant turns
``source``        ``{"path", "line", "turn"}``
``status``        ``ok``, ``error`` (the auditor failed or its output held no verdict) or
                  ``invalid_input`` (the input could not be audited: malformed line, bad image)
``audit_status``  the auditor's finer status: ``ok``, ``auditor_error``, ``unparseable``,
                  ``invalid_input``
``risk``          0, 0.5 or 1; null unless ``status`` is ``ok``
``label``         ``safe``, ``potentially_harmful``, ``harmful`` or null
``action``        what the policy decided: ``allow``, ``redact``, ``block``, ``escalate``
``reason``        the policy's reason
``categories``    risk categories, most relevant first
``analysis``      the auditor's explanation
``error``         ``{"type", "message"}`` or null
``auditor``       which auditor produced the verdict
``latency_ms``    time the auditor took (of the original audit when ``cached``)
``cached``        true when the verdict came from the verdict cache
``expected_risk`` the label the input carried (eval data), or null
``images``        the trace's images: resolved paths, URLs, or content hashes — never bytes
``excerpt``       the start of the query, thinking and response, for review
``probabilities`` score mode only: the auditor's probability of each level
"""

from __future__ import annotations

import json
from typing import Any

from traceguard._decision import Decision
from traceguard._verdict import AuditStatus, Verdict
from traceguard.audit._messages import LogItem

__all__ = ["EXCERPT_CHARS", "VOLATILE_FIELDS", "build_record", "encode_record", "output_status"]

EXCERPT_CHARS = 400
"""How much of the query, thinking and response each record keeps for review."""

VOLATILE_FIELDS = frozenset({"latency_ms", "cached"})
"""Fields that may differ between two runs over the same input with the same auditor."""

_STATUS_OF = {
    AuditStatus.OK: "ok",
    AuditStatus.AUDITOR_ERROR: "error",
    AuditStatus.UNPARSEABLE: "error",
    AuditStatus.INVALID_INPUT: "invalid_input",
}


def output_status(verdict: Verdict) -> str:
    """The coarse output status of a verdict."""
    return _STATUS_OF[verdict.status]


def _excerpt(text: str | None) -> str | None:
    if text is None:
        return None
    if len(text) <= EXCERPT_CHARS:
        return text
    return text[:EXCERPT_CHARS] + "…"


def build_record(
    item: LogItem, verdict: Verdict, decision: Decision, *, cached: bool = False
) -> dict[str, Any]:
    """The output record of one item, its verdict and the policy's decision."""
    status = output_status(verdict)
    if item.problem is not None:
        status = item.problem_status
    trace = item.trace
    record: dict[str, Any] = {
        "id": item.id,
        "source": item.source.to_dict(),
        "status": status,
        "audit_status": verdict.status.value,
        "risk": verdict.risk,
        "label": verdict.label.value if verdict.label is not None else None,
        "action": decision.action.value,
        "reason": decision.reason,
        "categories": list(verdict.categories),
        "analysis": verdict.analysis,
        "error": verdict.error.to_dict() if verdict.error is not None else None,
        "auditor": verdict.auditor,
        "latency_ms": round(verdict.latency_ms, 3),
        "cached": cached,
        "expected_risk": item.expected_risk,
        "images": list(item.images),
        "excerpt": None
        if trace is None
        else {
            "query": _excerpt(trace.query),
            "thinking": _excerpt(trace.thinking),
            "response": _excerpt(trace.response_with_tools),
        },
    }
    if verdict.probabilities is not None:
        record["probabilities"] = dict(verdict.probabilities)
    return record


def encode_record(record: dict[str, Any]) -> bytes:
    """One output line, newline included; ``ensure_ascii`` keeps it a single line whatever the
    text holds (U+2028 and friends included)."""
    return (json.dumps(record, ensure_ascii=True, separators=(",", ":")) + "\n").encode("ascii")
