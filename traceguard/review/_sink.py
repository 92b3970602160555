"""The review queue as a sink: :class:`ReviewQueue` files escalations into an EscalationStore.

The call path never touches SQLite. ``emit`` builds the entry (text capped, no file or network
read), appends it to the queue's spill file with one ``write`` and hands it to a writer thread;
that is the whole cost for the guarded call, however long another process holds the database's
write lock. The writer makes the thumbnails, ``fsync``s the spill file and inserts batches; when
the database is locked or failing it retries with backoff, and nothing is dropped: an entry
leaves the spill file only once it is in the database, and a queue opened later on the same file
replays what a crashed or stopped one left there.
"""

from __future__ import annotations

import collections
import datetime as dt
import logging
import os
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Literal
from urllib.parse import quote, urlsplit

from traceguard._decision import ReviewOutcome
from traceguard._images import ImageAccess
from traceguard._sinks import AuditRecord, Sink, SinkError
from traceguard._urls import redact_url
from traceguard.review._entry import NewEscalation, make_thumbnails
from traceguard.review._model import Escalation, parse_age
from traceguard.review._spill import SpillFile
from traceguard.review._store import EscalationStore

__all__ = ["ReviewQueue", "check_review_url"]

logger = logging.getLogger("traceguard.review")

_BATCH = 64
_MIN_BACKOFF = 0.05
_MAX_BACKOFF = 2.0
_PURGE_EVERY_S = 3600.0
_BACKLOG_NOTE = "thumbnail not kept: the queue's backlog was over max_pending"


