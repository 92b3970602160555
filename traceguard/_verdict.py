"""What an auditor says about one trace: :class:`Verdict`, its :class:`Label` and status."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["AuditStatus", "ErrorInfo", "Label", "Verdict"]


class Label(str, enum.Enum):
    """The three risk levels GuardTrace grades on, by name."""

    SAFE = "safe"
    POTENTIALLY_HARMFUL = "potentially_harmful"
    HARMFUL = "harmful"

    @property
    def risk(self) -> float:
        """The numeric risk of this level: 0, 0.5 or 1."""
        return _RISK_OF_LABEL[self]

    @classmethod
    def from_risk(cls, risk: float) -> Label:
        """The label of a numeric risk; only 0, 0.5 and 1 are levels."""
        for label, value in _RISK_OF_LABEL.items():
            if value == risk:
                return label
        raise ValueError(f"not a risk level: {risk!r} (expected 0, 0.5 or 1)")

    def __str__(self) -> str:
        return self.value


_RISK_OF_LABEL = {Label.SAFE: 0.0, Label.POTENTIALLY_HARMFUL: 0.5, Label.HARMFUL: 1.0}


class AuditStatus(str, enum.Enum):
    """Whether an audit produced a verdict, and if not, why not.

    Only ``OK`` carries a risk. The others are distinct outcomes the policy maps to actions of
    their own; none of them is ever read as safe.
    """

    OK = "ok"
    AUDITOR_ERROR = "auditor_error"
    """The auditor failed: timeout, connection, HTTP error, crash."""
    UNPARSEABLE = "unparseable"
    """The auditor answered, but its output holds no verdict."""
    INVALID_INPUT = "invalid_input"
    """The trace could not be audited as given (for example an image over the limits)."""

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class ErrorInfo:
    """Why an audit failed, as plain data (safe to log and serialise)."""

    type: str
    """The exception class name, e.g. ``AuditorTimeout``."""
    message: str

    @classmethod
    def from_exception(cls, exc: BaseException) -> ErrorInfo:
        """Describe an exception without its traceback."""
        return cls(type=type(exc).__name__, message=str(exc) or type(exc).__name__)

    def to_dict(self) -> dict[str, str]:
        """A JSON-ready mapping."""
        return {"type": self.type, "message": self.message}


@dataclass(frozen=True)
class Verdict:
    """The outcome of auditing one trace.

    Build one with :meth:`ok` or :meth:`failed` rather than by hand, so that ``risk`` and
    ``label`` are only ever set together with ``status=OK``.
    """

    status: AuditStatus
    auditor: str
    """Name of the auditor that produced this verdict (e.g. ``guardtrace-vl-3b@http``)."""
    risk: float | None = None
    """0, 0.5 or 1 when ``status`` is OK; None otherwise."""
    label: Label | None = None
    categories: tuple[str, ...] = ()
    """Categories in traceguard's taxonomy (see ``traceguard.taxonomy``), most relevant first."""
    analysis: str = ""
    """The auditor's own explanation, if it gave one."""
    raw_output: str | None = None
    """The auditor's output as received, kept for review and for unparseable outputs."""
    latency_ms: float = 0.0
    probabilities: Mapping[str, float] | None = None
    """Score mode: the auditor's probability of each level, keyed ``"0"``, ``"0.5"``, ``"1"``."""
    error: ErrorInfo | None = None
    details: Mapping[str, Any] = field(default_factory=dict)
    """Auditor-specific extras (per-category scores of an image guard, the model's own category)."""

    @classmethod
    def ok(
        cls,
        *,
        auditor: str,
        risk: float,
        categories: tuple[str, ...] = (),
        analysis: str = "",
        raw_output: str | None = None,
        latency_ms: float = 0.0,
        probabilities: Mapping[str, float] | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> Verdict:
        """A verdict with a risk level."""
        label = Label.from_risk(risk)
        return cls(
            status=AuditStatus.OK,
            auditor=auditor,
            risk=label.risk,
            label=label,
            categories=tuple(categories),
            analysis=analysis,
            raw_output=raw_output,
            latency_ms=latency_ms,
            probabilities=dict(probabilities) if probabilities is not None else None,
            details=dict(details or {}),
        )

    @classmethod
    def failed(
        cls,
        status: AuditStatus,
        *,
        auditor: str,
        error: ErrorInfo | BaseException,
        raw_output: str | None = None,
        latency_ms: float = 0.0,
        details: Mapping[str, Any] | None = None,
    ) -> Verdict:
        """A verdict without a risk: the audit failed for the reason in ``error``."""
        if status is AuditStatus.OK:
            raise ValueError("a failed verdict needs a status other than OK")
        info = error if isinstance(error, ErrorInfo) else ErrorInfo.from_exception(error)
        return cls(
            status=status,
            auditor=auditor,
            raw_output=raw_output,
            latency_ms=latency_ms,
            error=info,
            details=dict(details or {}),
        )

    @property
    def is_ok(self) -> bool:
        """True when the verdict carries a risk level."""
        return self.status is AuditStatus.OK

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready mapping of every field."""
        return {
            "status": self.status.value,
            "auditor": self.auditor,
            "risk": self.risk,
            "label": self.label.value if self.label is not None else None,
            "categories": list(self.categories),
            "analysis": self.analysis,
            "raw_output": self.raw_output,
            "latency_ms": round(self.latency_ms, 3),
            "probabilities": dict(self.probabilities) if self.probabilities is not None else None,
            "error": self.error.to_dict() if self.error is not None else None,
            "details": dict(self.details),
        }
