"""Base URLs in priority order, with a memory of which ones are down."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence

import httpx

from traceguard._exceptions import ConfigurationError
from traceguard._urls import redact_url

__all__ = ["Endpoints"]


class Endpoints:
    """Picks the base URL for the next attempt.

    The first URL that is not cooling down wins, so traffic returns to the primary as soon as
    its cool-down ends. When every URL is cooling down, the one that recovers first is tried
    anyway: giving up without trying would turn a brief outage into certain failures.
    """

    def __init__(
        self,
        urls: Sequence[str],
        *,
        cooldown_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        cleaned = [u.strip().rstrip("/") for u in urls]
        if not cleaned or any(not u for u in cleaned):
            raise ConfigurationError("OpenAICompatibleBackend needs at least one base URL")
        for url in cleaned:
            if httpx.URL(url).scheme not in ("http", "https"):
                raise ConfigurationError(f"not an http(s) base URL: {redact_url(url)!r}")
        self.urls: tuple[str, ...] = tuple(cleaned)
        # Parsed once: formatting a URL costs more than the rest of a successful attempt.
        self.shown: dict[str, str] = {u: redact_url(u) for u in cleaned}
        self._cooldown_s = cooldown_s
        self._clock = clock
        self._down_until: dict[str, float] = {}
        self._lock = threading.Lock()

    def pick(self) -> str:
        """The base URL to use now."""
        now = self._clock()
        with self._lock:
            for url in self.urls:
                if self._down_until.get(url, 0.0) <= now:
                    return url
            return min(self.urls, key=lambda u: self._down_until[u])

    def mark_down(self, url: str) -> None:
        """Avoid ``url`` for the cool-down period."""
        with self._lock:
            self._down_until[url] = self._clock() + self._cooldown_s

    def mark_up(self, url: str) -> None:
        """``url`` answered: forget any earlier failure."""
        with self._lock:
            self._down_until.pop(url, None)

    def any_up(self) -> bool:
        """Whether some URL is not cooling down."""
        now = self._clock()
        with self._lock:
            return any(self._down_until.get(u, 0.0) <= now for u in self.urls)
