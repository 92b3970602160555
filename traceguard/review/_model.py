"""The review queue's value types: :class:`Escalation`, its parts, and list filters."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from traceguard._decision import ReviewOutcome
from traceguard._exceptions import TraceguardError
from traceguard._verdict import AuditStatus, ErrorInfo, Verdict

__all__ = [
    "AlreadyResolved",
    "Escalation",
    "EscalationContent",
    "EscalationFilter",
    "ImageInfo",
    "Page",
    "SourceLocation",
    "State",
    "StoredImage",
    "parse_age",
    "verdict_from_dict",
]

Status = Literal["pending", "resolved"]
Resolution = Literal["approved", "rejected"]
State = Literal["pending", "approved", "rejected"]
StateFilter = Literal["pending", "approved", "rejected", "resolved", "all"]
RiskFilter = Literal["safe", "potentially_harmful", "harmful", "failed"]

STATE_FILTERS: tuple[str, ...] = ("pending", "approved", "rejected", "resolved", "all")
RISK_FILTERS: tuple[str, ...] = ("safe", "potentially_harmful", "harmful", "failed")


class AlreadyResolved(TraceguardError, ValueError):
    """Resolving an escalation another reviewer settled first (the first one wins).

    Also a ``ValueError``, so that code written against the first queue keeps catching it.

    Attributes:
        escalation: the item as the winner left it (``reviewer``, ``resolution``, ``note``).
    """

    def __init__(self, escalation: Escalation) -> None:
        self.escalation = escalation
        super().__init__(
            f"escalation {escalation.escalation_id} is already {escalation.resolution} "
            f"by {escalation.reviewer}"
        )


@dataclass(frozen=True)
class SourceLocation:
    """Where an offline audit found the trace: log file, 1-based line, assistant turn."""

    path: str
    line: int | None = None
    turn: int | None = None

    def __str__(self) -> str:
        text = self.path
        if self.line is not None:
            text += f":{self.line}"
        if self.turn is not None:
            text += f" (turn {self.turn})"
        return text


@dataclass(frozen=True)
class ImageInfo:
    """One image of an escalated trace, as the queue keeps it.

    The queue never keeps an image as it came: in-memory images are decoded and re-encoded as a
    bounded PNG or JPEG thumbnail (so no SVG, script or polyglot file is ever stored or served);
    paths and URLs are named only (URLs without credentials or query).
    """

    position: int
    identity: str
    """``sha256:…``, ``path:…`` or ``url:…`` (redacted), as in ``ImageRef.identity()``."""
    mime: str | None = None
    """``image/png`` or ``image/jpeg`` when a thumbnail is stored, else None."""
    width: int | None = None
    height: int | None = None
    note: str | None = None
    """Why no thumbnail is stored, when none is."""

    @property
    def stored(self) -> bool:
        """True when a thumbnail can be served."""
        return self.mime is not None


@dataclass(frozen=True)
class StoredImage:
    """A stored thumbnail: re-encoded bytes and their content type."""

    mime: str
    data: bytes


@dataclass(frozen=True)
class EscalationContent:
    """What the reviewer judges: the audited turn (text capped, see ``ReviewQueue``)."""

    query: str
    response: str
    thinking: str | None = None
    tool_calls: tuple[Mapping[str, Any], ...] = ()
    """``{"name", "arguments", "id"}`` per tool call."""
    history: tuple[Mapping[str, Any], ...] = ()
    """The last turns before this one, ``{"role", "content"}`` each."""


@dataclass(frozen=True)
class Escalation:
    """One stored escalation and, once settled, its resolution.

    Listing returns items without ``content`` and ``images`` (None and empty); fetching one item
    by id fills them in. Items written by the first queue version, or with
    ``store_content=False``, have ``content_stored`` False and no content at all.
    """

    id: int
    """The row number: stable, increasing, used for paging."""
    created_at: str
    """ISO-8601 UTC time of the audit."""
    trace_id: str | None
    content_hash: str
    action: str
    disposition: str
    """What the output was held as while pending (block, by default)."""
    reason: str
    """The policy's reason: which rule escalated."""
    verdict: Mapping[str, Any]
    """The verdict as ``Verdict.to_dict()`` stored it (analysis, probabilities, raw output)."""
    status: Status
    resolution: Resolution | None = None
    reviewer: str | None = None
    note: str | None = None
    resolved_at: str | None = None
    escalation_id: str = ""
    """The public id (``Decision.escalation_id``); the URL of the item's review page uses it."""
    audit_status: str | None = None
    risk: float | None = None
    label: str | None = None
    auditor: str | None = None
    categories: tuple[str, ...] = ()
    integration: str | None = None
    """``openai``, ``langchain``, ``langgraph``, ``proxy``, ``offline``, … (trace metadata)."""
    model: str | None = None
    thread_id: str | None = None
    session_id: str | None = None
    run_id: str | None = None
    source: SourceLocation | None = None
    excerpt: str | None = None
    """The start of the audited text, for lists (None without stored content)."""
    content_stored: bool = False
    content: EscalationContent | None = None
    images: tuple[ImageInfo, ...] = field(default=())
    delivered_at: str | None = None
    """When a resumer took the resolution to the waiting agent (LangGraph threads)."""
    delivered_to: str | None = None

    @property
    def state(self) -> State:
        """``pending``, ``approved`` or ``rejected``."""
        if self.status == "pending" or self.resolution is None:
            return "pending"
        return self.resolution

    @property
    def analysis(self) -> str:
        """The auditor's explanation."""
        return str(self.verdict.get("analysis") or "")

    @property
    def probabilities(self) -> Mapping[str, float] | None:
        """Score mode: the auditor's probability of each risk level."""
        probs = self.verdict.get("probabilities")
        return probs if isinstance(probs, Mapping) else None

    def outcome(self) -> ReviewOutcome | None:
        """The reviewer's decision, or None while the item is pending."""
        if self.state == "pending":
            return None
        assert self.resolution is not None
        return ReviewOutcome(
            escalation_id=self.escalation_id,
            resolution=self.resolution,
            reviewer=self.reviewer,
            note=self.note,
            resolved_at=self.resolved_at,
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready mapping (for exports): metadata, verdict, resolution and content."""
        content = self.content
        return {
            "escalation_id": self.escalation_id,
            "created_at": self.created_at,
            "state": self.state,
            "reviewer": self.reviewer,
            "note": self.note,
            "resolved_at": self.resolved_at,
            "reason": self.reason,
            "action": self.action,
            "disposition": self.disposition,
            "audit_status": self.audit_status,
            "risk": self.risk,
            "label": self.label,
            "categories": list(self.categories),
            "auditor": self.auditor,
            "analysis": self.analysis,
            "probabilities": dict(self.probabilities) if self.probabilities else None,
            "integration": self.integration,
            "model": self.model,
            "trace_id": self.trace_id,
            "thread_id": self.thread_id,
            "session_id": self.session_id,
            "run_id": self.run_id,
            "source": None
            if self.source is None
            else {"path": self.source.path, "line": self.source.line, "turn": self.source.turn},
            "content_hash": self.content_hash,
            "content_stored": self.content_stored,
            "query": content.query if content else None,
            "thinking": content.thinking if content else None,
            "response": content.response if content else None,
            "tool_calls": [dict(call) for call in content.tool_calls] if content else None,
            "images": [image.identity for image in self.images],
        }


@dataclass(frozen=True)
class EscalationFilter:
    """Which items a listing or an export shows; every field narrows it (None: no filter)."""

    state: StateFilter = "all"
    risk: RiskFilter | None = None
    """A risk level by name, or ``failed`` for audits that produced no risk."""
    category: str | None = None
    auditor: str | None = None
    integration: str | None = None
    thread_id: str | None = None
    since: str | None = None
    """Created at or after this ISO date or time (UTC)."""
    until: str | None = None
    """Created before the end of this ISO date, or before this ISO time (UTC)."""

    def __post_init__(self) -> None:
        if self.state not in STATE_FILTERS:
            raise ValueError(f"state must be one of {', '.join(STATE_FILTERS)}")
        if self.risk is not None and self.risk not in RISK_FILTERS:
            raise ValueError(f"risk must be one of {', '.join(RISK_FILTERS)}")
        for name in ("since", "until"):
            value = getattr(self, name)
            if value is not None:
                _parse_moment(value)  # raises ValueError with the name of the bad value

    def bounds(self) -> tuple[str | None, str | None]:
        """``since`` and ``until`` as ISO UTC strings comparable with ``created_at``."""
        since = None if self.since is None else _iso(_parse_moment(self.since))
        until = None
        if self.until is not None:
            moment = _parse_moment(self.until)
            if _DATE_ONLY.fullmatch(self.until.strip()):
                moment += dt.timedelta(days=1)  # "until 2026-05-01" includes that whole day
            until = _iso(moment)
        return since, until


@dataclass(frozen=True)
class Page:
    """One page of a listing, newest first."""

    items: list[Escalation]
    total: int
    """How many items match the filter (all pages); see ``exact``."""
    exact: bool = True
    """False when counting stopped early (a category, date or thread filter matching more than
    the store's ``count_cap`` items): ``total`` is then a lower bound."""
    older: int | None = None
    """Pass as ``before`` for the next (older) page; None on the last page."""
    newer: int | None = None
    """Pass as ``after`` for the previous (newer) page; None on the first page."""


_DATE_ONLY = re.compile(r"\d{4}-\d{2}-\d{2}")
_AGE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*")
_AGE_UNITS = {"": 86400.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}


def _parse_moment(value: str) -> dt.datetime:
    try:
        moment = dt.datetime.fromisoformat(value.strip())
    except ValueError:
        raise ValueError(f"not an ISO date or time: {value!r}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.timezone.utc)
    return moment


def _iso(moment: dt.datetime) -> str:
    return moment.astimezone(dt.timezone.utc).isoformat(timespec="milliseconds")


def parse_age(value: str | float | dt.timedelta) -> dt.timedelta:
    """A retention age: a timedelta, seconds, or text like ``30d``, ``12h``, ``90m``, ``2w``.

    A bare number in text is days. Raises ``ValueError`` for anything else or a negative age.
    """
    if isinstance(value, dt.timedelta):
        age = value
    elif isinstance(value, int | float):
        age = dt.timedelta(seconds=float(value))
    else:
        match = _AGE.fullmatch(value)
        if match is None:
            raise ValueError(f"not an age: {value!r} (expected e.g. 30d, 12h, 90m, 2w)")
        age = dt.timedelta(seconds=float(match.group(1)) * _AGE_UNITS[match.group(2)])
    if age.total_seconds() < 0:
        raise ValueError("an age cannot be negative")
    return age


def verdict_from_dict(data: Mapping[str, Any]) -> Verdict:
    """The :class:`Verdict` that ``Verdict.to_dict()`` stored. A stored verdict that cannot be
    read back is an auditor error, never a risk level."""
    auditor = str(data.get("auditor") or "unknown")
    try:
        status = AuditStatus(data.get("status"))
        if status is AuditStatus.OK:
            probabilities = data.get("probabilities")
            return Verdict.ok(
                auditor=auditor,
                risk=float(data["risk"]),
                categories=tuple(str(c) for c in data.get("categories") or ()),
                analysis=str(data.get("analysis") or ""),
                raw_output=data.get("raw_output"),
                latency_ms=float(data.get("latency_ms") or 0.0),
                probabilities=dict(probabilities) if isinstance(probabilities, Mapping) else None,
                details=dict(data.get("details") or {}),
            )
        error = data.get("error") if isinstance(data.get("error"), Mapping) else {}
        assert isinstance(error, Mapping)
        return Verdict.failed(
            status,
            auditor=auditor,
            error=ErrorInfo(str(error.get("type") or "AuditorError"), str(error.get("message"))),
            raw_output=data.get("raw_output"),
        )
    except (KeyError, TypeError, ValueError):
        return Verdict.failed(
            AuditStatus.AUDITOR_ERROR,
            auditor=auditor,
            error=ErrorInfo("ReviewQueueError", "the stored verdict cannot be read back"),
        )
