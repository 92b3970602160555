"""Who is calling: client keys (kept as sha256 digests) and their rate limits. No I/O.

A presented key is hashed and looked up by digest: the proxy never holds a client key in
memory longer than one request, and the configuration holds none at all. Rate limits are token
buckets driven by a clock the caller passes in, so tests and the handler share one rule.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field

from traceguard._guard import Guard

__all__ = ["Client", "KeyRing", "TokenBucket", "bearer_token", "key_digest"]


def key_digest(key: str) -> str:
    """The sha256 hex digest a key is stored as."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, or None."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    return token


@dataclass
class TokenBucket:
    """``rate`` requests per second on average, at most ``capacity`` at once."""

    rate: float
    capacity: float
    tokens: float = field(default=-1.0)
    updated: float = 0.0

    def __post_init__(self) -> None:
        if self.tokens < 0:
            self.tokens = self.capacity

    def take(self, now: float) -> float | None:
        """Spend one token: None when allowed, else the seconds until one is available."""
        elapsed = max(0.0, now - self.updated) if self.updated else 0.0
        self.tokens = min(self.capacity, self.tokens + elapsed * self.rate)
        self.updated = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return None
        return (1.0 - self.tokens) / self.rate


@dataclass
class Client:
    """A caller the proxy let in: its name, the guard of its policy, its bucket."""

    name: str
    guard: Guard
    bucket: TokenBucket | None = None


class KeyRing:
    """Client keys by digest; ``open_client`` answers keyless requests when the proxy is open."""

    def __init__(self, clients: Mapping[str, Client], *, open_client: Client | None = None):
        self._by_digest = dict(clients)
        self.open_client = open_client

    def __len__(self) -> int:
        return len(self._by_digest)

    @property
    def clients(self) -> list[Client]:
        """Every keyed client."""
        return list(self._by_digest.values())

    def lookup(self, token: str | None) -> Client | None:
        """The client a presented key belongs to; the open client (or None) without a key."""
        if token is None:
            return self.open_client
        return self._by_digest.get(key_digest(token))
