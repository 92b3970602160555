"""The review queue's database: :class:`EscalationStore`.

One SQLite file (WAL mode) that guarded processes write escalations to and reviewers read and
resolve, from as many processes as needed. Every query a page or a waiting agent makes uses an
index; lists page by row id (keyset pagination), so a queue of 100,000 items lists as fast as
one of 100. Each store holds one connection behind a lock; open one store per thread that must
not wait for another's query (the review queue's writer and its readers use two).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import os
import sqlite3
import threading
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, cast

from traceguard._decision import ReviewOutcome
from traceguard._exceptions import ConfigurationError
from traceguard.review._entry import NewEscalation, storable
from traceguard.review._model import (
    AlreadyResolved,
    Escalation,
    EscalationContent,
    EscalationFilter,
    ImageInfo,
    Page,
    SourceLocation,
    StoredImage,
    parse_age,
)
from traceguard.review._schema import connect, migrate

__all__ = ["COUNT_CAP", "EscalationStore", "MAX_NOTE_CHARS", "MAX_REVIEWER_CHARS"]

logger = logging.getLogger("traceguard.review")

MAX_NOTE_CHARS = 5_000
COUNT_CAP = 1_000
MAX_REVIEWER_CHARS = 200

_SUMMARY_COLUMNS = (
    "id",
    "created_at",
    "trace_id",
    "content_hash",
    "action",
    "disposition",
    "reason",
    "verdict_json",
    "status",
    "resolution",
    "reviewer",
    "note",
    "resolved_at",
    "escalation_id",
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
    "delivered_at",
    "delivered_to",
)
_CONTENT_COLUMNS = ("query", "thinking", "response", "tool_calls_json", "history_json")
_SUMMARY_SQL = ", ".join(_SUMMARY_COLUMNS)
_FULL_SQL = ", ".join(_SUMMARY_COLUMNS + _CONTENT_COLUMNS)
_INSERT_COLUMNS = (
    "escalation_id",
    "record_id",
    "created_at",
    "trace_id",
    "content_hash",
    "action",
    "disposition",
    "reason",
    "verdict_json",
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
    "query",
    "thinking",
    "response",
    "tool_calls_json",
    "history_json",
)
_INSERT_SQL = (
    f"INSERT OR IGNORE INTO escalations ({', '.join(_INSERT_COLUMNS)}) "
    f"VALUES ({', '.join('?' for _ in _INSERT_COLUMNS)})"
)

# On ``resolution`` alone (NULL while pending), so that the (resolution, id) and
# (created_at, resolution) indexes answer state filters without reading rows.
_STATE_SQL = {
    "pending": "resolution IS NULL",
    "approved": "resolution = 'approved'",
    "rejected": "resolution = 'rejected'",
    "resolved": "resolution IS NOT NULL",
    "all": "",
}


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds")


class EscalationStore:
    """The SQLite file of a review queue: escalations, their thumbnails and resolutions.

    Args:
        path: the database file. A file written by an earlier version is migrated in place
            (old rows stay readable; they simply have no stored content).
        timeout: seconds a statement waits for another process's write lock.
        create: create the file when missing; False raises :class:`ConfigurationError`
            instead (a reviewer opening a misspelt path should not get an empty queue).
    """

    def __init__(self, path: str | os.PathLike[str], *, timeout: float = 5.0, create: bool = True):
        self.path = Path(path)
        if not create and not self.path.is_file():
            raise ConfigurationError(f"review queue not found: {self.path}")
        self._lock = threading.RLock()
        try:
            conn = connect(str(self.path), timeout=timeout)
        except sqlite3.Error as exc:
            raise ConfigurationError(f"cannot open review queue {self.path}: {exc}") from None
        try:
            migrate(conn)
        except sqlite3.Error as exc:
            conn.close()
            raise ConfigurationError(f"cannot open review queue {self.path}: {exc}") from None
        self._conn: sqlite3.Connection | None = conn
        self.count_cap = COUNT_CAP
        """Counts that need a scan (category, date, thread filters) stop past this many."""

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise ConfigurationError(f"{self!r} is closed")
        return self._conn

    def close(self) -> None:
        """Close the connection. Idempotent."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def __enter__(self) -> EscalationStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"EscalationStore({str(self.path)!r})"

    # -- writing ------------------------------------------------------------------------------

    def insert(self, entries: Sequence[NewEscalation]) -> int:
        """Store ``entries`` in one transaction; an id already stored is skipped (idempotent, so
        a replayed spill file or a re-run node files nothing twice). Returns how many were new.

        Raises:
            sqlite3.OperationalError: the database stayed locked, the disk is full, …; nothing
                of this batch is stored then.
        """
        if not entries:
            return 0
        added = 0
        with self._lock:
            conn = self._db()
            conn.execute("BEGIN IMMEDIATE")
            try:
                for entry in entries:
                    row = entry.row
                    cursor = conn.execute(_INSERT_SQL, [row.get(c) for c in _INSERT_COLUMNS])
                    if cursor.rowcount != 1:
                        continue
                    added += 1
                    item = cursor.lastrowid
                    conn.executemany(
                        "INSERT OR IGNORE INTO escalation_categories (category, escalation)"
                        " VALUES (?, ?)",
                        [(category, item) for category in entry.categories],
                    )
                    conn.executemany(
                        "INSERT OR IGNORE INTO escalation_images (escalation, position, identity,"
                        " mime, width, height, data, note) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                        [
                            (
                                item,
                                slot.position,
                                slot.identity,
                                slot.mime if slot.data is not None else None,
                                slot.width,
                                slot.height,
                                slot.data,
                                slot.note,
                            )
                            for slot in entry.images
                        ],
                    )
                    facets = [("category", c) for c in entry.categories]
                    for kind in ("auditor", "integration"):
                        if row.get(kind):
                            facets.append((kind, row[kind]))
                    conn.executemany(
                        "INSERT OR IGNORE INTO facets (kind, value) VALUES (?, ?)", facets
                    )
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        return added

    def resolve(
        self,
        escalation_id: str | int,
        resolution: Literal["approved", "rejected"],
        reviewer: str,
        note: str = "",
    ) -> Escalation:
        """Settle a pending escalation and return it.

        Raises:
            AlreadyResolved: another reviewer settled it first (a ``ValueError``; the first one
                wins, and the exception carries who and how).
            ValueError: ``resolution`` is not approved/rejected, no reviewer name, or a name or
                note over the limits.
            KeyError: no escalation has this id.
        """
        if resolution not in ("approved", "rejected"):
            raise ValueError(f"resolution must be 'approved' or 'rejected', not {resolution!r}")
        reviewer = (reviewer or "").strip()
        if not reviewer:
            raise ValueError("a resolution needs the reviewer's name")
        if len(reviewer) > MAX_REVIEWER_CHARS:
            raise ValueError(f"a reviewer name is at most {MAX_REVIEWER_CHARS} characters")
        if len(note) > MAX_NOTE_CHARS:
            raise ValueError(f"a note is at most {MAX_NOTE_CHARS} characters")
        column, key = _key(escalation_id)
        with self._lock:
            # The status check sits in the UPDATE itself so that two reviewers (or processes)
            # resolving the same escalation cannot both succeed.
            cursor = self._db().execute(
                "UPDATE escalations SET status = 'resolved', resolution = ?, reviewer = ?,"
                f" note = ?, resolved_at = ? WHERE {column} = ? AND status = 'pending'",
                (resolution, storable(reviewer), storable(note), _now(), key),
            )
            changed = cursor.rowcount
            current = self.get(escalation_id)
        if changed == 0:
            raise AlreadyResolved(current)
        return current

    def purge(
        self,
        max_age: str | float | dt.timedelta,
        *,
        include_pending: bool = False,
        now: dt.datetime | None = None,
    ) -> int:
        """Delete items created more than ``max_age`` ago (``30d``, ``12h``, seconds, a
        timedelta) with their thumbnails; returns how many. Pending items are kept unless
        ``include_pending``: an agent may still be waiting on them.

        Deleted content is overwritten on disk (``secure_delete``), and the write-ahead log is
        checkpointed so it does not keep a copy.
        """
        age = parse_age(max_age)
        moment = (now or dt.datetime.now(dt.timezone.utc)) - age
        cutoff = moment.astimezone(dt.timezone.utc).isoformat(timespec="milliseconds")
        where = "created_at < ?" + ("" if include_pending else " AND status = 'resolved'")
        with self._lock:
            conn = self._db()
            conn.execute("PRAGMA secure_delete = ON")
            conn.execute("BEGIN IMMEDIATE")
            try:
                doomed = f"SELECT id FROM escalations WHERE {where}"
                conn.execute(
                    f"DELETE FROM escalation_images WHERE escalation IN ({doomed})", (cutoff,)
                )
                conn.execute(
                    f"DELETE FROM escalation_categories WHERE escalation IN ({doomed})", (cutoff,)
                )
                removed = conn.execute(f"DELETE FROM escalations WHERE {where}", (cutoff,)).rowcount
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            try:
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.OperationalError:  # a reader holds the log; the next checkpoint will do
                pass
        return int(removed)

    # -- delivery marks (resumers) -------------------------------------------------------------

    def claim_delivery(self, escalation_id: str, consumer: str) -> bool:
        """Mark a resolved item as being delivered by ``consumer``; False when someone already
        did (or it is not resolved). The mark is atomic, so two resumers never both deliver."""
        with self._lock:
            cursor = self._db().execute(
                "UPDATE escalations SET delivered_at = ?, delivered_to = ? WHERE escalation_id = ?"
                " AND status = 'resolved' AND delivered_at IS NULL",
                (_now(), storable(consumer), escalation_id),
            )
            return cursor.rowcount == 1

    def release_delivery(self, escalation_id: str, consumer: str) -> None:
        """Undo :meth:`claim_delivery` after a delivery failed, so it is tried again."""
        with self._lock:
            self._db().execute(
                "UPDATE escalations SET delivered_at = NULL, delivered_to = NULL"
                " WHERE escalation_id = ? AND delivered_to = ?",
                (escalation_id, storable(consumer)),
            )

    def undelivered(self, *, integration: str | None = None, limit: int = 100) -> list[Escalation]:
        """Resolved items with a thread id whose resolution no resumer has delivered yet."""
        sql = (
            f"SELECT {_SUMMARY_SQL} FROM escalations WHERE status = 'resolved'"
            " AND delivered_at IS NULL AND thread_id IS NOT NULL"
        )
        params: list[Any] = []
        if integration is not None:
            sql += " AND integration = ?"
            params.append(integration)
        sql += " ORDER BY id LIMIT ?"
        params.append(limit)
        with self._lock:
            rows = self._db().execute(sql, params).fetchall()
        return [_escalation(row) for row in rows]

    # -- reading ------------------------------------------------------------------------------

    def get(self, escalation_id: str | int) -> Escalation:
        """One item with its content and image list, by escalation id (or row number).

        Raises:
            KeyError: no item has this id.
        """
        item = self.find(escalation_id)
        if item is None:
            raise KeyError(escalation_id)
        return item

    def find(self, escalation_id: str | int) -> Escalation | None:
        """:meth:`get`, but None when there is no such item."""
        column, key = _key(escalation_id)
        with self._lock:
            conn = self._db()
            row = conn.execute(
                f"SELECT {_FULL_SQL} FROM escalations WHERE {column} = ?", (key,)
            ).fetchone()
            if row is None:
                return None
            images = conn.execute(
                "SELECT position, identity, mime, width, height, note FROM escalation_images"
                " WHERE escalation = ? ORDER BY position",
                (row[0],),
            ).fetchall()
        return _escalation(row, full=True, images=images)

    def outcome(self, escalation_id: str) -> tuple[bool, ReviewOutcome | None]:
        """``(filed, outcome)``: whether the item exists, and the reviewer's decision if any.

        The cheap query a waiting guard polls (one index lookup, no content read).
        """
        with self._lock:
            row = (
                self._db()
                .execute(
                    "SELECT status, resolution, reviewer, note, resolved_at FROM escalations"
                    " WHERE escalation_id = ?",
                    (escalation_id,),
                )
                .fetchone()
            )
        if row is None:
            return False, None
        status, resolution, reviewer, note, resolved_at = row
        if status != "resolved" or resolution not in ("approved", "rejected"):
            return True, None
        return True, ReviewOutcome(
            escalation_id=escalation_id,
            resolution=resolution,
            reviewer=reviewer,
            note=note,
            resolved_at=resolved_at,
        )

    def image(self, escalation_id: str, position: int) -> StoredImage | None:
        """A stored thumbnail (re-encoded PNG or JPEG), or None."""
        with self._lock:
            row = (
                self._db()
                .execute(
                    "SELECT i.mime, i.data FROM escalation_images AS i JOIN escalations AS e"
                    " ON e.id = i.escalation WHERE e.escalation_id = ? AND i.position = ?",
                    (escalation_id, position),
                )
                .fetchone()
            )
        if row is None or row[0] not in ("image/png", "image/jpeg") or row[1] is None:
            return None
        return StoredImage(mime=row[0], data=bytes(row[1]))

    def pending(self, limit: int = 100) -> list[Escalation]:
        """Unresolved items, oldest first (without content)."""
        with self._lock:
            rows = (
                self._db()
                .execute(
                    f"SELECT {_SUMMARY_SQL} FROM escalations WHERE status = 'pending'"
                    " ORDER BY id LIMIT ?",
                    (limit,),
                )
                .fetchall()
            )
        return [_escalation(row) for row in rows]

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
        conditions, params = _conditions(where)
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
                f"SELECT {_SUMMARY_SQL} FROM escalations WHERE id IN ({marks}) ORDER BY id {order}",
                ids[:limit],
            ).fetchall()
        more = len(ids) > limit
        if order == "ASC":
            rows.reverse()
        items = [_escalation(row) for row in rows]
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
        conditions, params = _conditions(where or EscalationFilter())
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
        conditions, params = _conditions(where or EscalationFilter())
        last = 0
        while True:
            clauses = [*conditions, "id > ?"]
            with self._lock:
                rows = (
                    self._db()
                    .execute(
                        f"SELECT {_FULL_SQL} FROM escalations WHERE {' AND '.join(clauses)}"
                        " ORDER BY id LIMIT ?",
                        [*params, last, batch],
                    )
                    .fetchall()
                )
            if not rows:
                return
            for row in rows:
                yield _escalation(row, full=True)
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
        tally = _tally_conditions(where, with_state=False)
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
            conditions, params = _conditions(narrowed)
            counts[state] = self._capped_count(conditions, params)
        return counts

    def _total(
        self, where: EscalationFilter, conditions: list[str], params: list[Any]
    ) -> tuple[int, bool]:
        tally = _tally_conditions(where, with_state=True)
        if tally is None:
            total = self._capped_count(conditions, params)
            return total, total <= self.count_cap
        table, tally_conditions, tally_params = tally
        sql = f"SELECT coalesce(sum(n), 0) FROM {table}"
        if tally_conditions:
            sql += " WHERE " + " AND ".join(tally_conditions)
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


def _key(escalation_id: str | int) -> tuple[str, str | int]:
    """The column and value that identify an item: a row number (int) or an escalation id."""
    if isinstance(escalation_id, bool):
        raise TypeError("an escalation id is a string (or a row number)")
    if isinstance(escalation_id, int):
        return "id", escalation_id
    return "escalation_id", str(escalation_id)


_TALLY_STATES = {
    "pending": ("state = 'pending'", ()),
    "approved": ("state = 'approved'", ()),
    "rejected": ("state = 'rejected'", ()),
    "resolved": ("state IN ('approved', 'rejected')", ()),
}


def _tally_conditions(
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


def _conditions(where: EscalationFilter, *, with_state: bool = True) -> tuple[list[str], list[Any]]:
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


def _json(text: str | None, default: Any) -> Any:
    if not text:
        return default
    try:
        return json.loads(text)
    except ValueError:
        return default


def _escalation(
    row: Sequence[Any], *, full: bool = False, images: Sequence[Sequence[Any]] = ()
) -> Escalation:
    values = dict(zip(_SUMMARY_COLUMNS + (_CONTENT_COLUMNS if full else ()), row, strict=True))
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
