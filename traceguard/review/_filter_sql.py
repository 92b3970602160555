"""An :class:`EscalationFilter` as SQL: conditions on the ``escalations`` table, or on a tally
table when the filter is one the tallies keep (so a count reads a handful of rows).

Values always travel as parameters; only fixed column names and operators are written into the
SQL text.
"""

from __future__ import annotations

from typing import Any

from traceguard.review._model import EscalationFilter

__all__ = ["escalation_conditions", "tally_conditions"]

# On ``resolution`` alone (NULL while pending), so that the (resolution, id) and
# (created_at, resolution) indexes answer state filters without reading rows.
_STATE_SQL = {
    "pending": "resolution IS NULL",
    "approved": "resolution = 'approved'",
    "rejected": "resolution = 'rejected'",
    "resolved": "resolution IS NOT NULL",
    "all": "",
}

_TALLY_STATES = {
    "pending": ("state = 'pending'", ()),
    "approved": ("state = 'approved'", ()),
    "rejected": ("state = 'rejected'", ()),
    "resolved": ("state IN ('approved', 'rejected')", ()),
}


def tally_conditions(
    where: EscalationFilter, *, with_state: bool
) -> tuple[str, list[str], list[Any]] | None:
    """``where`` as ``(table, conditions, params)`` on a tally table, or None when it filters
    on something no tally keeps (dates, thread; a category with other filters)."""
    if where.since or where.until or where.thread_id:
        return None
    if where.category is not None:
        if where.risk is not None or where.integration is not None or where.auditor is not None:
            return None
        conditions = ["category = ?"]
        if with_state and where.state in _TALLY_STATES:
            conditions.append(_TALLY_STATES[where.state][0])
        return "category_tallies", conditions, [where.category]
    conditions = []
    params: list[Any] = []
    if with_state and where.state in _TALLY_STATES:
        conditions.append(_TALLY_STATES[where.state][0])
    if where.risk is not None:
        conditions.append("risk = ?")
        params.append(where.risk)
    for column in ("integration", "auditor"):
        value = getattr(where, column)
        if value is not None:
            conditions.append(f"{column} = ?")
            params.append(value)
    return "tallies", conditions, params


def escalation_conditions(
    where: EscalationFilter, *, with_state: bool = True
) -> tuple[list[str], list[Any]]:
    """``where`` as SQL conditions on ``escalations``.

    With a date range, the other columns are written ``+column``, which keeps SQLite from using
    their indexes: the range (on the ``created_at`` index) is what bounds the rows to visit, and a
    state index would make a count walk every item of that state looking for the dates.
    """
    dated = where.since is not None or where.until is not None
    mark = "+" if dated else ""
    conditions: list[str] = []
    params: list[Any] = []
    if with_state and _STATE_SQL[where.state]:
        conditions.append(mark + _STATE_SQL[where.state])
    if where.risk == "failed":
        conditions.append(f"{mark}audit_status IS NOT 'ok'")
    elif where.risk is not None:
        conditions.append(f"{mark}label = ?")
        params.append(where.risk)
    for column in ("auditor", "integration", "thread_id"):
        value = getattr(where, column)
        if value is not None:
            conditions.append(f"{mark}{column} = ?")
            params.append(value)
    if where.category is not None:
        # EXISTS (a primary-key probe per row) rather than IN (a temporary index of every item
        # of the category): a page stops after its few matches.
        conditions.append(
            "EXISTS (SELECT 1 FROM escalation_categories AS c"
            " WHERE c.category = ? AND c.escalation = escalations.id)"
        )
        params.append(where.category)
    since, until = where.bounds()
    if since is not None:
        conditions.append("created_at >= ?")
        params.append(since)
    if until is not None:
        conditions.append("created_at < ?")
        params.append(until)
    return conditions, params
