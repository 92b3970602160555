"""The human review queue: escalated decisions stored in a SQLite database.

:class:`ReviewQueue` is a :class:`~traceguard.Sink`: give it to a ``Guard`` and every escalation
lands in the database as a pending :class:`Escalation`. Reviewers list them with
:meth:`ReviewQueue.pending` and settle them with :meth:`ReviewQueue.resolve`. The database runs in
WAL mode, so a reviewer tool and one or more guarded processes can use the same file.

The queue stores hashes, sizes, the reason and the verdict, not the audited text: look the trace up
by ``trace_id`` or ``content_hash`` in your own logs.
"""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast

from traceguard._sinks import AuditRecord, Sink, SinkError

__all__ = ["Escalation", "ReviewQueue"]

Resolution = Literal["approved", "rejected"]
Status = Literal["pending", "resolved"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS escalations (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    record_id     TEXT NOT NULL UNIQUE,
    created_at    TEXT NOT NULL,
    trace_id      TEXT,
    content_hash  TEXT NOT NULL,
    action        TEXT NOT NULL,
    disposition   TEXT NOT NULL,
    reason        TEXT NOT NULL,
    verdict_json  TEXT NOT NULL,
    status        TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'resolved')),
    resolution    TEXT CHECK (resolution IS NULL OR resolution IN ('approved', 'rejected')),
    reviewer      TEXT,
    note          TEXT,
    resolved_at   TEXT
);
CREATE INDEX IF NOT EXISTS escalations_by_status ON escalations (status, id);
"""

_COLUMNS = (
    "id, created_at, trace_id, content_hash, action, disposition, reason, verdict_json, "
    "status, resolution, reviewer, note, resolved_at"
)


def _storable(text: str | None) -> str | None:
    """``text`` as SQLite can store it: a lone surrogate (from hostile input) becomes ``\\udXXX``
    instead of failing the insert and losing the escalation."""
    if text is None:
        return None
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


@dataclass(frozen=True)
class Escalation:
    """One stored escalation and, once settled, its resolution."""

    id: int
    created_at: str
    """ISO-8601 UTC time of the audit."""
    trace_id: str | None
    content_hash: str
    action: str
    disposition: str
    """What the output was held as while pending (block, by default)."""
    reason: str
    verdict: Mapping[str, Any]
    """The verdict as ``Verdict.to_dict()`` stored it."""
    status: Status
    resolution: Resolution | None = None
    reviewer: str | None = None
    note: str | None = None
    resolved_at: str | None = None

    @classmethod
    def _from_row(cls, row: tuple[Any, ...]) -> Escalation:
        (
            id_,
            created,
            trace_id,
            chash,
            action,
            disp,
            reason,
            verdict,
            status,
            res,
            who,
            note,
            at,
        ) = row
        return cls(
            id=int(id_),
            created_at=created,
            trace_id=trace_id,
            content_hash=chash,
            action=action,
            disposition=disp,
            reason=reason,
            verdict=json.loads(verdict),
            status=cast(Status, status),
            resolution=cast("Resolution | None", res),
            reviewer=who,
            note=note,
            resolved_at=at,
        )


class ReviewQueue(Sink):
    """A SQLite-backed queue of escalations awaiting a human decision.

    Args:
        path: the database file (created with its schema when missing).
        escalations_only: store only records whose decision escalated (the default); False
            stores every record, for reviewing blocks as well.
        timeout: seconds to wait for another process's write lock before failing.

    One connection serves all threads, behind a lock; other processes coordinate through SQLite's
    own locking.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        escalations_only: bool = True,
        timeout: float = 30.0,
    ) -> None:
        self.path = Path(path)
        self.escalations_only = escalations_only
        self._lock = threading.Lock()
        # Autocommit (isolation_level=None) so each statement is its own short transaction and no
        # implicit transaction holds the write lock between calls.
        self._conn: sqlite3.Connection | None = sqlite3.connect(
            self.path, timeout=timeout, isolation_level=None, check_same_thread=False
        )
        with self._lock:
            conn = self._conn
            conn.execute("PRAGMA journal_mode=WAL")
            # NORMAL is durable across application crashes in WAL mode; only an OS crash may lose
            # the last commits, which is the usual trade for an audit side channel.
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.executescript(_SCHEMA)

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise SinkError(f"{self!r} is closed")
        return self._conn

    def emit(self, record: AuditRecord) -> None:
        """Store ``record`` as a pending escalation (only escalations unless configured)."""
        decision = record.decision
        if self.escalations_only and not decision.escalated:
            return
        with self._lock:
            self._connection().execute(
                "INSERT OR IGNORE INTO escalations (record_id, created_at, trace_id, content_hash,"
                " action, disposition, reason, verdict_json) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    record.record_id,
                    record.iso_time,
                    _storable(record.trace_id),
                    record.content_hash,
                    decision.action.value,
                    decision.disposition.value,
                    _storable(decision.reason),
                    json.dumps(decision.verdict.to_dict(), ensure_ascii=True, default=str),
                ),
            )

    def pending(self, limit: int = 100) -> list[Escalation]:
        """Unresolved escalations, oldest first."""
        with self._lock:
            rows = self._connection().execute(
                f"SELECT {_COLUMNS} FROM escalations WHERE status = 'pending' ORDER BY id LIMIT ?",
                (limit,),
            )
            return [Escalation._from_row(row) for row in rows.fetchall()]

    def get(self, escalation_id: int) -> Escalation:
        """One escalation by id.

        Raises:
            KeyError: no escalation has this id.
        """
        with self._lock:
            row = (
                self._connection()
                .execute(f"SELECT {_COLUMNS} FROM escalations WHERE id = ?", (escalation_id,))
                .fetchone()
            )
        if row is None:
            raise KeyError(escalation_id)
        return Escalation._from_row(row)

    def resolve(
        self,
        escalation_id: int,
        resolution: Resolution,
        reviewer: str,
        note: str = "",
    ) -> Escalation:
        """Settle a pending escalation and return it.

        Raises:
            ValueError: ``resolution`` is not approved/rejected, or the escalation is already
                resolved (two reviewers raced; the first one wins).
            KeyError: no escalation has this id.
        """
        if resolution not in ("approved", "rejected"):
            raise ValueError(f"resolution must be 'approved' or 'rejected', not {resolution!r}")
        if not reviewer:
            raise ValueError("a resolution needs the reviewer's name")
        now = dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds")
        with self._lock:
            # The status check sits in the UPDATE itself so that two processes resolving the same
            # escalation cannot both succeed.
            cursor = self._connection().execute(
                "UPDATE escalations SET status = 'resolved', resolution = ?, reviewer = ?,"
                " note = ?, resolved_at = ? WHERE id = ? AND status = 'pending'",
                (resolution, reviewer, note, now, escalation_id),
            )
            changed = cursor.rowcount
        current = self.get(escalation_id)
        if changed == 0:
            raise ValueError(
                f"escalation {escalation_id} is already {current.resolution} by {current.reviewer}"
            )
        return current

    def counts(self) -> dict[str, int]:
        """How many escalations are pending, approved and rejected."""
        with self._lock:
            rows = (
                self._connection()
                .execute(
                    "SELECT coalesce(resolution, status), count(*) FROM escalations"
                    " GROUP BY coalesce(resolution, status)"
                )
                .fetchall()
            )
        counts = {"pending": 0, "approved": 0, "rejected": 0}
        counts.update({str(key): int(n) for key, n in rows})
        return counts

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def __repr__(self) -> str:
        return f"ReviewQueue({str(self.path)!r})"
