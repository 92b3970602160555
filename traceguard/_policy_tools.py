"""The policy's tool rules: what happens to a pending tool call, by tool name and arguments.

A tool call is audited before the tool runs (``Trace.stage`` is :attr:`Stage.TOOL_CALL`,
``Trace.tool_calls`` holds the call, ``Trace.thinking`` the reasoning that led to it). The level
actions of the policy apply to it like to any trace; :class:`ToolPolicy` then refines them:

- **rules**, first match wins: a rule matches a call when its ``tool`` glob matches the tool's
  name, its ``arguments`` regex (if any) is found in the arguments JSON, and (with ``min_risk``)
  the audited risk is at least that high. The rule's ``action`` replaces the level action
  ("always escalate ``send_payment``", "block ``shell`` at risk 0.5 and above"). On a failed
  audit no risk is known: rules with ``min_risk`` do not match, and any other rule can only
  tighten the status action, never loosen it (an ``allow`` rule does not pass an ungraded call).
- **redact** means nothing for a call that either runs or does not: it becomes ``redact_as``
  (default block).
- a call held back (block, or an escalation held as block) becomes, per ``on_block``, a
  ``message`` the model gets as the tool's result (so the agent can recover) or ``stop`` (the run
  ends). A rule may override ``on_block`` for its calls.

Everything here is pure: :meth:`ToolPolicy.decide_call` maps what the level rules decided to what
the tool rules make of it.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from traceguard._decision import Action
from traceguard._trace import ToolCall

__all__ = ["ToolOutcome", "ToolPolicy", "ToolRule"]

BlockedCall = Literal["message", "stop"]

_STRICTNESS = {Action.ALLOW: 0, Action.REDACT: 1, Action.ESCALATE: 2, Action.BLOCK: 3}

DEFAULT_BLOCK_MESSAGE = (
    "The call to {tool} was not run: the safety policy blocked it. Do not retry it; continue "
    "without it, or tell the user that you cannot do this."
)
DEFAULT_ESCALATION_MESSAGE = (
    "The call to {tool} was not run: it is waiting for a human reviewer's approval. Do not "
    "retry it; continue without it, or tell the user that it needs approval."
)


class _Config(BaseModel):
    # Same reasons as the policy's own models: shared between threads, and typos are errors.
    model_config = ConfigDict(extra="forbid", frozen=True)


class ToolRule(_Config):
    """One tool rule: which calls it matches and what becomes of them."""

    tool: str = "*"
    """Glob over the tool's name (``*``, ``?``, ``[...]``; case-sensitive)."""
    arguments: str | None = None
    """Regular expression searched in the arguments as the model wrote them (usually JSON)."""
    min_risk: float | None = Field(default=None, ge=0.0, le=1.0)
    """Match only when the audited risk is at least this (0, 0.5 or 1); never on a failed audit."""
    action: Action
    """allow, block or escalate (``redact`` is refused: a call cannot be half run)."""
    on_block: BlockedCall | None = None
    """Overrides :attr:`ToolPolicy.on_block` for the calls this rule holds back."""

    @field_validator("action")
    @classmethod
    def _not_redact(cls, value: Action) -> Action:
        if value is Action.REDACT:
            raise ValueError("a tool rule's action must be allow, block or escalate")
        return value

    @field_validator("arguments")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"not a regular expression: {exc}") from None
        return value

    def matches(self, call: ToolCall, risk: float | None) -> bool:
        """True when this rule applies to ``call`` audited at ``risk`` (None: audit failed)."""
        if not fnmatch.fnmatchcase(call.name, self.tool):
            return False
        if self.arguments is not None and re.search(self.arguments, call.arguments) is None:
            return False
        if self.min_risk is not None:
            return risk is not None and risk >= self.min_risk
        return True

    def describe(self) -> str:
        """A short label for reasons: ``tool rule 'shell' (risk ≥ 0.5)``."""
        parts = [repr(self.tool)]
        if self.arguments is not None:
            parts.append(f"arguments ~ {self.arguments!r}")
        if self.min_risk is not None:
            parts.append(f"risk ≥ {self.min_risk:g}")
        return "tool rule " + ", ".join(parts)


@dataclass(frozen=True)
class ToolOutcome:
    """What the tool rules made of a pending call's decision."""

    action: Action
    """allow, block or escalate."""
    note: str
    """What changed and why, for the decision's reason (empty when nothing did)."""
    on_block: BlockedCall
    """What a held-back call becomes."""


class ToolPolicy(_Config):
    """The tool section of a :class:`~traceguard.Policy` (key ``tools``)."""

    rules: tuple[ToolRule, ...] = ()
    """Checked in order; the first rule matching a call decides it."""
    redact_as: Action = Action.BLOCK
    """What a level action of ``redact`` means for a call: block or escalate (or allow)."""
    on_block: BlockedCall = "message"
    """A held-back call becomes a ``message`` to the model, or ``stop`` ends the run."""
    message: str = DEFAULT_BLOCK_MESSAGE
    """The tool result the model gets for a blocked call; ``{tool}`` is the tool's name."""
    escalation_message: str = DEFAULT_ESCALATION_MESSAGE
    """The tool result for a call held while a human reviews; ``{tool}`` is the tool's name."""

    @field_validator("redact_as")
    @classmethod
    def _redact_as_is_an_outcome(cls, value: Action) -> Action:
        if value is Action.REDACT:
            raise ValueError("redact_as must be block, escalate or allow")
        return value

    def decide_call(
        self, calls: tuple[ToolCall, ...], action: Action, risk: float | None
    ) -> ToolOutcome:
        """Refine the level ``action`` for pending ``calls`` audited at ``risk``.

        ``risk`` is None when the audit failed; ``action`` is then the status action, which a
        rule may tighten only. With several calls each is decided and the strictest wins.
        """
        outcomes = [self._one(call, action, risk) for call in calls] or [
            self._one(None, action, risk)
        ]
        return max(outcomes, key=lambda outcome: _STRICTNESS[outcome.action])

    def _one(self, call: ToolCall | None, action: Action, risk: float | None) -> ToolOutcome:
        rule = None
        if call is not None:
            rule = next((r for r in self.rules if r.matches(call, risk)), None)
        note = ""
        on_block = self.on_block
        if rule is not None:
            on_block = rule.on_block or on_block
            chosen = rule.action
            if risk is None and _STRICTNESS[chosen] < _STRICTNESS[action]:
                chosen = action  # a failed audit is never loosened by a rule
                note = f"{rule.describe()} → {rule.action.value} ignored on a failed audit"
            elif chosen is not action:
                note = f"{rule.describe()} → {chosen.value}"
            action = chosen
        if action is Action.REDACT:
            action = self.redact_as
            redacted = f"a tool call cannot be redacted → {action.value}"
            note = f"{note}; {redacted}" if note else redacted
        return ToolOutcome(action=action, note=note, on_block=on_block)

    def message_for(self, calls: tuple[ToolCall, ...], *, escalated: bool) -> str:
        """The tool result the model gets for held-back ``calls``."""
        template = self.escalation_message if escalated else self.message
        names = ", ".join(dict.fromkeys(call.name for call in calls)) or "the tool"
        # str.replace, not str.format: a message with other braces (JSON examples) stays legal.
        return template.replace("{tool}", names)
