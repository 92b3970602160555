"""A SQLite verdict cache, so a trace seen before is not audited again.

Keys combine :meth:`Trace.content_hash` (everything the auditor sees) with the auditor's name and
mode, so switching auditor or mode never reuses a verdict. Only ``OK`` verdicts are stored: an
auditor error or an unparseable output may well succeed next time, and caching it would turn a
transient failure into a permanent one.

A cache that stops working mid-run (a full disk, a damaged file) is switched off, not fatal: the
run goes on auditing every trace, and :attr:`VerdictCache.disabled` says why.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import sqlite3
from pathlib import Path
from typing import Any

from traceguard._exceptions import ConfigurationError
from traceguard._images import ImageRef
from traceguard._trace import Trace
from traceguard._verdict import AuditStatus, ErrorInfo, Label, Verdict

__all__ = ["VerdictCache", "cache_key"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS verdicts (
    key TEXT PRIMARY KEY,
    verdict TEXT NOT NULL
)
"""
_COMMIT_EVERY = 200

_log = logging.getLogger("traceguard.audit.cache")


def cache_key(trace: Trace, auditor: str, mode: str) -> str:
    """The cache key of a trace for one auditor and mode.

    Image files are named by path in :meth:`Trace.content_hash`; their size, modification time
    and inode join the key, so an image replaced under the same name between two runs is
    audited again instead of inheriting the verdict about the old picture.
    """
    files = [_file_stamp(image) for turn in _image_lists(trace) for image in turn]
    blob = json.dumps([trace.content_hash(), auditor, mode, files]).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()


def _image_lists(trace: Trace) -> list[tuple[ImageRef, ...]]:
    return [trace.images, *(turn.images for turn in trace.history)]


def _file_stamp(image: ImageRef) -> list[int] | None:
    if image.kind != "path":
        return None  # in-memory images are hashed by content already
    try:
        info = os.stat(image.source)
    except (OSError, ValueError):
        return [-1, -1, -1]  # unreadable now: the audit will say so (not cached)
    return [info.st_size, info.st_mtime_ns, info.st_ino]


def _encode(verdict: Verdict) -> str:
    data = verdict.to_dict()
    return json.dumps(data, ensure_ascii=False, sort_keys=True)


def _decode(text: str) -> Verdict:
    data: dict[str, Any] = json.loads(text)
    error = data.get("error")
    label = data.get("label")
    return Verdict(
        status=AuditStatus(data["status"]),
        auditor=data["auditor"],
        risk=data.get("risk"),
        label=Label(label) if label is not None else None,
        categories=tuple(data.get("categories") or ()),
        analysis=data.get("analysis") or "",
        raw_output=data.get("raw_output"),
        latency_ms=float(data.get("latency_ms") or 0.0),
        probabilities=data.get("probabilities"),
        error=ErrorInfo(**error) if error else None,
        details=data.get("details") or {},
    )


class VerdictCache:
    """Verdicts by cache key, in one SQLite file.

    Not thread-safe: the audit runner touches it from one thread only. Writes are committed in
    groups (and on :meth:`close`), so a crash loses at most the last few entries — which only
    means they are audited again.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # One thread at a time, but not always the creating one (an event loop thread).
            self._db = sqlite3.connect(
                str(self.path), isolation_level="DEFERRED", check_same_thread=False
            )
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute(_SCHEMA)
            self._db.commit()
        except sqlite3.Error as exc:
            if getattr(exc, "sqlite_errorcode", None) == getattr(sqlite3, "SQLITE_FULL", 13):
                raise OSError(errno.ENOSPC, str(exc), str(self.path)) from exc
            raise ConfigurationError(f"cannot open the verdict cache {self.path}: {exc}") from exc
        self._pending = 0
        self.hits = 0
        self.misses = 0
        self.disabled: str | None = None
        """Why the cache stopped working mid-run (then it neither reads nor writes), or None."""

    def _disable(self, exc: sqlite3.Error) -> None:
        if self.disabled is None:
            self.disabled = f"{type(exc).__name__}: {exc}"
            _log.warning("verdict cache %s switched off: %s", self.path, self.disabled)
        self._pending = 0
        try:
            self._db.rollback()
        except sqlite3.Error:
            pass

    def get(self, key: str) -> Verdict | None:
        """The cached verdict for ``key``, or None."""
        if self.disabled is not None:
            self.misses += 1
            return None
        try:
            row = self._db.execute("SELECT verdict FROM verdicts WHERE key = ?", (key,)).fetchone()
        except sqlite3.Error as exc:
            self._disable(exc)
            row = None
        if row is None:
            self.misses += 1
            return None
        try:
            verdict = _decode(row[0])
        except (ValueError, KeyError, TypeError):
            # A corrupt or outdated entry is a miss, never a verdict.
            self.misses += 1
            return None
        if not verdict.is_ok or verdict.label is None or verdict.risk != verdict.label.risk:
            # Only well-formed OK verdicts are ever stored; anything else is damage, not a risk.
            self.misses += 1
            return None
        self.hits += 1
        return verdict

    def put(self, key: str, verdict: Verdict) -> None:
        """Store an OK verdict; failed verdicts are ignored on purpose."""
        if not verdict.is_ok or self.disabled is not None:
            return
        try:
            self._db.execute(
                "INSERT OR REPLACE INTO verdicts (key, verdict) VALUES (?, ?)",
                (key, _encode(verdict)),
            )
        except sqlite3.Error as exc:
            self._disable(exc)
            return
        self._pending += 1
        if self._pending >= _COMMIT_EVERY:
            self.flush()

    def flush(self) -> None:
        """Commit pending writes (lost, with the cache switched off, if the commit fails)."""
        if self._pending and self.disabled is None:
            try:
                self._db.commit()
            except sqlite3.Error as exc:
                self._disable(exc)
            self._pending = 0

    def __len__(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM verdicts").fetchone()[0])

    def close(self) -> None:
        """Commit and close the database."""
        self.flush()
        self._db.close()

    def __enter__(self) -> VerdictCache:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
