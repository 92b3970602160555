"""A redaction must leave a safe output: the redacted output is audited again before it goes out.

The default redaction for a trace graded 0.5 drops the thinking and keeps the response. That is
only a redaction when the harm was in the thinking; a response that itself carries the harm (a
concrete procedure graded 0.5) would pass with nothing but its thinking removed. So when
``Redaction.check`` is on (the default), every decision whose output keeps the response is
followed by a second audit of exactly what the caller would get: the same query, images and
history, no thinking (GuardTrace then grades with its two-level prompt), the kept response and
tool calls. The output stands only when that audit says the policy would **allow** it; anything
else (a level that is not allowed, or a failed audit, which never counts as safe) turns the
decision into the stronger redaction, ``on_unsafe``: ``refuse`` (the response is replaced by the
refusal message) or ``block``.

No check is needed, and none is made, when the redacted output keeps nothing of the model's:
the response was replaced by the refusal, or it was empty with no tool calls.

Without I/O: :class:`DecisionFlow` decides a batch, lists the checks it needs
(:attr:`DecisionFlow.checks`) and folds their verdicts back in (:meth:`DecisionFlow.resolve`);
:class:`~traceguard.Guard` only runs the audits, sync or async.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING

from traceguard._decision import Action, Decision
from traceguard._trace import Trace
from traceguard._verdict import Verdict

if TYPE_CHECKING:
    from traceguard._policy import Policy

__all__ = ["DecisionFlow", "checked_output"]


class DecisionFlow:
    """The decisions of one audited batch, redaction checks included.

    Protocol: build it from the traces and their verdicts (the policy decides at once); when
    :attr:`checks` is not empty, audit those traces and pass the verdicts, in order, to
    :meth:`resolve`. :attr:`decisions` then holds the final decision of every trace.
    """

    def __init__(self, policy: Policy, traces: Sequence[Trace], verdicts: Sequence[Verdict]):
        self.policy = policy
        self.decisions = [policy.decide(v, t) for t, v in zip(traces, verdicts, strict=True)]
        enabled = policy.redaction.check
        self._pending = [
            (index, checked_output(trace, decision))
            for index, (trace, decision) in enumerate(zip(traces, self.decisions, strict=True))
            if enabled and _needs_check(trace, decision)
        ]

    @property
    def checks(self) -> list[Trace]:
        """The redacted outputs to audit before the decisions stand."""
        return [trace for _, trace in self._pending]

    def resolve(self, verdicts: Sequence[Verdict]) -> None:
        """Fold the verdicts on :attr:`checks` (in order) into the decisions."""
        for (index, checked), verdict in zip(self._pending, verdicts, strict=True):
            self.decisions[index] = _after_check(
                self.policy, self.decisions[index], checked, verdict
            )
        self._pending = []


def checked_output(trace: Trace, decision: Decision) -> Trace:
    """The trace of what the caller gets under ``decision``: no thinking, the kept response."""
    return dataclasses.replace(
        trace,
        thinking=None,
        response=decision.response or "",
        metadata={**trace.metadata, "redaction_check": True},
    )


def _needs_check(trace: Trace, decision: Decision) -> bool:
    if decision.disposition is not Action.REDACT:
        return False
    if decision.response is None or decision.response != trace.response:
        return False  # replaced by the refusal: nothing of the model's is left to be unsafe
    return bool(trace.response.strip() or trace.tool_calls)


def _after_check(policy: Policy, decision: Decision, checked: Trace, verdict: Verdict) -> Decision:
    """``decision`` once its redacted output was audited: kept when the policy would allow that
    output as it is, else made stronger (``on_unsafe``)."""
    verdict_on_output = policy.decide(verdict, checked)
    if verdict_on_output.action is Action.ALLOW:
        return dataclasses.replace(
            decision, reason=f"{decision.reason}; redaction check: response alone allowed"
        )
    if verdict.is_ok:
        why = f"response alone is risk {verdict.risk:g} → {verdict_on_output.action.value}"
    else:
        why = f"failed ({verdict.status}), not known to be safe"
    if policy.redaction.on_unsafe == "block":
        action = Action.ESCALATE if decision.action is Action.ESCALATE else Action.BLOCK
        return dataclasses.replace(
            decision,
            action=action,
            disposition=Action.BLOCK,
            thinking=None,
            response=None,
            reason=f"{decision.reason}; redaction check: {why}; blocked",
        )
    return dataclasses.replace(
        decision,
        thinking=None,
        response=policy.redaction.refusal_message,
        reason=f"{decision.reason}; redaction check: {why}; response replaced by the refusal",
    )