class ReviewQueue(Sink):
    """A SQLite-backed queue of escalations awaiting a human decision.

    Give it to a ``Guard``: every escalation is filed with what a reviewer needs (query,
    thinking, response, tool calls, image thumbnails, the verdict and its analysis, the policy's
    reason, where the trace came from) under ``Decision.escalation_id``. ``traceguard review``
    serves the queue to reviewers; ``Guard(..., on_escalate="wait")`` holds the call until one
    decides.

    Args:
        path: the database file (created when missing, migrated when older).
        escalations_only: file only escalated records (default); False files every record.
        store_content: keep the audited text and thumbnails (default). False keeps only hashes,
            ids, the verdict and where the trace came from, for deployments that must not store
            the text (the verdict's analysis may still quote it: use a policy that needs no
            analysis, or treat the file accordingly).
        image_access: lets the writer read image *files* for thumbnails; without it only images
            already in memory (bytes, data URIs, PIL) get one. URLs are never fetched.
        timeout: seconds one database attempt waits for another process's write lock (the
            writer then backs off and retries; callers never wait for it).
        max_age: retention, e.g. ``"30d"``: resolved items older than this are purged when the
            queue opens and hourly after.
        max_pending: entries kept in memory while the database cannot take them; beyond this
            they wait in the spill file only (and lose their thumbnails).
        review_url: where reviewers reach ``traceguard review`` for this queue (e.g.
            ``https://review.internal:8765``); audit records of escalations then carry
            ``review_url`` = the item's page, so a webhook notification links to it.

    The call path costs building the entry plus one ``write(2)`` to the spill file: no lock
    wait, no ``fsync``, no image decoding. ``pending_writes`` counts what is not in the
    database yet; :meth:`close` waits for it (up to ``close_timeout``) and says what it could
    not write.
    """

    undelivered: int = 0
    """Set by :meth:`close`: entries it could not store (kept in the spill file)."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        escalations_only: bool = True,
        store_content: bool = True,
        image_access: ImageAccess | None = None,
        timeout: float = 5.0,
        max_age: str | float | dt.timedelta | None = None,
        max_pending: int = 10_000,
        close_timeout: float = 10.0,
        review_url: str | None = None,
    ) -> None:
        if max_pending < 1:
            raise ValueError("max_pending must be >= 1")
        self.review_url = check_review_url(review_url) if review_url is not None else None
        self.path = Path(path)
        self.escalations_only = escalations_only
        self.store_content = store_content
        self.image_access = image_access
        self.max_age = parse_age(max_age) if max_age is not None else None
        self.max_pending = max_pending
        self.close_timeout = close_timeout
        self.store = EscalationStore(self.path, timeout=timeout)
        """The database, for reading and resolving (shared by the guard's review waits)."""
        self._writer_store = EscalationStore(self.path, timeout=min(timeout, 2.0))
        self._spill = SpillFile(self.path)
        self._cond = threading.Condition()
        self._queue: collections.deque[NewEscalation] = collections.deque()
        self._queued_ids: set[str] = set()
        self._backlog = 0  # entries in the spill file only (over max_pending)
        self._stored_lines = 0
        self._closing = False
        self._stopping = False
        self.written = 0
        """Entries stored in the database by this queue."""
        self.failures = 0
        """Database attempts that failed (each is retried)."""
        self.last_error: str | None = None
        self.undelivered = 0
        for entry in self._spill.adopt_orphans():
            self._enqueue(entry)
        self._writer = threading.Thread(
            target=self._run, name=f"traceguard-review-{self.path.name}", daemon=True
        )
        self._writer.start()

    # -- the sink -----------------------------------------------------------------------------

    def emit(self, record: AuditRecord) -> None:
        """File ``record`` (only escalations, unless configured otherwise); never waits for the
        database."""
        if self.escalations_only and not record.decision.escalated:
            return
        entry = NewEscalation.from_record(record, store_content=self.store_content)
        with self._cond:
            if self._closing:
                raise SinkError(f"{self!r} is closed")
            # Under the condition's lock so that the spill file's order is the queue's order.
            self._spill.append(entry.to_line())
            self._enqueue(entry)
            self._cond.notify_all()

    def _enqueue(self, entry: NewEscalation) -> None:
        if len(self._queue) >= self.max_pending:
            self._backlog += 1
            entry.images = []
            return
        self._queue.append(entry)
        self._queued_ids.add(entry.escalation_id)

    @property
    def pending_writes(self) -> int:
        """Entries accepted but not yet in the database."""
        with self._cond:
            return len(self._queue) + self._backlog

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every accepted entry is in the database; True when none is left."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._queue and not self._backlog, timeout)

    def close(self, timeout: float | None = None) -> None:
        """Store what is pending (up to ``timeout``, default ``close_timeout`` seconds), stop the
        writer, close the database. Idempotent.

        What could not be stored stays in the spill file and is written by the next queue opened
        on this database; it is logged as a warning and counted in ``undelivered``.
        """
        with self._cond:
            if self._closing:
                return
            self._closing = True
        self.flush(self.close_timeout if timeout is None else timeout)
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._writer.join(_MAX_BACKOFF + 1.0)
        left = self.pending_writes
        self._spill.close(keep=left > 0)
        self.undelivered = left
        if left:
            logger.warning(
                "%r closed with %d escalation(s) not in the database (%s); they are kept in %s "
                "and written when a queue is next opened on %s",
                self,
                left,
                self.last_error or "writer still busy",
                self._spill.path,
                self.path,
            )
        if not self._writer.is_alive():
            self._writer_store.close()
        self.store.close()

    def __repr__(self) -> str:
        return f"ReviewQueue({str(self.path)!r})"

    def link(self, escalation_id: str) -> str | None:
        """The URL of the item's review page, when ``review_url`` is set."""
        if self.review_url is None:
            return None
        return f"{self.review_url}/items/{quote(escalation_id, safe='')}"

    # -- what a waiting guard asks --------------------------------------------------------------

    def accepted(self, escalation_id: str) -> bool:
        """True when this queue took the escalation (waiting to be written, or written)."""
        with self._cond:
            if escalation_id in self._queued_ids or self._backlog > 0:
                return True
        try:
            return self.store.outcome(escalation_id)[0]
        except Exception:
            return False

    def outcome(self, escalation_id: str) -> tuple[bool, ReviewOutcome | None]:
        """``(filed, outcome)``: whether this escalation is known (stored, or accepted and on its
        way), and the reviewer's decision once there is one. Never waits for the writer."""
        with self._cond:
            queued = escalation_id in self._queued_ids or self._backlog > 0
        filed, outcome = self.store.outcome(escalation_id)
        return filed or queued, outcome

    # -- reading (each waits for this queue's own pending writes first) ---------------------------

    def pending(self, limit: int = 100) -> list[Escalation]:
        """Unresolved escalations, oldest first, once this queue's own writes are stored."""
        self.flush(self.close_timeout)
        return self.store.pending(limit)

    def get(self, escalation_id: str | int) -> Escalation:
        """One escalation (with its content) by escalation id or row number.

        Raises:
            KeyError: no escalation has this id.
        """
        self.flush(self.close_timeout)
        return self.store.get(escalation_id)

    def resolve(
        self,
        escalation_id: str | int,
        resolution: Literal["approved", "rejected"],
        reviewer: str,
        note: str = "",
    ) -> Escalation:
        """Settle a pending escalation (see :meth:`EscalationStore.resolve`)."""
        self.flush(self.close_timeout)
        return self.store.resolve(escalation_id, resolution, reviewer, note)

    def counts(self) -> dict[str, int]:
        """How many escalations are pending, approved and rejected."""
        self.flush(self.close_timeout)
        return self.store.counts()

    # -- the writer thread ----------------------------------------------------------------------

    def _run(self) -> None:
        backoff = _MIN_BACKOFF
        next_purge = time.monotonic() if self.max_age is not None else float("inf")
        failures_logged = 0
        while True:
            with self._cond:
                while not self._queue and not self._backlog and not self._stopping:
                    wait = next_purge - time.monotonic()
                    if wait <= 0:
                        break
                    self._cond.wait(min(wait, 60.0))
                if self._stopping:
                    return
                batch = [self._queue[i] for i in range(min(_BATCH, len(self._queue)))]
                backlog = self._backlog if not batch else 0
            try:
                if time.monotonic() >= next_purge:
                    next_purge = time.monotonic() + _PURGE_EVERY_S
                    self._purge()
                if batch:
                    for entry in batch:
                        make_thumbnails(entry, self.image_access)
                    self._spill.sync()
                    self._writer_store.insert(batch)
                elif backlog:
                    self._spill.sync()
                    for chunk in self._spill.entries(_BACKLOG_NOTE):
                        self._writer_store.insert(chunk)
            except Exception as exc:
                failures_logged = self._failed(exc, failures_logged)
                with self._cond:
                    self._cond.wait_for(lambda: self._stopping, backoff)
                backoff = min(backoff * 2, _MAX_BACKOFF)
                continue
            if failures_logged:
                logger.warning("%r: database writable again", self)
                failures_logged = 0
            backoff = _MIN_BACKOFF
            self._stored(batch, backlog)

    def _stored(self, batch: Sequence[NewEscalation], backlog: int) -> None:
        with self._cond:
            for entry in batch:
                self._queue.popleft()
                self._queued_ids.discard(entry.escalation_id)
            self._backlog -= backlog
            self._stored_lines += len(batch) + backlog
            self.written += len(batch) + backlog
            if not self._queue and not self._backlog and self._spill.clear_if(self._stored_lines):
                self._stored_lines = 0
            self._cond.notify_all()

    def _failed(self, exc: Exception, logged: int) -> int:
        with self._cond:
            self.failures += 1
            self.last_error = f"{type(exc).__name__}: {exc}"
            pending = len(self._queue) + self._backlog
        # Once per outage, then every 20th failure: a long lock must not flood the log.
        if logged % 20 == 0:
            logger.warning(
                "%r: cannot write to the database yet (%s); %d escalation(s) pending, kept in %s",
                self,
                self.last_error,
                pending,
                self._spill.path,
            )
        return logged + 1

    def _purge(self) -> None:
        assert self.max_age is not None
        removed = self._writer_store.purge(self.max_age)
        if removed:
            logger.info("%r: purged %d resolved item(s) older than %s", self, removed, self.max_age)


def check_review_url(url: str) -> str:
    """The review app's address, checked: http(s), a host, no credentials, query or fragment
    (the link goes into notifications and logs)."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"review_url must be an http(s) URL, not {redact_url(url)!r}")
    if parts.username or parts.password or parts.query or parts.fragment:
        raise ValueError("review_url must not carry credentials, a query or a fragment")
    return url.strip().rstrip("/")
