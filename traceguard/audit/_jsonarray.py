"""Reading one top-level JSON array, an element at a time, however large or damaged it is.

A buffer holds the text not yet consumed (at most one element plus a read chunk). Each element
takes the fast path through ``json``'s C decoder; only when that fails does a delimiter written
here (iterative, so no nesting depth can exhaust the stack) look for where the element ends.

Damage costs as little as the file allows:

1. An element that can be delimited but not decoded (nested deeper than the interpreter allows,
   an integer over the digit limit, a bad literal, bytes that are not UTF-8) is one
   :class:`~traceguard.audit._jsonstream.BadRecord`, and reading goes on after it.
2. Text that cannot be delimited (an unterminated string, unbalanced brackets, junk between
   elements, a file cut short) is skipped up to the next place where a record visibly starts: an
   object after ``,`` or ``[`` or at the start of a line, which decodes whole, is followed by
   ``,`` or ``]``, and which the caller's ``is_record`` accepts. The skipped region is one
   ``BadRecord`` with ``unreadable=True`` that says which lines and how many bytes were not read;
   the records after it are read as usual.
3. When no record starts after the damage, the region runs to the end of the file.
"""

from __future__ import annotations

import codecs
import json
import re
from collections.abc import Callable, Iterator
from typing import IO, Any

from traceguard.audit._jsonstream import (
    BadRecord,
    ByteCounter,
    RawRecord,
    iter_json_lines,
    json_why,
    undecodable,
)

__all__ = ["MAX_ELEMENT_CHARS", "iter_json_array", "iter_records"]

CHUNK = 64 * 1024
MAX_ELEMENT_CHARS = 128 * 1024 * 1024
"""An element longer than this is not buffered whole: it is skipped as an unreadable region."""

