"""Browsing the review queue: pages, neighbours, exports, counts and filter choices.

Every list pages by row id (keyset pagination) over an index, and counts come from the tally
tables when the filter allows, so a queue of 100,000 items lists as fast as one of 100.
:class:`BrowseQueries` is mixed into :class:`~traceguard.review.EscalationStore`, which owns the
connection and its lock.
"""

from __future__ import annotations

import dataclasses
import sqlite3
import threading
from collections.abc import Iterator
from typing import Any

from traceguard.review._filter_sql import escalation_conditions, tally_conditions
from traceguard.review._model import Escalation, EscalationFilter, Page
from traceguard.review._rows import FULL_SQL, SUMMARY_SQL, escalation_from_row

__all__ = ["BrowseQueries"]


class BrowseQueries:
    """The list queries of :class:`~traceguard.review.EscalationStore`."""

    # Provided by the store.
    count_cap: int
    _lock: threading.RLock

    def _db(self) -> sqlite3.Connection:
        raise NotImplementedError

    def pending(self, limit: int = 100) -> list[Escalation]:
        """Unresolved items, oldest first (without content)."""
        with self._lock:
            rows = (
                self._db()
                .execute(
                    f"SELECT {SUMMARY_SQL} FROM escalations WHERE status = 'pending'"
                    " ORDER BY id LIMIT ?",
                    (limit,),
                )
                .fetchall()
            )
        return [escalation_from_row(row) for row in rows]

    def page(
        self,
        where: EscalationFilter | None = None,
        *,
        limit: int = 50,
        before: int | None = None,
        after: int | None = None,
    ) -> Page:
        """One page of matching items, newest first, without content.

        ``before``/``after`` are row ids from a previous page's ``older``/``newer``.
        """
        where = where or EscalationFilter()
        limit = max(1, min(limit, 500))
        conditions, params = escalation_conditions(where)
        total, exact = self._total(where, conditions, params)
        if after is not None:
            sql, extra, order = "id > ?", [after], "ASC"
        elif before is not None:
            sql, extra, order = "id < ?", [before], "DESC"
        else:
            sql, extra, order = "", [], "DESC"
        clauses = [*conditions, sql] if sql else conditions
        # Row ids first (from an index, small to sort), then the rows of this page only.
        query = "SELECT id FROM escalations"
        if clauses:
            query += " WHERE " + " AND ".join(clauses)
        query += f" ORDER BY id {order} LIMIT ?"
        with self._lock:
            conn = self._db()
            ids = [row[0] for row in conn.execute(query, [*params, *extra, limit + 1])]
            marks = ", ".join("?" for _ in ids[:limit])
            rows = conn.execute(
                f"SELECT {SUMMARY_SQL} FROM escalations WHERE id IN ({marks}) ORDER BY id {order}",
                ids[:limit],
            ).fetchall()
        more = len(ids) > limit
        if order == "ASC":
            rows.reverse()
        items = [escalation_from_row(row) for row in rows]
        if not items:
            return Page(items=[], total=total, exact=exact)
        at_start = before is None and after is None
        newer = None if at_start or (after is not None and not more) else items[0].id
        older = items[-1].id if (more or after is not None) else None
        if (
            older is not None
            and after is not None
            and not self._exists_before(conditions, params, items[-1].id)
        ):
            older = None
        return Page(items=items, total=total, exact=exact, older=older, newer=newer)

    def neighbours(
        self, item_id: int, where: EscalationFilter | None = None
    ) -> tuple[str | None, str | None]:
        """The escalation ids of the items just newer and just older than row ``item_id`` under
        ``where`` (None at either end), for moving through a list from an item's page."""
        conditions, params = escalation_conditions(where or EscalationFilter())
        base = " AND ".join(conditions)
        found: list[str | None] = []
        with self._lock:
            for op, order in ((">", "ASC"), ("<", "DESC")):
                clause = f"id {op} ?" + (f" AND {base}" if base else "")
                row = (
                    self._db()
                    .execute(
                        f"SELECT escalation_id FROM escalations WHERE {clause}"
                        f" ORDER BY id {order} LIMIT 1",
                        [item_id, *params],
                    )
                    .fetchone()
                )
                found.append(row[0] if row else None)
        return found[0], found[1]

    def items(
        self, where: EscalationFilter | None = None, *, batch: int = 500
    ) -> Iterator[Escalation]:
        """Every matching item with its content, oldest first, read in batches (for exports)."""
        conditions, params = escalation_conditions(where or EscalationFilter())
        last = 0
        while True:
            clauses = [*conditions, "id > ?"]
            with self._lock:
                rows = (
                    self._db()
                    .execute(
                        f"SELECT {FULL_SQL} FROM escalations WHERE {' AND '.join(clauses)}"
                        " ORDER BY id LIMIT ?",
                        [*params, last, batch],
                    )
                    .fetchall()
                )
            if not rows:
                return
            for row in rows:
                yield escalation_from_row(row, full=True)
            last = int(rows[-1][0])

    def counts(self, where: EscalationFilter | None = None) -> dict[str, int]:
        """How many items are pending, approved and rejected (under ``where``'s other filters;
        its ``state`` is ignored).

        Exact and constant-time for filters on risk, source and auditor (kept in a tally table
        by triggers). With a category, date or thread filter each state is counted up to
        ``count_cap`` rows: a larger count reads ``count_cap + 1`` ("more than").
        """
        where = where or EscalationFilter()
        counts = {"pending": 0, "approved": 0, "rejected": 0}
        tally = tally_conditions(where, with_state=False)
        if tally is not None:
            table, conditions, params = tally
            sql = f"SELECT state, sum(n) FROM {table}"
            if conditions:
                sql += " WHERE " + " AND ".join(conditions)
            with self._lock:
                rows = self._db().execute(sql + " GROUP BY state", params).fetchall()
            counts.update({str(state): int(n) for state, n in rows})
            return counts
        for state in counts:
            narrowed = dataclasses.replace(where, state=state)  # type: ignore[arg-type]
            conditions, params = escalation_conditions(narrowed)
            counts[state] = self._capped_count(conditions, params)
        return counts

    def _total(
        self, where: EscalationFilter, conditions: list[str], params: list[Any]
    ) -> tuple[int, bool]:
        tally = tally_conditions(where, with_state=True)
        if tally is None:
            total = self._capped_count(conditions, params)
            return total, total <= self.count_cap
        table, tally_clauses, tally_params = tally
        sql = f"SELECT coalesce(sum(n), 0) FROM {table}"
        if tally_clauses:
            sql += " WHERE " + " AND ".join(tally_clauses)
        with self._lock:
            return int(self._db().execute(sql, tally_params).fetchone()[0]), True

    def _capped_count(self, conditions: list[str], params: list[Any]) -> int:
        sql = "SELECT 1 FROM escalations"
        if conditions:
            sql += " WHERE " + " AND ".join(conditions)
        with self._lock:
            row = (
                self._db()
                .execute(f"SELECT count(*) FROM ({sql} LIMIT ?)", [*params, self.count_cap + 1])
                .fetchone()
            )
        return int(row[0])

    def facets(self) -> dict[str, list[str]]:
        """The values seen for ``auditor``, ``category`` and ``integration`` (filter choices)."""
        with self._lock:
            rows = self._db().execute("SELECT kind, value FROM facets ORDER BY kind, value")
            out: dict[str, list[str]] = {"auditor": [], "category": [], "integration": []}
            for kind, value in rows.fetchall():
                out.setdefault(kind, []).append(value)
        return out

    def _exists_before(self, conditions: list[str], params: list[Any], item_id: int) -> bool:
        clauses = [*conditions, "id < ?"]
        with self._lock:
            row = (
                self._db()
                .execute(
                    f"SELECT 1 FROM escalations WHERE {' AND '.join(clauses)} LIMIT 1",
                    [*params, item_id],
                )
                .fetchone()
            )
        return row is not None
