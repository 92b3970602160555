"""Committed blocks of a Ray audit: the files that make its output exactly-once and resumable.

The input's traces are numbered in reading order (``seq``) and cut into blocks of consecutive
numbers. The driver appends a finished block to the output file when every block before it is
there; a block that finishes early (another worker is still on an earlier one) is committed to
``<out>.parts/`` instead, as one file named by its range, written whole or not at all (temporary
file, ``fsync``, ``rename``, ``fsync`` of the folder). A block is therefore in exactly one of
three states: merged into the output, committed as a part, or neither (to be audited). Resume
keeps the first two and audits only the third; a part is deleted once its lines are merged and
synced, so a crash between the two only leaves a part whose lines the output already holds,
which resume recognises by its range and drops.

``manifest.json`` in the folder says what the parts belong to: the input files (path, size,
modification time), the format, the auditor and its mode. Resume refuses parts of another input
or auditor instead of merging verdicts about something else.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from traceguard._exceptions import ConfigurationError

__all__ = ["PartStore", "Range", "input_fingerprint"]

_SUFFIX = ".jsonl"
_MANIFEST = "manifest.json"


@dataclass(frozen=True, order=True)
class Range:
    """Trace numbers ``start`` (included) to ``end`` (excluded)."""

    start: int
    end: int

    def __contains__(self, seq: object) -> bool:
        return isinstance(seq, int) and self.start <= seq < self.end


def input_fingerprint(paths: Sequence[Path]) -> list[dict[str, Any]]:
    """What identifies the input files: path, size and modification time of each."""
    found = []
    for path in paths:
        info = path.stat()
        found.append(
            {"path": str(path.resolve()), "size": info.st_size, "mtime_ns": info.st_mtime_ns}
        )
    return found


def _fsync_dir(path: Path) -> None:
    # A rename is durable only once the folder holding it is synced.
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class PartStore:
    """The ``<out>.parts/`` folder: committed blocks by range, and the manifest."""

    def __init__(self, out: Path) -> None:
        self.root = out.with_name(out.name + ".parts")

    def _path(self, block: Range) -> Path:
        return self.root / f"{block.start:012d}-{block.end:012d}{_SUFFIX}"

    def start_fresh(self, manifest: Mapping[str, Any]) -> None:
        """Forget any earlier run's parts and write this run's manifest."""
        if self.root.exists():
            shutil.rmtree(self.root)
        self._write_manifest(manifest)

    def resume(self, manifest: Mapping[str, Any]) -> list[Range]:
        """The committed ranges of the interrupted run, after checking it audited this input
        with this auditor; a missing folder means nothing was committed.

        Raises:
            ConfigurationError: the parts belong to another input, format or auditor.
        """
        if not self.root.exists():
            self._write_manifest(manifest)
            return []
        try:
            earlier = json.loads((self.root / _MANIFEST).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            earlier = None
        if earlier != json.loads(json.dumps(manifest)):
            raise ConfigurationError(
                f"cannot resume: the committed blocks in {self.root} were written for another "
                "input, format or auditor (the input files changed since the interrupted run, "
                "or the auditor did); run again without --resume"
            )
        for temporary in self.root.glob("*.tmp"):
            temporary.unlink()
        return sorted(self._ranges())

    def _ranges(self) -> Iterator[Range]:
        for path in self.root.glob(f"*{_SUFFIX}"):
            start, _, end = path.name.removesuffix(_SUFFIX).partition("-")
            if start.isdigit() and end.isdigit():
                yield Range(int(start), int(end))

    def _write_manifest(self, manifest: Mapping[str, Any]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self._write_atomically(self.root / _MANIFEST, [json.dumps(manifest).encode() + b"\n"])

    def _write_atomically(self, path: Path, lines: Sequence[bytes]) -> None:
        temporary = path.with_name(path.name + ".tmp")
        try:
            with temporary.open("wb") as fh:
                fh.writelines(lines)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(temporary, path)
        except OSError:
            with contextlib.suppress(OSError):
                temporary.unlink()
            raise
        _fsync_dir(path.parent)

    def commit(self, block: Range, lines: Sequence[bytes]) -> None:
        """Store a finished block's lines, whole or not at all."""
        self._write_atomically(self._path(block), lines)

    def read(self, block: Range) -> list[bytes]:
        """The lines of a committed block."""
        with self._path(block).open("rb") as fh:
            return fh.readlines()

    def remove(self, block: Range) -> None:
        """Drop a block whose lines are merged (and synced) into the output."""
        with contextlib.suppress(FileNotFoundError):
            self._path(block).unlink()

    def remove_all(self) -> None:
        """Drop the folder once the output holds every line."""
        shutil.rmtree(self.root, ignore_errors=True)