_DECODER = json.JSONDecoder()
_WHITESPACE = " \t\r\n"
_STRUCTURE = re.compile(r'["\[\]{}]')
# The rest of a string after its opening quote, closing quote included (unrolled loop: no
# backtracking over long strings).
_STRING_REST = re.compile(r'[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_SCALAR = re.compile(r'[^,\[\]{}"\s]*')
# Where a record may start again after damage: an object after ',' or '[' or a line break.
_RESTART = re.compile(r"[,\[\n][ \t\r\n]*\{")
# Bytes that are not UTF-8 are decoded to lone surrogates U+DC80..U+DCFF ("surrogateescape");
# valid UTF-8 never decodes to a surrogate, and JSON escapes stay six ASCII characters, so such a
# character in the raw text marks exactly the bytes that were not UTF-8.
_NOT_UTF8 = re.compile("[\udc80-\udcff]")
_PAIRS = {"]": "[", "}": "{"}

# The "surrogateescape" error handler, counting its calls: a reader knows for free whether a
# chunk held bytes that are not UTF-8, and searches its elements for them only then. (A count
# moved by another thread's reader only costs that search.)
_ESCAPE_AND_COUNT = "traceguard.audit.surrogateescape-counted"
_escapes = [0]
_surrogateescape = codecs.lookup_error("surrogateescape")


def _escape_and_count(exc: UnicodeError) -> tuple[str | bytes, int]:
    _escapes[0] += 1
    return _surrogateescape(exc)


codecs.register_error(_ESCAPE_AND_COUNT, _escape_and_count)


def _any_object(value: Any) -> bool:
    return isinstance(value, dict)


class _NeedMore(Exception):
    """The buffer ends inside the element: read more and look again."""


class _ArrayReader:
    def __init__(
        self,
        fh: IO[bytes],
        counter: ByteCounter | None,
        is_record: Callable[[Any], bool],
    ) -> None:
        self._fh = fh
        self._counter = counter
        self._is_record = is_record
        self._decoder = codecs.getincrementaldecoder("utf-8-sig")(errors=_ESCAPE_AND_COUNT)
        self.buf = ""
        self.pos = 0
        self.line = 1
        self.eof = False
        self.tainted = False
        """Whether ``buf`` holds bytes that were not UTF-8 (checked per element only then)."""

    # -- the buffer ------------------------------------------------------------------------

    def fill(self, size: int = CHUNK) -> bool:
        """Append up to ``size`` more bytes of the file; False at the end of the file."""
        if self.eof:
            return False
        data = self._fh.read(size)
        if self._counter is not None:
            self._counter.bytes += len(data)
        if not data:
            self.eof = True
            escaped = _escapes[0]
            self.buf += self._decoder.decode(b"", final=True)
            self.tainted = self.tainted or _escapes[0] != escaped
            return False
        escaped = _escapes[0]
        self.buf += self._decoder.decode(data)
        self.tainted = self.tainted or _escapes[0] != escaped
        return True

    def advance(self, to: int) -> None:
        """Move ``pos`` to ``to``, counting lines."""
        self.line += self.buf.count("\n", self.pos, to)
        self.pos = to

    def skip(self, to: int) -> int:
        """:meth:`advance` over unreadable text; returns the bytes skipped."""
        skipped = len(self.buf[self.pos : to].encode("utf-8", "surrogateescape"))
        self.advance(to)
        return skipped

    def compact(self) -> None:
        """Forget the text before ``pos`` (call only when no offset into ``buf`` is held)."""
        if self.pos:
            self.buf = self.buf[self.pos :]
            self.pos = 0
            if self.tainted:
                self.tainted = _NOT_UTF8.search(self.buf) is not None

    def skip_whitespace(self) -> bool:
        """Advance past whitespace; False at the end of the file."""
        while True:
            end = self.pos
            while end < len(self.buf) and self.buf[end] in _WHITESPACE:
                end += 1
            self.advance(end)
            if self.pos < len(self.buf):
                return True
            self.compact()
            if not self.fill():
                return False

    # -- one element -----------------------------------------------------------------------

    def delimit(self, start: int) -> int | None:
        """Where the element at ``start`` ends (exclusive), reading more as needed.

        None when it cannot be told: the file ends inside it, its brackets do not match, or it
        is longer than :data:`MAX_ELEMENT_CHARS`.
        """
        size = CHUNK
        while True:
            try:
                return self._scan(start)
            except _NeedMore:
                if len(self.buf) - start > MAX_ELEMENT_CHARS or not self.fill(size):
                    return None
                size = min(size * 2, 16 * 1024 * 1024)

    def _scan(self, start: int) -> int | None:
        buf = self.buf
        if buf[start] not in '"[{':
            scalar = _SCALAR.match(buf, start)
            end = scalar.end() if scalar is not None else start
            if end == len(buf) and not self.eof:
                raise _NeedMore
            return end if end > start else None
        stack: list[str] = []
        at = start
        while True:
            found = _STRUCTURE.search(buf, at)
            if found is None:
                raise _NeedMore
            mark = found.group()
            if mark == '"':
                rest = _STRING_REST.match(buf, found.end())
                if rest is None:
                    raise _NeedMore
                at = rest.end()
            elif mark in "[{":
                stack.append(mark)
                at = found.end()
            else:
                if not stack or stack.pop() != _PAIRS[mark]:
                    return None
                at = found.end()
            if not stack:
                return at

    def element(self) -> RawRecord | BadRecord | None:
        """The element at ``pos`` (consumed), or None when it cannot be delimited."""
        start, line = self.pos, self.line
        try:
            value, end = _DECODER.raw_decode(self.buf, start)
        except (RecursionError, ValueError):  # JSONDecodeError is a ValueError
            end = -1
        if end >= 0 and end == len(self.buf) and not self.eof:
            end = -1  # a number cut by the buffer's end may continue: delimit it properly
        if end < 0:
            stop = self.delimit(start)
            if stop is None:
                return None
            try:
                value = json.loads(self.buf[start:stop])
            except json.JSONDecodeError as exc:
                self.advance(stop)
                return BadRecord(line, f"array element is not valid JSON: {json_why(exc)}")
            except (RecursionError, ValueError) as exc:
                self.advance(stop)
                return BadRecord(line, f"array element cannot be decoded: {undecodable(exc)}")
            end = stop
        bad_bytes = self.tainted and _NOT_UTF8.search(self.buf, start, end) is not None
        self.advance(end)
        if bad_bytes:
            return BadRecord(line, "array element is not valid UTF-8")
        return RawRecord(line, value)

    # -- damage ----------------------------------------------------------------------------

    def skip_unreadable(self, why: str) -> BadRecord:
        """Skip from ``pos`` to the next record start (or the end); the region as a record."""
        line = self.line
        lost = 0
        at = self.pos  # where the next restart mark may be; the region's own start is no record
        while True:
            found = _RESTART.search(self.buf, at)
            if found is None:
                # Nothing here: forget the text, but keep a tail that may be a restart cut short.
                keep = max(self.pos, len(self.buf.rstrip(_WHITESPACE)) - 1)
                lost += self.skip(keep)
                self.compact()
                at = self.pos
                if not self.fill():
                    lost += self.skip(len(self.buf))
                    return self._region(why, line, lost, resumed=False)
                continue
            candidate = found.end() - 1
            if self._record_starts(candidate):
                lost += self.skip(candidate)
                return self._region(why, line, lost, resumed=True)
            at = candidate

    def _record_starts(self, start: int) -> bool:
        stop = self.delimit(start)
        if stop is None:
            return False
        try:
            value = json.loads(self.buf[start:stop])
        except (RecursionError, ValueError):
            return False
        if not self._is_record(value):
            return False
        after = stop
        while True:
            while after < len(self.buf) and self.buf[after] in _WHITESPACE:
                after += 1
            if after < len(self.buf):
                return self.buf[after] in ",]"
            if not self.fill():
                return True  # the file ends after it: the record is whole, the array is not

    def _region(self, why: str, line: int, lost: int, *, resumed: bool) -> BadRecord:
        until = f"up to line {self.line}, where reading resumed" if resumed else "to the end"
        return BadRecord(
            line,
            f"{why} (line {line}): {lost} bytes from there {until} could not be read as "
            "records and were skipped",
            unreadable=True,
            lost_bytes=lost,
        )

    def at_end(self) -> bool:
        """Whether the whole file has been consumed."""
        return self.eof and self.pos >= len(self.buf)

    # -- the array -------------------------------------------------------------------------

    def records(self) -> Iterator[RawRecord | BadRecord]:
        if not self.skip_whitespace():
            return
        if self.buf[self.pos] != "[":
            yield self.skip_unreadable("expected a JSON array ('[')")
            if self.at_end():
                return
        else:
            self.advance(self.pos + 1)
        want_value = True
        while True:
            if not self.skip_whitespace():
                yield BadRecord(
                    self.line,
                    "the file ends before the JSON array is closed (cut short?); records after "
                    "this point, if there were any, are missing",
                    unreadable=True,
                )
                return
            mark = self.buf[self.pos]
            if mark == "]":
                self.advance(self.pos + 1)
                if not self.skip_whitespace():
                    return
                # Text after the array (a second array, a log appended to): not ignored.
                yield self.skip_unreadable("text follows the end of the JSON array")
                want_value = True
                if self.at_end():
                    return
                continue
            if not want_value:
                if mark == ",":
                    self.advance(self.pos + 1)
                    want_value = True
                    continue
                if mark not in "[{":
                    yield self.skip_unreadable("expected ',' between array elements")
                    want_value = True
                    if self.at_end():
                        return
                    continue
                # A missing comma before an element that reads whole: nothing is lost.
            got = self.element()
            if got is None:
                yield self.skip_unreadable("an array element cannot be delimited")
                want_value = True
                if self.at_end():
                    return
                continue
            yield got
            want_value = False
            self.compact()


def iter_json_array(
    fh: IO[bytes],
    counter: ByteCounter | None = None,
    *,
    is_record: Callable[[Any], bool] = _any_object,
) -> Iterator[RawRecord | BadRecord]:
    """The elements of a top-level JSON array (see the module docstring for damage).

    ``is_record`` tells a value that may restart reading after damage from a nested value
    (default: any JSON object).
    """
    try:
        yield from _ArrayReader(fh, counter, is_record).records()
    except RecursionError:  # pragma: no cover - the delimiter is iterative; belt and braces
        yield BadRecord(0, "the JSON array cannot be read: nested too deeply", unreadable=True)


def iter_records(
    fh: IO[bytes],
    *,
    array: bool,
    counter: ByteCounter | None = None,
    is_record: Callable[[Any], bool] = _any_object,
) -> Iterator[RawRecord | BadRecord]:
    """Records of a file read as a JSON array (``array=True``) or as JSON Lines."""
    if array:
        return iter_json_array(fh, counter, is_record=is_record)
    return iter_json_lines(fh, counter)
