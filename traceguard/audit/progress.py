"""Progress reporting on stderr: a live ``\\r`` line on a terminal, plain lines otherwise.

Progress is measured in input bytes (known up front for every file, no pre-count pass), and
shown with the number of records written, the rate in traces per second and an ETA.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

__all__ = ["Progress"]


def _duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"


class Progress:
    """Reports how far an audit is.

    ``update`` is cheap to call per record: it only prints when ``interval`` seconds passed
    since the last print (0.2 s on a terminal, 10 s otherwise, where each print is a new line
    in a CI log).
    """

    def __init__(
        self,
        total_bytes: int,
        *,
        stream: TextIO | None = None,
        interval: float | None = None,
        enabled: bool = True,
    ) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.total_bytes = max(total_bytes, 0)
        self.enabled = enabled
        self.live = enabled and _is_terminal(self.stream)
        self.interval = interval if interval is not None else (0.2 if self.live else 10.0)
        self.started = time.monotonic()
        self._last_print = self.started
        self._width = 0
        self.records = 0
        self.bytes_done = 0

    def update(self, records: int, bytes_done: int, *, force: bool = False) -> None:
        """Record the current position; print if it is time to."""
        self.records = records
        self.bytes_done = bytes_done
        if not self.enabled:
            return
        now = time.monotonic()
        if not force and now - self._last_print < self.interval:
            return
        self._last_print = now
        self._print(self.line(now))

    def line(self, now: float | None = None) -> str:
        """The current progress line."""
        now = time.monotonic() if now is None else now
        elapsed = max(now - self.started, 1e-9)
        rate = self.records / elapsed
        fraction = self.bytes_done / self.total_bytes if self.total_bytes else 1.0
        fraction = min(max(fraction, 0.0), 1.0)
        eta = elapsed * (1 - fraction) / fraction if fraction > 0 else None
        bar_width = 24
        filled = int(bar_width * fraction)
        bar = "#" * filled + "-" * (bar_width - filled)
        eta_text = _duration(eta) if eta is not None else "--:--"
        return (
            f"[{bar}] {fraction * 100:5.1f}%  {self.records} traces  {rate:.1f}/s  "
            f"elapsed {_duration(elapsed)}  eta {eta_text}"
        )

    def _print(self, text: str) -> None:
        if self.live:
            pad = " " * max(0, self._width - len(text))
            self.stream.write("\r" + text + pad)
            self._width = len(text)
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def close(self) -> None:
        """Print the final position and end the live line."""
        if not self.enabled:
            return
        self._print(self.line())
        if self.live:
            self.stream.write("\n")
            self.stream.flush()


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
