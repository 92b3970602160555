"""The review queue's database: :class:`EscalationStore`.

One SQLite file (WAL mode) that guarded processes write escalations to and reviewers read and
resolve, from as many processes as needed. Every query a page or a waiting agent makes uses an
index; lists page by row id (keyset pagination), so a queue of 100,000 items lists as fast as
one of 100. Each store holds one connection behind a lock; open one store per thread that must
not wait for another's query (the review queue's writer and its readers use two).

This module opens the file and holds writes, resolution, retention and delivery marks, and the
reads of one item; the lists live in ``_browse``, the columns and row decoding in ``_rows``,
filters as SQL in ``_filter_sql``, the schema in ``_schema``.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from traceguard._decision import ReviewOutcome
from traceguard._exceptions import ConfigurationError
from traceguard.review._browse import BrowseQueries
from traceguard.review._entry import NewEscalation, storable
from traceguard.review._model import AlreadyResolved, Escalation, StoredImage, parse_age
from traceguard.review._rows import (
    FULL_SQL,
    INSERT_COLUMNS,
    INSERT_SQL,
    SUMMARY_SQL,
    escalation_from_row,
)
from traceguard.review._schema import connect, migrate

__all__ = ["COUNT_CAP", "EscalationStore", "MAX_NOTE_CHARS", "MAX_REVIEWER_CHARS"]

logger = logging.getLogger("traceguard.review")

MAX_NOTE_CHARS = 5_000
COUNT_CAP = 1_000
MAX_REVIEWER_CHARS = 200


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds")


class EscalationStore(BrowseQueries):
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
                    cursor = conn.execute(INSERT_SQL, [row.get(c) for c in INSERT_COLUMNS])
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
            f"SELECT {SUMMARY_SQL} FROM escalations WHERE status = 'resolved'"
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
        return [escalation_from_row(row) for row in rows]

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
                f"SELECT {FULL_SQL} FROM escalations WHERE {column} = ?", (key,)
            ).fetchone()
            if row is None:
                return None
            images = conn.execute(
                "SELECT position, identity, mime, width, height, note FROM escalation_images"
                " WHERE escalation = ? ORDER BY position",
                (row[0],),
            ).fetchall()
        return escalation_from_row(row, full=True, images=images)

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


def _key(escalation_id: str | int) -> tuple[str, str | int]:
    """The column and value that identify an item: a row number (int) or an escalation id."""
    if isinstance(escalation_id, bool):
        raise TypeError("an escalation id is a string (or a row number)")
    if isinstance(escalation_id, int):
        return "id", escalation_id
    return "escalation_id", str(escalation_id)
