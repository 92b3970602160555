"""What the decision layer does with a verdict: :class:`Action`, :class:`Decision`, and what a
human reviewer later made of an escalation: :class:`ReviewOutcome`."""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass
from typing import Any, Literal

from traceguard._verdict import Verdict

__all__ = ["Action", "Decision", "ReviewOutcome"]

Resolution = Literal["approved", "rejected", "timeout"]


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
class ReviewOutcome:
    """What became of an escalation a guard waited on: a reviewer's decision, or none in time.

    ``resolution`` is ``approved`` (the held output may go on as if allowed), ``rejected`` (the
    output stays blocked) or ``timeout`` (nobody decided in time; the policy's
    ``escalation_fallback`` stands).
    """

    escalation_id: str
    resolution: Resolution
    reviewer: str | None = None
    note: str | None = None
    resolved_at: str | None = None
    """ISO-8601 UTC time of the resolution (None on timeout)."""

    def __post_init__(self) -> None:
        if self.resolution not in ("approved", "rejected", "timeout"):
            raise ValueError(f"unknown review resolution {self.resolution!r}")

    @property
    def approved(self) -> bool:
        """True when a reviewer released the output."""
        return self.resolution == "approved"

    @property
    def decided(self) -> bool:
        """True when a reviewer decided (approved or rejected), False on timeout."""
        return self.resolution != "timeout"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready mapping; also the resume value of a paused LangGraph thread."""
        return {
            "escalation_id": self.escalation_id,
            "resolution": self.resolution,
            "reviewer": self.reviewer,
            "note": self.note,
            "resolved_at": self.resolved_at,
        }


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
    escalation_id: str | None = None
    """Set on every escalation: the id of its review queue item (``Guard`` assigns it)."""
    review: ReviewOutcome | None = None
    """Set once a guard waited for the reviewer: the outcome, which ``disposition`` reflects."""
    tool_message: str | None = None
    """For a pending tool call held back: the text the model gets as the tool's result, so the
    agent can recover. None when the call runs, or when the run stops (:attr:`stop_run`)."""
    stop_run: bool = False
    """For a pending tool call held back under ``on_block: stop``: end the agent's run."""

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

    @property
    def awaiting_review(self) -> bool:
        """True for an escalation no reviewer has decided yet (held as ``disposition``)."""
        return self.escalated and (self.review is None or not self.review.decided)

    def after_review(
        self, outcome: ReviewOutcome, *, thinking: str | None, response: str | None
    ) -> Decision:
        """This escalation once its review is known: approved, the held output (``thinking``,
        ``response``: the audited trace's) goes on as allowed; rejected, it is blocked; no
        decision (timeout), the policy's fallback stands. ``review`` records the outcome."""
        if not self.escalated:
            raise ValueError("only an escalation is reviewed")
        who = outcome.reviewer or "a reviewer"
        if outcome.resolution == "approved":
            return dataclasses.replace(
                self,
                disposition=Action.ALLOW,
                thinking=thinking,
                response=response,
                review=outcome,
                reason=f"{self.reason}; approved by {who}",
            )
        if outcome.resolution == "rejected":
            return dataclasses.replace(
                self,
                disposition=Action.BLOCK,
                thinking=None,
                response=None,
                review=outcome,
                reason=f"{self.reason}; rejected by {who}",
            )
        return dataclasses.replace(
            self,
            review=outcome,
            reason=f"{self.reason}; no review in time, held as {self.disposition.value}",
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready mapping (the verdict nested under ``verdict``)."""
        return {
            "action": self.action.value,
            "disposition": self.disposition.value,
            "reason": self.reason,
            "trace_id": self.trace_id,
            "verdict": self.verdict.to_dict(),
            "redacted_thinking_removed": self.redacted and self.thinking is None,
            "escalation_id": self.escalation_id,
            "review": self.review.to_dict() if self.review is not None else None,
            "tool_message": self.tool_message,
            "stop_run": self.stop_run,
        }
