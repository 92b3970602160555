"""What a client gets for the decisions on its completion. No I/O.

- every decision shows in headers: ``x-traceguard-action`` (the strictest action taken),
  ``x-traceguard-disposition`` (what happened to the output now) and, for escalations,
  ``x-traceguard-escalation-id`` (comma-separated when several outputs were escalated);
- allow: the upstream's bytes, unchanged;
- redact: the same JSON shape, edited (thinking removed or the answer replaced);
- block (and an escalation held as block): the OpenAI-style error of :func:`held_error`, or
  with ``block.mode: refusal`` the usual result carrying the refusal text. One held output holds
  them all back (``n > 1``): the client asked for one answer.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from traceguard._config_serve import BlockSpec
from traceguard._decision import Decision
from traceguard._policy import strictest
from traceguard._streaming import edit_for
from traceguard._trace import Trace
from traceguard._verdict import AuditStatus

from ._apis import GuardedApi, dump
from ._errors import ProxyError

__all__ = ["decision_headers", "held_error", "settle_result"]

ACTION_HEADER = "x-traceguard-action"
DISPOSITION_HEADER = "x-traceguard-disposition"
ESCALATION_HEADER = "x-traceguard-escalation-id"


def decision_headers(decisions: Sequence[Decision]) -> list[tuple[str, str]]:
    """The headers that tell a client what the guard decided."""
    if not decisions:
        return []
    headers = [
        (ACTION_HEADER, strictest([d.action for d in decisions]).value),
        (DISPOSITION_HEADER, strictest([d.disposition for d in decisions]).value),
    ]
    ids = [d.escalation_id for d in decisions if d.escalation_id]
    if ids:
        headers.append((ESCALATION_HEADER, ",".join(ids)))
    return headers


def held_error(decision: Decision, block: BlockSpec) -> ProxyError:
    """The error for an output held back; its message names the reason in our own words."""
    verdict = decision.verdict
    headers = tuple(decision_headers([decision]))
    if not verdict.is_ok:
        if verdict.status is AuditStatus.INVALID_INPUT:
            return ProxyError(
                "audit_invalid_input",
                "The output could not be audited (the request or answer holds something the "
                "auditor may not read, such as an image it is not allowed to load), and the "
                "guard's policy holds it back.",
                status=block.status,
                headers=headers,
            )
        return ProxyError(
            "audit_unavailable",
            "The auditor could not grade the output (it failed or answered nothing usable), "
            "and the guard's policy holds it back. Retry later.",
            headers=(*headers, ("retry-after", "1")),
        )
    if decision.escalated:
        return ProxyError(
            "content_escalated",
            f"The output was sent to human review (escalation {decision.escalation_id}) and is "
            "withheld meanwhile.",
            status=block.status,
            headers=headers,
        )
    label = verdict.label.value if verdict.label is not None else "unknown"
    return ProxyError(
        "content_blocked",
        f"The guard's policy blocked the output (graded {label}).",
        status=block.status,
        headers=headers,
    )


def settle_result(
    api: GuardedApi,
    result: Any,
    payload: bytes,
    traces: Sequence[Trace],
    decisions: Sequence[Decision],
    *,
    block: BlockSpec,
    refusal: str,
) -> bytes:
    """The body a client gets for a non-streamed result under ``decisions``.

    Raises:
        ProxyError: the output is held back and blocks are errors (``block.mode: error``).
    """
    held = next((d for d in decisions if d.blocked), None)
    if held is not None and block.mode == "error":
        raise held_error(held, block)
    edits = [
        edit_for(trace, held or decision, refusal)
        for trace, decision in zip(traces, decisions, strict=True)
    ]
    if all(edit.noop for edit in edits):
        return payload
    return dump(api.edited(result, traces, edits))
