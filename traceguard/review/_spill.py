"""The review queue's spill file: escalations not yet in the database survive a crash.

Each :class:`~traceguard.review.ReviewQueue` appends every escalation to a file of its own in
``<queue>.spill/`` before handing it to its writer thread, with one ``write`` on an ``O_APPEND``
descriptor (nothing waits in a Python buffer, so a killed process loses nothing it accepted);
the writer ``fsync``s the file before each database attempt, so what waits for a locked database
also survives an OS crash. Once everything appended is in the database the file is emptied.

The owner holds an exclusive ``flock`` on its file. A queue opening the same database adopts the
files nobody holds (their owner exited or crashed): it copies their lines into its own file,
deletes them, and writes their escalations like its own. Inserts are idempotent, so an entry
that reached the database before the crash is not stored twice.
"""

from __future__ import annotations

import logging
import os
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no adoption of other processes' files
    fcntl = None  # type: ignore[assignment]

from traceguard.review._entry import NewEscalation

__all__ = ["SpillFile", "spill_dir"]

logger = logging.getLogger("traceguard.review")

_SUFFIX = ".spill"


def spill_dir(database: Path) -> Path:
    """The folder holding the spill files of the queue at ``database``."""
    return database.with_name(database.name + ".spill")


class SpillFile:
    """One queue's append-only spill file (created on the first append).

    Thread-safe; the owner truncates it only when its writer has stored every line.
    """

    def __init__(self, database: Path) -> None:
        self.folder = spill_dir(database)
        self.path = self.folder / f"{os.getpid()}-{uuid.uuid4().hex[:12]}{_SUFFIX}"
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._dirty = False
        self.lines = 0
        """Lines appended since the file was last emptied."""

    def _open(self) -> int:
        if self._fd is None:
            self.folder.mkdir(mode=0o700, exist_ok=True)
            flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0)
            # 0o600: lines hold the audited text, like the database.
            fd = os.open(self.path, flags, 0o600)
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            self._fd = fd
        return self._fd

    def append(self, line: bytes) -> None:
        """Append one line (a single ``write``: lines never interleave or tear on a crash)."""
        with self._lock:
            fd = self._open()
            written = os.write(fd, line)
            view = memoryview(line)[written:]
            while view:  # only a full disk short-writes a regular file; finish the line
                view = view[os.write(fd, view) :]
            self._dirty = True
            self.lines += 1

    def sync(self) -> None:
        """``fsync`` what was appended since the last sync."""
        with self._lock:
            if self._fd is not None and self._dirty:
                os.fsync(self._fd)
                self._dirty = False

    def clear_if(self, lines: int) -> bool:
        """Empty the file if no line was appended since it held ``lines`` lines; True if done.

        The writer passes the count it has stored, so a line appended meanwhile is never lost.
        """
        with self._lock:
            if self.lines != lines or self._fd is None:
                return False
            os.ftruncate(self._fd, 0)
            self.lines = 0
            self._dirty = False
            return True

    def entries(self, image_note: str) -> Iterator[list[NewEscalation]]:
        """Read this file's entries back, in batches of up to 64 (for a backlog that was kept
        on disk only). Damaged lines are skipped."""
        if not self.path.exists():
            return
        batch: list[NewEscalation] = []
        with open(self.path, "rb") as handle:
            for line in handle:
                try:
                    batch.append(NewEscalation.from_line(line, image_note=image_note))
                except (ValueError, KeyError, TypeError):
                    continue
                if len(batch) == 64:
                    yield batch
                    batch = []
        if batch:
            yield batch

    def close(self, *, keep: bool) -> None:
        """Close the file; delete it unless ``keep`` (lines still to store). Idempotent."""
        with self._lock:
            if self._fd is None:
                return
            if keep:
                os.fsync(self._fd)
            else:
                self.path.unlink(missing_ok=True)
            os.close(self._fd)  # releases the flock: the next queue opened here adopts the file
            self._fd = None
        if not keep:
            try:
                self.folder.rmdir()
            except OSError:  # other queues' files are still there
                pass

    def adopt_orphans(self) -> list[NewEscalation]:
        """Take over the spill files no live queue holds: their entries, now in this file.

        Damaged lines (a torn write after an OS crash) are skipped and logged with their count.
        """
        if fcntl is None or not self.folder.is_dir():
            return []
        adopted: list[NewEscalation] = []
        for orphan in sorted(self.folder.glob(f"*{_SUFFIX}")):
            if orphan == self.path:
                continue
            try:
                fd = os.open(orphan, os.O_RDWR | getattr(os, "O_CLOEXEC", 0))
            except FileNotFoundError:
                continue  # another queue adopted it meanwhile
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # its owner is alive
                entries, damaged = _read_entries(fd)
                for entry in entries:
                    self.append(entry.to_line())
                self.sync()
                orphan.unlink(missing_ok=True)
            finally:
                os.close(fd)
            if damaged:
                logger.error(
                    "review queue spill file %s: %d damaged line(s) could not be replayed",
                    orphan.name,
                    damaged,
                )
            if entries:
                logger.warning(
                    "review queue: replaying %d escalation(s) left unwritten in %s",
                    len(entries),
                    orphan.name,
                )
            adopted.extend(entries)
        return adopted


def _read_entries(fd: int) -> tuple[list[NewEscalation], int]:
    chunks = []
    while chunk := os.read(fd, 1 << 20):
        chunks.append(chunk)
    entries: list[NewEscalation] = []
    damaged = 0
    for line in b"".join(chunks).splitlines():
        if not line.strip():
            continue
        try:
            entries.append(NewEscalation.from_line(line))
        except (ValueError, KeyError, TypeError):
            damaged += 1
    return entries, damaged
