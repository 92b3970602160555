"""What the decision layer does with a verdict: :class:`Action` and :class:`Decision`."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from traceguard._verdict import Verdict

__all__ = ["Action", "Decision"]


class Action(str, enum.Enum):
    """What happens to an audited output."""

    ALLOW = "allow"
    """Pass the output through unchanged."""
    REDACT = "redact"
    """Pass a redacted output: thinking removed, or the response replaced by a refusal."""
    BLOCK = "block"
    """Stop the output; integrations raise :class:`~traceguard.Blocked`."""
    ESCALATE = "escalate"
    """Send to a human reviewer; meanwhile the output is treated as ``Decision.disposition``."""

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class Decision:
    """The decision layer's answer for one trace.

    ``action`` is what the policy chose. ``disposition`` is what happens to the output now: the
    same as ``action`` except for ESCALATE, where it is the policy's fallback while a human
    reviews (block, by default). Integrations act on ``disposition`` and report ``action``.
    """

    action: Action
    reason: str
    verdict: Verdict
    disposition: Action
    thinking: str | None = None
    """The thinking the caller may see: unchanged on allow, None when redaction removed it."""
    response: str | None = None
    """The response the caller may see: unchanged on allow, the refusal text when replaced."""
    trace_id: str | None = None

    def __post_init__(self) -> None:
        if self.disposition is Action.ESCALATE:
            raise ValueError("a decision's disposition cannot itself be escalate")
        if self.action is not Action.ESCALATE and self.disposition is not self.action:
            raise ValueError("only an escalation may have a disposition other than its action")

    @property
    def blocked(self) -> bool:
        """True when the output must not reach the caller now."""
        return self.disposition is Action.BLOCK

    @property
    def redacted(self) -> bool:
        """True when the caller gets the redacted ``thinking``/``response`` instead."""
        return self.disposition is Action.REDACT

    @property
    def escalated(self) -> bool:
        """True when a human reviewer was asked to look at this trace."""
        return self.action is Action.ESCALATE

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready mapping (the verdict nested under ``verdict``)."""
        return {
            "action": self.action.value,
            "disposition": self.disposition.value,
            "reason": self.reason,
            "trace_id": self.trace_id,
            "verdict": self.verdict.to_dict(),
            "redacted_thinking_removed": self.redacted and self.thinking is None,
        }
