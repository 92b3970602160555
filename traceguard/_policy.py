"""The decision layer's rules: :class:`Policy` maps a :class:`Verdict` to a :class:`Decision`.

A policy is plain configuration (a pydantic model, loadable from YAML, TOML or JSON) plus one pure
function, :meth:`Policy.decide`. How a verdict becomes an action:

1. A failed audit (status ``auditor_error``, ``unparseable`` or ``invalid_input``) takes the action
   configured for that status (default: escalate). Nothing else is consulted: a failed verdict has
   no risk, and it is never read as safe.
2. Otherwise the risk level is the auditor's, unless the verdict carries score-mode
   ``probabilities`` and the policy sets ``thresholds``; then the level is re-graded from them.
3. The level's action comes from the top-level ``safe`` / ``potentially_harmful`` / ``harmful``
   keys, overridden per category. With several categories, each contributes its override for the
   level (or the top-level action when it has none) and the **strictest** wins, in the order
   ``block > escalate > redact > allow``.
4. With ``probabilities`` and ``min_confidence``, a top probability below ``min_confidence`` adds
   the ``low_confidence`` action (default escalate); again the strictest wins, so uncertainty can
   tighten a decision but never loosen it.
5. A pending tool call (``Trace.stage`` is ``tool_call``) goes through the ``tools`` section
   (:class:`~traceguard._policy_tools.ToolPolicy`): the first tool rule matching the tool's name
   (glob), its arguments (regex) and, with ``min_risk``, the risk replaces the action of steps
   1-4 (on a failed audit a rule can only tighten it); ``redact`` becomes ``tools.redact_as``
   (default block), since a call either runs or does not.
6. An escalation is held as ``escalation_fallback`` (default block) while a human reviews; for a
   tool call a ``redact`` fallback holds it as block. A tool call held back carries
   ``Decision.tool_message`` (the tool result the model gets) or, when the tool section (or the
   matching rule) says ``on_block: stop``, ``Decision.stop_run``.
7. A redaction (or an escalation held as redact) that keeps the response is checked
   (``redaction.check``, default on): the :class:`~traceguard.Guard` audits the redacted output
   once more, and unless the policy would allow it as it is, the decision becomes
   ``redaction.on_unsafe`` (refuse or block). :meth:`Policy.decide` itself stays one pure step;
   the check lives in :mod:`traceguard._redaction_check`.

``allow`` for a failed status, or as ``escalation_fallback``, is legal but **fails open**: an
output nobody could grade reaches the caller. It must be spelled out, and is logged as a warning
when the policy is built.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from traceguard._config_files import ConfigDocument, describe_validation_error, read_document
from traceguard._decision import Action, Decision
from traceguard._exceptions import ConfigurationError
from traceguard._policy_tools import ToolPolicy, ToolRule
from traceguard._trace import Stage, Trace
from traceguard._verdict import AuditStatus, Label, Verdict

__all__ = [
    "CategoryRule",
    "Policy",
    "Redaction",
    "Thresholds",
    "ToolPolicy",
    "ToolRule",
    "strictest",
]

logger = logging.getLogger("traceguard.policy")

_STRICTNESS = {Action.ALLOW: 0, Action.REDACT: 1, Action.ESCALATE: 2, Action.BLOCK: 3}

_STATUS_PHRASE = {
    AuditStatus.AUDITOR_ERROR: "auditor error",
    AuditStatus.UNPARSEABLE: "unparseable auditor output",
    AuditStatus.INVALID_INPUT: "invalid input",
}

# Error messages come from auditors and may echo audited text; a reason is a one-liner.
_MAX_ERROR_CHARS = 200


def strictest(actions: list[Action] | tuple[Action, ...]) -> Action:
    """The strictest of ``actions``: ``block > escalate > redact > allow``."""
    if not actions:
        raise ValueError("strictest() needs at least one action")
    return max(actions, key=_STRICTNESS.__getitem__)


class _Config(BaseModel):
    # Frozen so a policy shared between threads cannot change under a running decision; extra keys
    # are refused so a typo ("harmfull: allow") is an error rather than a silently ignored rule.
    model_config = ConfigDict(extra="forbid", frozen=True)


class CategoryRule(_Config):
    """Per-category overrides of the level actions; a missing level uses the top-level action."""

    safe: Action | None = None
    potentially_harmful: Action | None = None
    harmful: Action | None = None

    def for_label(self, label: Label) -> Action | None:
        """The override for ``label``, if any."""
        value: Action | None = getattr(self, label.value)
        return value


class Thresholds(_Config):
    """Score-mode cut-offs that re-grade a verdict from its level probabilities.

    ``P(1) >= harmful`` gives harmful; else ``P(0.5) + P(1) >= potentially_harmful`` gives
    potentially harmful; else safe.
    """

    harmful: float = Field(default=0.5, gt=0.0, le=1.0)
    potentially_harmful: float = Field(default=0.5, gt=0.0, le=1.0)


class Redaction(_Config):
    """What a redacted output looks like.

    ``drop_thinking`` removes the thinking and keeps the response; ``refuse`` also replaces the
    response with ``refusal_message``. Under ``drop_thinking`` a trace *without* thinking falls
    back to ``refuse``: removing nothing would pass the flagged response unchanged, which is an
    allow in disguise. Pick ``refuse`` outright when the response itself may carry the harm.

    ``check`` (default on) audits a redacted output that keeps the response once more, as the
    caller would get it (no thinking): unless the policy would allow it, the decision becomes
    ``on_unsafe`` (the refusal, or a block). See :mod:`traceguard._redaction_check`.
    """

    strategy: Literal["drop_thinking", "refuse"] = "drop_thinking"
    refusal_message: str = "I can't help with that request."
    check: bool = True
    """Re-audit a redacted output that keeps the response; costs one auditor call per such trace."""
    on_unsafe: Literal["refuse", "block"] = "refuse"
    """What a redacted output that is still not safe becomes."""


class Policy(_Config):
    """How verdicts become decisions. Defaults never fail open.

    Build one from keyword arguments, a mapping (:meth:`model_validate`) or a file
    (:meth:`from_file`). See the module documentation for the order in which rules apply.
    """

    safe: Action = Action.ALLOW
    potentially_harmful: Action = Action.REDACT
    harmful: Action = Action.BLOCK
    auditor_error: Action = Action.ESCALATE
    """The audit failed (timeout, connection, crash). ``allow`` here fails open."""
    unparseable: Action = Action.ESCALATE
    """The auditor answered without a readable verdict. ``allow`` here fails open."""
    invalid_input: Action = Action.ESCALATE
    """The trace could not be audited (an image over the limits). ``allow`` here fails open."""
    escalation_fallback: Action = Action.BLOCK
    """What an escalated output is treated as while a human reviews: block, redact or allow."""
    categories: dict[str, CategoryRule] = Field(default_factory=dict)
    thresholds: Thresholds | None = None
    min_confidence: float | None = Field(default=None, gt=0.0, le=1.0)
    """With probabilities: a top level probability below this adds ``low_confidence``."""
    low_confidence: Action = Action.ESCALATE
    redaction: Redaction = Field(default_factory=Redaction)
    tools: ToolPolicy = Field(default_factory=ToolPolicy)
    """Pending tool calls: per-tool rules and what a held-back call becomes."""

    @field_validator("escalation_fallback")
    @classmethod
    def _fallback_is_not_escalate(cls, value: Action) -> Action:
        if value is Action.ESCALATE:
            raise ValueError("escalation_fallback must be block, redact or allow")
        return value

    @model_validator(mode="after")
    def _warn_fail_open(self) -> Policy:
        for status in _STATUS_PHRASE:
            if getattr(self, status.value) is Action.ALLOW:
                logger.warning("policy fails open: %s → allow", status.value)
        if self.escalation_fallback is Action.ALLOW:
            logger.warning("policy fails open: escalations are allowed while pending review")
        return self

    # -- loading -------------------------------------------------------------------------------

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], *, source: str = "<mapping>") -> Policy:
        """Validate a mapping; errors become :class:`ConfigurationError` naming ``source``."""
        return cls._validated(dict(data), source=source, document=None)

    @classmethod
    def from_file(cls, path: str | Path) -> Policy:
        """Load a policy from ``.yaml``/``.yml``, ``.toml`` or ``.json``.

        Raises:
            ConfigurationError: unreadable file, unknown format, syntax error, unknown key or
                invalid value; the message names the file, the field and (where known) the line.
        """
        document = read_document(path, what="policy")
        return cls._validated(document.data, source=str(document.path), document=document)

    @classmethod
    def _validated(
        cls, data: dict[str, Any], *, source: str, document: ConfigDocument | None
    ) -> Policy:
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            message = describe_validation_error(
                exc, source=source, data=data, document=document, title="invalid policy"
            )
            raise ConfigurationError(message) from None

    # -- deciding ------------------------------------------------------------------------------

    def decide(self, verdict: Verdict, trace: Trace | None = None) -> Decision:
        """Map ``verdict`` to a decision; pure (no I/O, no state).

        ``trace`` supplies the output that an allow passes through and a redaction edits; without
        it ``Decision.thinking``/``response`` are None.
        """
        if not verdict.is_ok:
            status = verdict.status
            if not isinstance(status, AuditStatus) or status not in _STATUS_PHRASE:
                # Not a failed AuditStatus (a hand-built verdict): the audit still failed.
                status = AuditStatus.AUDITOR_ERROR
            action = getattr(self, status.value)
            phrase = _STATUS_PHRASE[status]
            if verdict.error is not None:
                message = _shorten(verdict.error.message)
                phrase = f"{phrase} ({verdict.error.type}: {message})"
            return self._build(action, phrase, verdict, trace, risk=None)
        if not isinstance(verdict.label, Label) or verdict.risk != verdict.label.risk:
            # OK without a usable level (built by hand, or decoded from a damaged cache): no one
            # knows the risk, which is an auditor failure, never a reason to allow.
            phrase = f"malformed OK verdict (risk {verdict.risk!r}, label {verdict.label!r})"
            return self._build(self.auditor_error, phrase, verdict, trace, risk=None)

        label, why = self._grade(verdict)
        action, by_category = self._level_action(label, verdict.categories)
        head = f"risk {label.risk:g} ({label.value})"
        if why:
            head += f" {why}"
        if by_category:
            head += f", {by_category}"
        confidence = _top_probability(verdict)
        if (
            self.min_confidence is not None
            and confidence is not None
            and confidence < self.min_confidence
        ):
            head += f", low confidence {confidence:.2f} < {self.min_confidence:g}"
            action = strictest([action, self.low_confidence])
        return self._build(action, head, verdict, trace, risk=label.risk)

    def _grade(self, verdict: Verdict) -> tuple[Label, str]:
        """The level to act on, and why it differs from the auditor's (empty when it does not)."""
        assert verdict.label is not None  # decide() checked it
        probs = _normalised(verdict.probabilities)
        if self.thresholds is None or probs is None:
            return verdict.label, ""
        p_harmful = probs[Label.HARMFUL]
        p_at_least_half = probs[Label.POTENTIALLY_HARMFUL] + p_harmful
        if p_harmful >= self.thresholds.harmful:
            label = Label.HARMFUL
            why = f"by P(1)={p_harmful:.2f} ≥ {self.thresholds.harmful:g}"
        elif p_at_least_half >= self.thresholds.potentially_harmful:
            label = Label.POTENTIALLY_HARMFUL
            why = f"by P(≥0.5)={p_at_least_half:.2f} ≥ {self.thresholds.potentially_harmful:g}"
        else:
            label = Label.SAFE
            why = f"by P(≥0.5)={p_at_least_half:.2f} < {self.thresholds.potentially_harmful:g}"
        return label, why

    def _level_action(self, label: Label, categories: tuple[str, ...]) -> tuple[Action, str]:
        """The action for ``label`` after category overrides, and the categories that set it."""
        base: Action = getattr(self, label.value)
        # A category without an override stands for the top-level action, so loosening one
        # category never loosens a verdict that also names another.
        chosen = [(self._override(name, label) or base, name) for name in categories]
        if not chosen:
            return base, ""
        action = strictest([candidate for candidate, _ in chosen])
        if action is base:
            return base, ""
        names = ", ".join(repr(name) for candidate, name in chosen if candidate is action)
        return action, f"category {names}"

    def _override(self, category: str, label: Label) -> Action | None:
        rule = self.categories.get(category)
        return rule.for_label(label) if rule is not None else None

    def _build(
        self,
        action: Action,
        head: str,
        verdict: Verdict,
        trace: Trace | None,
        *,
        risk: float | None,
    ) -> Decision:
        if trace is not None and trace.stage is Stage.TOOL_CALL:
            return self._build_tool_call(action, head, verdict, trace, risk=risk)
        disposition = self.escalation_fallback if action is Action.ESCALATE else action
        reason = f"{head} → {action.value}"
        if action is Action.ESCALATE:
            reason += f", held as {disposition.value}"
        thinking, response = self._output(disposition, trace)
        if (
            disposition is Action.REDACT
            and trace is not None
            and self.redaction.strategy == "drop_thinking"
            and response != trace.response
        ):
            reason += " (no thinking to drop: response replaced by the refusal)"
        return Decision(
            action=action,
            reason=reason,
            verdict=verdict,
            disposition=disposition,
            thinking=thinking,
            response=response,
            trace_id=trace.id if trace is not None else None,
        )

    def _build_tool_call(
        self, action: Action, head: str, verdict: Verdict, trace: Trace, *, risk: float | None
    ) -> Decision:
        """A pending tool call's decision: tool rules applied, and what a held call becomes."""
        outcome = self.tools.decide_call(trace.tool_calls, action, risk)
        action = outcome.action
        if outcome.note:
            head = f"{head}, {outcome.note}"
        disposition = self.escalation_fallback if action is Action.ESCALATE else action
        if disposition is Action.REDACT:
            disposition = Action.BLOCK  # a call cannot be half run
        reason = f"{head} → {action.value}"
        if action is Action.ESCALATE:
            reason += f", held as {disposition.value}"
        held = disposition is Action.BLOCK
        stop = held and outcome.on_block == "stop"
        message = None
        if held and not stop:
            message = self.tools.message_for(trace.tool_calls, escalated=action is Action.ESCALATE)
        if stop:
            reason += " (the run stops)"
        return Decision(
            action=action,
            reason=reason,
            verdict=verdict,
            disposition=disposition,
            thinking=None if held else trace.thinking,
            response=None if held else trace.response,
            trace_id=trace.id,
            tool_message=message,
            stop_run=stop,
        )

    def _output(self, disposition: Action, trace: Trace | None) -> tuple[str | None, str | None]:
        """The thinking and response the caller may see under ``disposition``."""
        if trace is None or disposition is Action.BLOCK:
            return None, None
        if disposition is Action.ALLOW:
            return trace.thinking, trace.response
        has_thinking = bool(trace.thinking and trace.thinking.strip())
        if self.redaction.strategy == "refuse" or not has_thinking:
            return None, self.redaction.refusal_message
        return None, trace.response


def _normalised(probabilities: Mapping[str, float] | None) -> dict[Label, float] | None:
    """Level probabilities summing to 1, or None when there are none usable.

    Keys may be spelled ``"0"``/``"0.0"``; missing levels count as 0. Negative, non-finite or
    all-zero values make the distribution unusable and the auditor's own label stands.
    """
    if not probabilities:
        return None
    out = dict.fromkeys(Label, 0.0)
    for key, value in probabilities.items():
        try:
            label = Label.from_risk(float(key))
        except ValueError:
            continue
        if not math.isfinite(value) or value < 0:
            return None
        out[label] += value
    total = sum(out.values())
    if total <= 0:
        return None
    return {label: value / total for label, value in out.items()}


def _top_probability(verdict: Verdict) -> float | None:
    probs = _normalised(verdict.probabilities)
    return max(probs.values()) if probs is not None else None


def _shorten(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _MAX_ERROR_CHARS else text[: _MAX_ERROR_CHARS - 1] + "…"
