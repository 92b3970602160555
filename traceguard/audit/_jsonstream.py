"""Streaming JSON records out of a file: the record types, and the JSON Lines reader.

Readers (this one, and the JSON array reader in :mod:`._jsonarray`) hold at most one record in
memory, whatever the file size, and report each record's line number so a malformed one can be
pointed at. A record that does not parse is yielded as a :class:`BadRecord` rather than raised:
the caller turns it into an ``invalid_input`` output line.
"""

from __future__ import annotations

import codecs
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any

__all__ = [
    "UNREADABLE_INPUT",
    "BadRecord",
    "ByteCounter",
    "RawRecord",
    "first_significant_byte",
    "iter_json_lines",
    "json_why",
    "undecodable",
]

# Valid JSON the decoder still refuses: nesting deeper than the interpreter's recursion limit,
# an integer over ``sys.get_int_max_str_digits()``. A hostile log may hold either; each is one
# bad record, never the end of the run. (JSONDecodeError is a ValueError: catch it first.)
_UNDECODABLE = (RecursionError, ValueError)


def undecodable(exc: BaseException) -> str:
    """Why valid-looking JSON could not be decoded (nesting depth, digit limit)."""
    if isinstance(exc, RecursionError):
        return "nested too deeply"
    return str(exc).split(";", 1)[0][:200]


UNREADABLE_INPUT = "UnreadableInput"
"""The error type of an output record standing for input text that could not be split into
records: any records it held are lost, and ``traceguard audit`` exits with code 4."""


@dataclass(frozen=True)
class RawRecord:
    """A parsed JSON value and where it starts."""

    line: int
    """1-based line number where the record starts."""
    value: Any


@dataclass(frozen=True)
class BadRecord:
    """Something at ``line`` that is not a valid JSON record."""

    line: int
    message: str
    unreadable: bool = False
    """The text could not be delimited into records: any records it held are lost (the message
    says which lines and how many bytes)."""
    lost_bytes: int = 0
    """Bytes of the input skipped with an ``unreadable`` region."""


class ByteCounter:
    """How far a reader got into its file, in bytes (for progress and ETA)."""

    def __init__(self) -> None:
        self.bytes = 0


def iter_json_lines(
    fh: IO[bytes], counter: ByteCounter | None = None
) -> Iterator[RawRecord | BadRecord]:
    """One record per non-blank line; bad JSON or bad UTF-8 becomes a :class:`BadRecord`."""
    for number, raw in enumerate(fh, start=1):
        if counter is not None:
            counter.bytes += len(raw)
        if not raw.strip():
            continue
        try:
            value = json.loads(raw.decode("utf-8-sig"))
        except UnicodeDecodeError as exc:
            yield BadRecord(number, f"line is not valid UTF-8: {exc.reason}")
        except json.JSONDecodeError as exc:
            yield BadRecord(number, f"line is not valid JSON: {json_why(exc)} (column {exc.colno})")
        except _UNDECODABLE as exc:
            yield BadRecord(number, f"line cannot be decoded: {undecodable(exc)}")
        else:
            yield RawRecord(number, value)


def first_significant_byte(fh: IO[bytes]) -> bytes:
    """The first non-whitespace byte of a seekable file (b'' when empty); rewinds the file."""
    fh.seek(0)
    try:
        while True:
            chunk = fh.read(4096)
            if not chunk:
                return b""
            stripped = chunk.lstrip()
            # A UTF-8 byte-order mark is not content.
            if stripped.startswith(codecs.BOM_UTF8):
                stripped = stripped[len(codecs.BOM_UTF8) :].lstrip()
            if stripped:
                return stripped[:1]
    finally:
        fh.seek(0)


def json_why(exc: json.JSONDecodeError) -> str:
    """The reason in a JSON error message, without its dangling position words."""
    # json's messages end in " at" ("Invalid control character at") with the position
    # meant to follow; the callers give the position themselves.
    msg = exc.msg
    return msg[: -len(" at")] if msg.endswith(" at") else msg
