"""Server-sent events, split into frames that keep their exact bytes. No I/O.

A frame is everything up to and including the blank line that ends it; its ``raw`` bytes are
what the proxy forwards when the frame passes unchanged, so an allowed stream reaches the
client byte for byte. Lines may end in LF or CRLF (a lone CR, allowed by the SSE spec, is not
used by any OpenAI-compatible server and is not split on).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["Frame", "FrameTooLarge", "SSEDecoder"]

_BOUNDARY = re.compile(rb"(?:\r\n|\n)(?:\r\n|\n)")
_LINE = re.compile(rb"\r\n|\n")


class FrameTooLarge(ValueError):
    """One frame grew past the limit without ending."""


@dataclass(frozen=True)
class Frame:
    """One SSE event."""

    raw: bytes
    event: str | None = None
    data: str | None = None
    """The ``data:`` lines joined by newlines; None when the frame has none (a comment)."""


def parse_frame(raw: bytes) -> Frame:
    """The fields of one frame's bytes."""
    event: str | None = None
    data: list[str] = []
    for line in _LINE.split(raw):
        if not line or line.startswith(b":"):
            continue
        name, _, value = line.partition(b":")
        if value.startswith(b" "):
            value = value[1:]
        if name == b"data":
            data.append(value.decode("utf-8", errors="replace"))
        elif name == b"event":
            event = value.decode("utf-8", errors="replace")
    return Frame(raw=raw, event=event, data="\n".join(data) if data else None)


class SSEDecoder:
    """Feed bytes as they arrive; get whole frames back."""

    def __init__(self, *, max_frame_bytes: int) -> None:
        self._buffer = bytearray()
        self._searched = 0  # bytes already searched for a boundary (minus a possible split one)
        self._max = max_frame_bytes

    def feed(self, data: bytes) -> list[Frame]:
        """The frames that ``data`` completes.

        Raises:
            FrameTooLarge: a frame passed ``max_frame_bytes`` without ending.
        """
        self._buffer += data
        frames = []
        start = 0
        while True:
            match = _BOUNDARY.search(self._buffer, max(start, self._searched - 3))
            if match is None:
                break
            frames.append(parse_frame(bytes(self._buffer[start : match.end()])))
            start = match.end()
            self._searched = start
        if start:
            del self._buffer[:start]
        self._searched = len(self._buffer)
        if len(self._buffer) > self._max:
            raise FrameTooLarge(f"an SSE event passed {self._max} bytes without ending")
        return frames

    def close(self) -> list[Frame]:
        """The last frame, when the stream ended without its blank line."""
        rest, self._buffer = bytes(self._buffer), bytearray()
        self._searched = 0
        return [parse_frame(rest)] if rest.strip() else []
