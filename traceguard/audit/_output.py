"""The verdicts file: written strictly in input order, one line per write, resumable.

Crash safety rests on three rules. Lines are written in input order, so the file is always a
prefix of the full output. Each line goes out in a single unbuffered ``write`` (a ``kill -9``
can only tear the last line, and only mid-write). On resume, a torn last line is cut off and
the complete lines are checked against the input before they are skipped.

A write that fails (a full disk, a quota) is undone before the error is raised: the file is cut
back to its last whole line, so it stays a prefix of the output that ``--resume`` continues.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from traceguard._exceptions import ConfigurationError

__all__ = ["OutputWriter", "existing_records", "truncate_torn_tail"]

_FSYNC_EVERY = 256


def truncate_torn_tail(path: Path) -> int:
    """Cut the file after its last newline (a torn last line); returns the bytes removed."""
    with path.open("r+b") as fh:
        size = fh.seek(0, os.SEEK_END)
        if size == 0:
            return 0
        position = size
        block = 64 * 1024
        while position > 0:
            start = max(0, position - block)
            fh.seek(start)
            chunk = fh.read(position - start)
            newline = chunk.rfind(b"\n")
            if newline >= 0:
                keep = start + newline + 1
                break
            position = start
        else:
            keep = 0
        if keep < size:
            fh.truncate(keep)
            fh.flush()
            os.fsync(fh.fileno())
        return size - keep


def existing_records(path: Path) -> Iterator[dict[str, Any]]:
    """The complete records of an output file, streamed; a line that does not parse is an error.

    Call :func:`truncate_torn_tail` first: after it, every line was written whole by a previous
    run, so a bad one means the file is not a traceguard output and resuming would be unsafe.
    """
    with path.open("rb") as fh:
        for number, raw in enumerate(fh, start=1):
            try:
                record = json.loads(raw)
            except (UnicodeDecodeError, json.JSONDecodeError):
                record = None
            if not isinstance(record, dict) or "id" not in record:
                raise ConfigurationError(
                    f"cannot resume: line {number} of {path} is not a traceguard record"
                )
            yield record


class OutputWriter:
    """Appends encoded records to the output file, flushed per line, fsynced periodically."""

    def __init__(self, path: Path, *, append: bool, fsync_every: int = _FSYNC_EVERY) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        # Unbuffered: each record reaches the kernel in one write() call, never split by a buffer.
        self._fh: IO[bytes] = path.open("ab" if append else "wb", buffering=0)
        self._whole = self._fh.seek(0, os.SEEK_END)
        """Bytes up to the end of the last line written whole."""
        self._fsync_every = fsync_every
        self._unsynced = 0
        self.lines = 0

    def write(self, line: bytes) -> None:
        """Write one encoded record (ending with a newline).

        Raises:
            OSError: the line could not be written (``errno`` says why; ``filename`` is the
                output). Any part of it that reached the file has been cut off again.
        """
        view = memoryview(line)
        try:
            while view:
                view = view[self._fh.write(view) :]
        except OSError as exc:
            self._undo_torn_line()
            raise OSError(exc.errno, exc.strerror, str(self.path)) from exc
        self._whole += len(line)
        self.lines += 1
        self._unsynced += 1
        if self._unsynced >= self._fsync_every:
            self.sync()

    def _undo_torn_line(self) -> None:
        # Shrinking a file needs no free space; if even this fails, --resume cuts the tail.
        try:
            os.ftruncate(self._fh.fileno(), self._whole)
            self._fh.seek(self._whole)
        except OSError:
            pass

    def sync(self) -> None:
        """Force written lines to disk."""
        if self._unsynced:
            try:
                os.fsync(self._fh.fileno())
            except OSError as exc:
                raise OSError(exc.errno, exc.strerror, str(self.path)) from exc
            self._unsynced = 0

    def close(self) -> None:
        """Sync and close (the file is closed even when the sync fails)."""
        if not self._fh.closed:
            try:
                self.sync()
            finally:
                self._fh.close()
