"""The webhook sink's spill file: records it could not deliver yet, kept on disk.

Every :class:`~traceguard.WebhookSink` for a given URL shares one folder; each sink appends to a
file of its own there (one JSON record per line, each batch in one ``write`` on an ``O_APPEND``
descriptor, so a killed process leaves whole lines) and holds an exclusive ``flock`` on it while
it lives. A sink starting later *adopts* the files nobody holds — their owner closed with records
undelivered, or crashed — by copying their lines into its own file and deleting them: that is
the replay on restart. Delivery reads the file from the front; when every line is delivered the
file is emptied. A crash between delivering and emptying re-sends those records: delivery is at
least once, and each record carries a ``record_id`` for the receiver to drop duplicates.
"""

from __future__ import annotations

import logging
import os
import uuid
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no adoption of other processes' files
    fcntl = None  # type: ignore[assignment]

__all__ = ["SpillFile"]

logger = logging.getLogger("traceguard.sinks")

_SUFFIX = ".spill"
_READ_CHUNK = 1 << 20


class SpillFile:
    """One sink's spill file (created on first use). Not thread-safe: the sink holds its lock."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.path = folder / f"{os.getpid()}-{uuid.uuid4().hex[:12]}{_SUFFIX}"
        self._fd: int | None = None
        self._size = 0
        self._read = 0
        """Bytes from the front already handed out by :meth:`peek` and confirmed by :meth:`drop`."""
        self._peeked = 0
        self.lines = 0
        """Lines not delivered yet."""

    def _open(self) -> int:
        if self._fd is None:
            self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            flags = os.O_RDWR | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0)
            # 0o600: records hold verdict analyses, which may quote the audited text.
            fd = os.open(self.path, flags, 0o600)
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            self._fd = fd
        return self._fd

    def append(self, lines: list[bytes]) -> None:
        """Append records (no newline inside any), in one ``write`` when the OS allows.

        Raises:
            OSError: the disk is full or the folder cannot be written; nothing was appended.
        """
        if not lines:
            return
        data = b"".join(line + b"\n" for line in lines)
        fd = self._open()
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(fd, view) :]
        except OSError:
            os.ftruncate(fd, self._size)  # no torn line: the whole batch counts as not spilled
            raise
        self._size += len(data)
        self.lines += len(lines)

    def peek(self, limit: int) -> list[bytes]:
        """Up to ``limit`` undelivered records from the front, without consuming them."""
        if self._fd is None or self.lines == 0:
            return []
        found: list[bytes] = []
        at = self._read
        buffer = b""
        while len(found) < limit and at < self._size:
            chunk = os.pread(self._fd, min(_READ_CHUNK, self._size - at), at)
            if not chunk:
                break
            at += len(chunk)
            buffer += chunk
            *whole, buffer = buffer.split(b"\n")
            found.extend(whole)
        found = found[:limit]
        self._peeked = self._read + sum(len(line) + 1 for line in found)
        return found

    def drop(self, count: int) -> None:
        """The ``count`` records last peeked are delivered (or given up): forget them."""
        assert self._fd is not None
        self._read = self._peeked
        self.lines -= count
        if self._read >= self._size:
            os.ftruncate(self._fd, 0)
            self._size = self._read = self._peeked = 0
            self.lines = 0

    def sync(self) -> None:
        """Force the appended records to disk."""
        if self._fd is not None:
            os.fsync(self._fd)

    def adopt_orphans(self) -> int:
        """Move the records of files nobody holds into this one; returns how many."""
        if fcntl is None or not self.folder.is_dir():
            return 0
        adopted = 0
        for other in sorted(self.folder.glob(f"*{_SUFFIX}")):
            if other == self.path:
                continue
            try:
                fd = os.open(other, os.O_RDWR | getattr(os, "O_CLOEXEC", 0))
            except OSError:
                continue
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    continue  # its owner is alive
                lines, torn = _whole_lines(fd)
                self.append(lines)
                if torn:
                    logger.warning("spill file %s ended in a torn record (dropped)", other)
                other.unlink()
                adopted += len(lines)
            finally:
                os.close(fd)
        return adopted

    def close(self) -> None:
        """Release the file: deleted when empty, else kept for the next sink to adopt."""
        if self._fd is None:
            return
        empty = self.lines == 0
        if empty:
            self.path.unlink(missing_ok=True)
        else:
            os.fsync(self._fd)
        os.close(self._fd)  # releases the flock
        self._fd = None


def _whole_lines(fd: int) -> tuple[list[bytes], bool]:
    """The complete lines of a file, and whether it ends in a torn one."""
    data = bytearray()
    while chunk := os.read(fd, _READ_CHUNK):
        data += chunk
    *lines, tail = bytes(data).split(b"\n")
    return [line for line in lines if line], bool(tail)
