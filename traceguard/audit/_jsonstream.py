"""Streaming JSON records out of a file: JSON Lines, or one (possibly huge) JSON array.

Both readers hold at most one record in memory, whatever the file size, and report each record's
line number so a malformed one can be pointed at. A record that does not parse is yielded as a
:class:`BadRecord` rather than raised: the caller turns it into an ``invalid_input`` output line.
"""

from __future__ import annotations

import codecs
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any

__all__ = ["BadRecord", "RawRecord", "iter_json_array", "iter_json_lines", "iter_records"]

_CHUNK = 64 * 1024
_DECODER = json.JSONDecoder()
_WHITESPACE = " \t\r\n"
# Valid JSON the decoder still refuses: nesting deeper than the interpreter's recursion limit,
# an integer over ``sys.get_int_max_str_digits()``. A hostile log may hold either; each is one
# bad record, never the end of the run. (JSONDecodeError is a ValueError: catch it first.)
_UNDECODABLE = (RecursionError, ValueError)


def _why(exc: BaseException) -> str:
    if isinstance(exc, RecursionError):
        return "nested too deeply"
    return str(exc).split(";", 1)[0][:200]


@dataclass(frozen=True)
class RawRecord:
    """A parsed JSON value and where it starts."""

    line: int
    """1-based line number where the record starts."""
    value: Any


@dataclass(frozen=True)
class BadRecord:
    """Something at ``line`` that is not valid JSON; ``fatal`` when the rest of the file is lost."""

    line: int
    message: str
    fatal: bool = False


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
            yield BadRecord(
                number, f"line is not valid JSON: {_json_why(exc)} (column {exc.colno})"
            )
        except _UNDECODABLE as exc:
            yield BadRecord(number, f"line cannot be decoded: {_why(exc)}")
        else:
            yield RawRecord(number, value)


def iter_json_array(
    fh: IO[bytes], counter: ByteCounter | None = None
) -> Iterator[RawRecord | BadRecord]:
    """The elements of a top-level JSON array, decoded one at a time with ``raw_decode``.

    A buffer holds the text not yet decoded; when an element is cut by the buffer's end, more is
    read (doubling the read size, so a large element costs linear time, not quadratic). An
    element that cannot be decoded ends the file with one fatal :class:`BadRecord`: inside a
    broken array there is no reliable place to resume from.
    """
    decoder = codecs.getincrementaldecoder("utf-8-sig")(errors="strict")
    buf = ""
    pos = 0
    line = 1
    eof = False

    def fill(size: int) -> bool:
        nonlocal buf, pos, eof
        if eof:
            return False
        data = fh.read(size)
        if counter is not None:
            counter.bytes += len(data)
        if not data:
            eof = True
            buf = buf[pos:] + decoder.decode(b"", final=True)
            pos = 0
            return False
        buf = buf[pos:] + decoder.decode(data)
        pos = 0
        return True

    def skip_whitespace() -> bool:
        """Advance past whitespace; False at the end of the file."""
        nonlocal pos, line
        while True:
            while pos < len(buf) and buf[pos] in _WHITESPACE:
                if buf[pos] == "\n":
                    line += 1
                pos += 1
            if pos < len(buf):
                return True
            if not fill(_CHUNK):
                return pos < len(buf)

    try:
        if not skip_whitespace():
            return
        if buf[pos] != "[":
            yield BadRecord(line, "expected a JSON array ('[')", fatal=True)
            return
        pos += 1
        first = True
        while True:
            if not skip_whitespace():
                yield BadRecord(line, "the JSON array is not closed (truncated file?)", fatal=True)
                return
            if buf[pos] == "]":
                return
            if not first:
                if buf[pos] != ",":
                    yield BadRecord(line, "expected ',' between array elements", fatal=True)
                    return
                pos += 1
                if not skip_whitespace():
                    yield BadRecord(line, "the JSON array is not closed", fatal=True)
                    return
            first = False
            size = _CHUNK
            while True:
                try:
                    value, end = _DECODER.raw_decode(buf, pos)
                except json.JSONDecodeError as exc:
                    # The element may simply be cut by the buffer's end: read more and retry.
                    if fill(size):
                        size *= 2
                        continue
                    yield BadRecord(
                        line,
                        f"array element is not valid JSON: {_json_why(exc)}; "
                        "the rest of the file is not read",
                        fatal=True,
                    )
                    return
                except _UNDECODABLE as exc:
                    # Where the element ends is unknown, so nothing after it can be trusted.
                    yield BadRecord(
                        line,
                        f"array element cannot be decoded: {_why(exc)}; the rest of the file is"
                        " not read",
                        fatal=True,
                    )
                    return
                # A number or literal ending exactly at the buffer's end may continue further.
                if end == len(buf) and not eof and fill(size):
                    continue
                break
            yield RawRecord(line, value)
            line += buf.count("\n", pos, end)
            pos = end
    except UnicodeDecodeError as exc:
        yield BadRecord(line, f"file is not valid UTF-8: {exc.reason}", fatal=True)


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


def iter_records(
    fh: IO[bytes], *, array: bool, counter: ByteCounter | None = None
) -> Iterator[RawRecord | BadRecord]:
    """Records of a file read as a JSON array (``array=True``) or as JSON Lines."""
    if array:
        return iter_json_array(fh, counter)
    return iter_json_lines(fh, counter)


def _json_why(exc: json.JSONDecodeError) -> str:
    # json's messages end in " at" ("Invalid control character at") with the position
    # meant to follow; the callers give the position themselves.
    msg = exc.msg
    return msg[: -len(" at")] if msg.endswith(" at") else msg
