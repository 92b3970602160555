"""``<think>`` tags: reasoning written inline in a model's text, found in whole texts and in
streamed pieces (tags split anywhere) by the same rules.

:mod:`traceguard._reasoning` uses these for every provider format that can carry tags; the
public door is :func:`split_think_tags` (re-exported there and from ``traceguard``).
"""

from __future__ import annotations

import re
import string
from collections.abc import Sequence

__all__ = ["Segments", "TagScanner", "join_thinking", "split_parts", "split_think_tags"]

_OPEN = "<think>"
_CLOSE = "</think>"
_LONGEST_TAG = len(_CLOSE)
# ASCII-only case folding on both paths: full Unicode folding would read "<thin\u212a>" (Kelvin
# sign) as a tag in one path and not the other.
_TAG_RE = re.compile(r"(</?think>)", re.IGNORECASE | re.ASCII)
_ASCII_LOWER = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)


def join_thinking(parts: Sequence[str]) -> str | None:
    """None when no reasoning was exposed; else the non-empty parts, trimmed, deduplicated."""
    if not parts:
        return None
    kept: list[str] = []
    for part in parts:
        part = part.strip()
        if part and part not in kept:
            kept.append(part)
    return "\n\n".join(kept)


class Segments:
    """Sorts text into thinking and response as tags arrive; shared by the batch and stream paths.

    Rules: text inside ``<think>…</think>`` is thinking; text outside a block followed by a
    ``</think>`` with no opening tag is thinking too (the pre-inserted opening tag of R1-style
    templates); an opening tag inside a block is literal; a block still open at the end runs to
    the end.
    """

    __slots__ = ("closed_any", "current", "inside", "response", "saw_tag", "thinking")

    def __init__(self) -> None:
        self.inside = False
        self.saw_tag = False
        self.closed_any = False
        self.thinking: list[str] = []
        self.response: list[str] = []
        self.current: list[str] = []

    def text(self, piece: str) -> None:
        if piece:
            self.current.append(piece)

    def open_tag(self, raw: str) -> None:
        self.saw_tag = True
        if self.inside:
            self.current.append(raw)
            return
        self.response.extend(self.current)
        self.current = []
        self.inside = True

    def close_tag(self) -> None:
        self.saw_tag = True
        self.closed_any = True
        self.thinking.append("".join(self.current))
        self.current = []
        self.inside = False

    def result(self, pending: str = "") -> tuple[list[str] | None, str]:
        """Thinking parts (None if no tag was seen) and the response, as if the text ended here."""
        tail = "".join(self.current) + pending
        response = "".join(self.response)
        if not self.saw_tag:
            return None, response + tail
        thinking = [*self.thinking, tail] if self.inside else self.thinking
        return thinking, (response if self.inside else response + tail).strip()


def split_parts(content: str) -> tuple[list[str] | None, str]:
    segments = Segments()
    for index, token in enumerate(_TAG_RE.split(content)):
        if index % 2 == 0:
            segments.text(token)
        elif token[1] == "/":
            segments.close_tag()
        else:
            segments.open_tag(token)
    return segments.result()


def split_think_tags(content: str) -> tuple[str | None, str]:
    """Split ``<think>…</think>`` reasoning out of model text.

    Tags are matched case-insensitively; several blocks are joined with a blank line. Text before
    a lone ``</think>`` is thinking (templates that pre-insert ``<think>``); an unclosed
    ``<think>`` makes the rest of the text thinking and leaves the response empty. With tags the
    response is whitespace-trimmed; without any, the content is returned unchanged with None.

    >>> split_think_tags("<think>add them</think> 4")
    ('add them', '4')
    >>> split_think_tags("add them</think>4")
    ('add them', '4')
    """
    parts, response = split_parts(content)
    return (None if parts is None else join_thinking(parts)), response


class TagScanner:
    """Finds ``<think>``/``</think>`` in text arriving in pieces, tags split anywhere.

    Only a possible tag prefix at the end of a piece (at most 8 characters) is held back, so each
    character is scanned a bounded number of times.
    """

    __slots__ = ("pending", "segments")

    def __init__(self, segments: Segments) -> None:
        self.segments = segments
        self.pending = ""

    def feed(self, piece: str) -> None:
        text = self.pending + piece
        self.pending = ""
        start = 0
        pos = text.find("<")
        while pos != -1:
            head = text[pos : pos + _LONGEST_TAG].translate(_ASCII_LOWER)
            if head.startswith(_OPEN):
                self.segments.text(text[start:pos])
                self.segments.open_tag(text[pos : pos + len(_OPEN)])
                start = pos + len(_OPEN)
            elif head == _CLOSE:
                self.segments.text(text[start:pos])
                self.segments.close_tag()
                start = pos + len(_CLOSE)
            elif len(head) < _LONGEST_TAG and (_OPEN.startswith(head) or _CLOSE.startswith(head)):
                # A tag may be cut by the chunk boundary: wait for the next piece.
                self.segments.text(text[start:pos])
                self.pending = text[pos:]
                return
            else:
                pos = text.find("<", pos + 1)
                continue
            pos = text.find("<", start)
        self.segments.text(text[start:])
