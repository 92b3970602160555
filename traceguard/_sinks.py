"""Where decisions are recorded: :class:`AuditRecord` and the :class:`Sink` implementations.

A sink receives one :class:`AuditRecord` per checked trace. A record's JSON (what the JSONL and
webhook sinks write) carries sizes, hashes and image identities (``Trace.summary()``), the
decision and the verdict; never image bytes and never the audited text itself. The one sink that
keeps the text is the review queue (:mod:`traceguard.review`), because a reviewer must see what
they judge; it reads it from ``AuditRecord.trace``. Sinks are thread-safe. ``Guard`` isolates
the caller from sink failures, and runs sinks marked ``slow`` behind a :class:`BackgroundSink`.
The webhook sink (:mod:`traceguard._webhook`) queues and delivers on its own thread.
"""

from __future__ import annotations

import abc
import collections
import datetime as dt
import json
import logging
import os
import threading
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from traceguard._decision import Decision
from traceguard._exceptions import SinkError
from traceguard._trace import Trace
from traceguard._verdict import Verdict

__all__ = [
    "AuditRecord",
    "BackgroundSink",
    "JsonlSink",
    "Sink",
    "SinkError",
]

logger = logging.getLogger("traceguard.sinks")


@dataclass(frozen=True)
class AuditRecord:
    """What a sink stores about one checked trace. JSON-ready through :meth:`to_dict`."""

    decision: Decision
    content_hash: str
    trace_summary: Mapping[str, Any]
    """``Trace.summary()``: ids, sizes, image identities; never image bytes."""
    trace_id: str | None = None
    timestamp: float = field(default_factory=lambda: dt.datetime.now(dt.timezone.utc).timestamp())
    """Seconds since the epoch (UTC)."""
    record_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    """Unique per record, so a receiver can drop the duplicate of a retried delivery."""
    trace: Trace | None = field(default=None, repr=False, compare=False)
    """The audited trace, for a sink that keeps what a reviewer must see (the review queue).
    Never part of :meth:`to_dict`: other sinks store sizes and hashes only."""
    review_url: str | None = None
    """For an escalation filed in a review queue that knows its app's address: the link to the
    item's review page (so a webhook notification can point the reviewer there)."""

    @classmethod
    def from_decision(
        cls, trace: Trace, decision: Decision, *, review_url: str | None = None
    ) -> AuditRecord:
        """The record of ``decision`` about ``trace``."""
        return cls(
            decision=decision,
            content_hash=trace.content_hash(),
            trace_summary=trace.summary(),
            trace_id=trace.id,
            trace=trace,
            review_url=review_url,
        )

    @property
    def verdict(self) -> Verdict:
        """The auditor's verdict behind the decision."""
        return self.decision.verdict

    @property
    def iso_time(self) -> str:
        """``timestamp`` as an ISO-8601 UTC string."""
        moment = dt.datetime.fromtimestamp(self.timestamp, tz=dt.timezone.utc)
        return moment.isoformat(timespec="milliseconds")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready mapping; the verdict is nested under ``decision.verdict``."""
        return {
            "record_id": self.record_id,
            "timestamp": self.iso_time,
            "trace_id": self.trace_id,
            "content_hash": self.content_hash,
            "trace": dict(self.trace_summary),
            "decision": self.decision.to_dict(),
            **({"review_url": self.review_url} if self.review_url else {}),
        }

    def to_json(self) -> str:
        """One line of JSON (no newline inside)."""
        return json.dumps(self.to_dict(), ensure_ascii=False, separators=(",", ":"), default=str)

    def to_json_bytes(self) -> bytes:
        """:meth:`to_json` as UTF-8, always encodable.

        Audited or auditor-made text may hold a lone surrogate, which UTF-8 cannot encode; it
        becomes the JSON escape ``\\udXXX`` (JSON output only has them inside strings), so the
        line stays valid JSON and decodes back to the same string.
        """
        return self.to_json().encode("utf-8", "backslashreplace")


class Sink(abc.ABC):
    """Receives audit records. Implementations must be thread-safe.

    ``emit`` may raise on failure (``Guard`` logs and counts it); ``close`` releases resources and
    is idempotent. ``slow`` sinks (network I/O) are run off the hot path by ``Guard``.
    """

    slow: ClassVar[bool] = False

    @abc.abstractmethod
    def emit(self, record: AuditRecord) -> None:
        """Record one audit record."""

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until emitted records are stored; True when nothing is left pending."""
        return True

    @property
    def undelivered(self) -> int:
        """Records this sink accepted without raising and has not stored: still queued, lost
        or refused by a receiver (0 for sinks that store in ``emit``). Callers add it up after
        :meth:`close` to say what did not arrive."""
        return 0

    def close(self) -> None:  # noqa: B027 - optional hook; stateless sinks hold nothing
        """Release files, connections and threads. Idempotent."""

    def __enter__(self) -> Sink:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class JsonlSink(Sink):
    """Appends one JSON line per record to a file.

    Each line is written with a single ``write`` on a descriptor opened with ``O_APPEND``, so lines
    from several threads or processes never interleave. Writes are unbuffered (nothing waits in
    a Python buffer); pass ``fsync=True`` to also force them to disk.
    """

    def __init__(self, path: str | os.PathLike[str], *, fsync: bool = False, mode: int = 0o600):
        self.path = Path(path)
        self._fsync = fsync
        self._lock = threading.Lock()
        # 0o600 by default: records hold verdict analyses, which quote the audited text.
        self._fd: int | None = os.open(
            self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), mode
        )

    def emit(self, record: AuditRecord) -> None:
        data = record.to_json_bytes() + b"\n"
        with self._lock:
            if self._fd is None:
                raise SinkError(f"JsonlSink({self.path}) is closed")
            written = os.write(self._fd, data)
            if written != len(data):
                # Regular files do not short-write outside of a full disk; finish the line
                # rather than leave half a record, even if another process interleaves.
                view = memoryview(data)[written:]
                while view:
                    view = view[os.write(self._fd, view) :]
            if self._fsync:
                os.fsync(self._fd)

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

    def __repr__(self) -> str:
        return f"JsonlSink({str(self.path)!r})"


