"""The proxy's own secrets kept out of what the upstream sends back. No I/O.

The proxy adds the upstream's key (and any ``headers_from_env`` values) to every request it
forwards. An upstream may echo them: in an error body ("invalid key sk-..."), a header, a
redirect, or (a broken or hostile one) anywhere in a body. :class:`Scrubber` replaces each such
value with ``[redacted]`` in the upstream's headers and bodies before a byte reaches a client
or a log. A body is scrubbed as it streams: only a tail that could be the start of a secret is
held back until the next bytes decide, so SSE frames are not delayed.

Limit: exact values only. A secret the upstream re-encodes (base64, JSON ``\\/`` escapes,
partly masked) is not recognised; values shorter than :data:`MIN_SECRET_CHARS` are not
scrubbed (they would match ordinary text).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

__all__ = ["MIN_SECRET_CHARS", "REDACTED", "Scrubber", "StreamScrub"]

MIN_SECRET_CHARS = 8
REDACTED = b"[redacted]"


class Scrubber:
    """Replaces the given secret values wherever they appear (bytes, header values)."""

    def __init__(self, secrets: Iterable[str]) -> None:
        found = {s.encode("latin-1", "replace") for s in secrets if len(s) >= MIN_SECRET_CHARS}
        # Longest first: a secret that contains another is replaced whole.
        self.secrets: tuple[bytes, ...] = tuple(sorted(found, key=len, reverse=True))

    def __bool__(self) -> bool:
        return bool(self.secrets)

    def scrub(self, data: bytes) -> bytes:
        """``data`` with every secret replaced."""
        for secret in self.secrets:
            if secret in data:
                data = data.replace(secret, REDACTED)
        return data

    def headers(self, headers: Sequence[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
        """Header pairs with every secret replaced in their values."""
        return [(name, self.scrub(value)) for name, value in headers]

    def stream(self) -> StreamScrub:
        """A scrubber for one body that arrives in pieces."""
        return StreamScrub(self)


class StreamScrub:
    """One body's scrubbing across its pieces: :meth:`feed` each, then :meth:`close`."""

    def __init__(self, scrubber: Scrubber) -> None:
        self._scrubber = scrubber
        self._pending = b""

    def feed(self, data: bytes) -> bytes:
        """What may be released of the body so far (a possible secret's start is held)."""
        if not self._scrubber.secrets:
            return data
        text = self._scrubber.scrub(self._pending + data)
        held = max(_partial_tail(text, secret) for secret in self._scrubber.secrets)
        self._pending = text[len(text) - held :] if held else b""
        return text[: len(text) - held]

    def close(self) -> bytes:
        """The held tail, at the end of the body (it was no secret)."""
        rest, self._pending = self._pending, b""
        return rest


def _partial_tail(data: bytes, secret: bytes) -> int:
    """The length of the longest end of ``data`` that is a proper start of ``secret``."""
    first = secret[:1]
    at = data.find(first, max(0, len(data) - len(secret) + 1))
    while at != -1:
        if secret.startswith(data[at:]):
            return len(data) - at
        at = data.find(first, at + 1)
    return 0
