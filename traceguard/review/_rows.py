"""The review queue's rows: which columns the store reads and writes, and a row as an
:class:`Escalation`.

The summary columns are what a list shows; the content columns (the audited text) are read only
for one item or an export. Decoding is lenient: a row an earlier version wrote (no stored content,
no categories) still reads.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any, Literal, cast

from traceguard.review._model import Escalation, EscalationContent, ImageInfo, SourceLocation

__all__ = [
    "CONTENT_COLUMNS",
    "FULL_SQL",
    "INSERT_COLUMNS",
    "INSERT_SQL",
    "SUMMARY_COLUMNS",
    "SUMMARY_SQL",
    "escalation_from_row",
]

# Written at insert and read back in every list: when, what was decided and why.
_DECISION_COLUMNS = (
    "created_at",
    "trace_id",
    "content_hash",
    "action",
    "disposition",
    "reason",
    "verdict_json",
)
# Likewise: the verdict's grade, the trace's origin, and whether its text was kept.
_GRADE_AND_ORIGIN_COLUMNS = (
    "audit_status",
    "risk",
    "label",
    "auditor",
    "categories",
    "integration",
    "model",
    "thread_id",
    "session_id",
    "run_id",
    "source_path",
    "source_line",
    "source_turn",
    "excerpt",
    "content_stored",
)
SUMMARY_COLUMNS = (
    "id",
    *_DECISION_COLUMNS,
    "status",
    "resolution",
    "reviewer",
    "note",
    "resolved_at",
    "escalation_id",
    *_GRADE_AND_ORIGIN_COLUMNS,
    "delivered_at",
    "delivered_to",
)
CONTENT_COLUMNS = ("query", "thinking", "response", "tool_calls_json", "history_json")
SUMMARY_SQL = ", ".join(SUMMARY_COLUMNS)
FULL_SQL = ", ".join(SUMMARY_COLUMNS + CONTENT_COLUMNS)
INSERT_COLUMNS = (
    "escalation_id",
    "record_id",
    *_DECISION_COLUMNS,
    *_GRADE_AND_ORIGIN_COLUMNS,
    *CONTENT_COLUMNS,
)
INSERT_SQL = (
    f"INSERT OR IGNORE INTO escalations ({', '.join(INSERT_COLUMNS)}) "
    f"VALUES ({', '.join('?' for _ in INSERT_COLUMNS)})"
)


def _json(text: str | None, default: Any) -> Any:
    if not text:
        return default
    try:
        return json.loads(text)
    except ValueError:
        return default


def escalation_from_row(
    row: Sequence[Any], *, full: bool = False, images: Sequence[Sequence[Any]] = ()
) -> Escalation:
    """A row of :data:`SUMMARY_COLUMNS` (then :data:`CONTENT_COLUMNS` when ``full``) and its
    image rows as an :class:`Escalation`."""
    values = dict(zip(SUMMARY_COLUMNS + (CONTENT_COLUMNS if full else ()), row, strict=True))
    verdict = _json(values["verdict_json"], {})
    source = None
    if values["source_path"]:
        source = SourceLocation(values["source_path"], values["source_line"], values["source_turn"])
    categories = tuple(c for c in (values["categories"] or "").split(",") if c)
    if not categories and isinstance(verdict, Mapping):
        categories = tuple(str(c) for c in verdict.get("categories") or ())
    content = None
    if full and values["content_stored"]:
        content = EscalationContent(
            query=values["query"] or "",
            response=values["response"] or "",
            thinking=values["thinking"],
            tool_calls=tuple(_json(values["tool_calls_json"], [])),
            history=tuple(_json(values["history_json"], [])),
        )
    return Escalation(
        id=int(values["id"]),
        created_at=values["created_at"],
        trace_id=values["trace_id"],
        content_hash=values["content_hash"],
        action=values["action"],
        disposition=values["disposition"],
        reason=values["reason"],
        verdict=verdict if isinstance(verdict, Mapping) else {},
        status=cast("Literal['pending', 'resolved']", values["status"]),
        resolution=cast("Literal['approved', 'rejected'] | None", values["resolution"]),
        reviewer=values["reviewer"],
        note=values["note"],
        resolved_at=values["resolved_at"],
        escalation_id=values["escalation_id"] or "",
        audit_status=values["audit_status"],
        risk=values["risk"],
        label=values["label"],
        auditor=values["auditor"],
        categories=categories,
        integration=values["integration"],
        model=values["model"],
        thread_id=values["thread_id"],
        session_id=values["session_id"],
        run_id=values["run_id"],
        source=source,
        excerpt=values["excerpt"],
        content_stored=bool(values["content_stored"]),
        content=content,
        images=tuple(
            ImageInfo(position=p, identity=i, mime=m, width=w, height=h, note=n)
            for p, i, m, w, h, n in images
        ),
        delivered_at=values["delivered_at"],
        delivered_to=values["delivered_to"],
    )