class BackgroundSink(Sink):
    """Runs another sink on a daemon worker thread so ``emit`` never waits for it.

    The queue is bounded: when it is full a record is dropped, counted in ``dropped`` and logged
    (never blocking the caller). Failures of the inner sink are logged and counted in
    ``errors``. Call :meth:`flush` or :meth:`close` before exit: records still queued when the
    process ends are lost.
    """

    def __init__(self, inner: Sink, maxsize: int = 1000) -> None:
        if maxsize < 1:
            raise ValueError("maxsize must be >= 1")
        self.inner = inner
        self.maxsize = maxsize
        self.dropped = 0
        self.errors = 0
        self.abandoned = 0
        """Records still queued when :meth:`close` gave up waiting."""
        self._queue: collections.deque[AuditRecord] = collections.deque()
        self._pending = 0  # queued plus the one being emitted
        self._closing = False
        self._cond = threading.Condition()
        self._worker = threading.Thread(
            target=self._run, name=f"traceguard-sink-{type(inner).__name__}", daemon=True
        )
        self._worker.start()

    def emit(self, record: AuditRecord) -> None:
        with self._cond:
            if self._closing:
                raise SinkError(f"{self!r} is closed")
            if len(self._queue) >= self.maxsize:
                self.dropped += 1
                dropped = self.dropped
            else:
                self._queue.append(record)
                self._pending += 1
                self._cond.notify_all()
                return
        # Log outside the lock, and not once per record: a stuck receiver would flood the log.
        if dropped == 1 or dropped % 100 == 0:
            logger.warning("%r queue full: dropped %d record(s) so far", self, dropped)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closing:
                    self._cond.wait()
                if not self._queue:
                    return
                record = self._queue.popleft()
            try:
                self.inner.emit(record)
            except Exception as exc:
                with self._cond:
                    self.errors += 1
                logger.error("%r: inner sink failed: %s", self, exc)
            finally:
                with self._cond:
                    self._pending -= 1
                    self._cond.notify_all()

    @property
    def pending(self) -> int:
        """Records queued or being emitted."""
        with self._cond:
            return self._pending

    @property
    def undelivered(self) -> int:
        """Records dropped, failed in the inner sink, abandoned at close, or still pending, plus
        whatever the inner sink itself did not deliver."""
        with self._cond:
            mine = self.dropped + self.errors + self.abandoned + self._pending
        return mine + self.inner.undelivered

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until the worker has handed every queued record to the inner sink."""
        with self._cond:
            done = self._cond.wait_for(lambda: self._pending == 0, timeout)
        return done and self.inner.flush(timeout)

    def close(self, timeout: float | None = 10.0) -> None:
        """Deliver what is queued (up to ``timeout`` s), stop the worker, close the inner sink.

        Records still queued after ``timeout`` are abandoned and logged as lost.
        """
        with self._cond:
            if self._closing:
                return
        self.flush(timeout)
        with self._cond:
            self._closing = True
            lost = len(self._queue)
            self._queue.clear()
            self._pending -= lost
            self.abandoned += lost
            self._cond.notify_all()
        if lost:
            logger.warning("%r closed with %d undelivered record(s)", self, lost)
        self._worker.join(timeout)
        self.inner.close()

    def __repr__(self) -> str:
        return f"BackgroundSink({self.inner!r})"
