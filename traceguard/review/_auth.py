"""Who may use the review app: the token, login sessions and CSRF tokens, without I/O.

- Every request needs the app's token: as ``Authorization: Bearer <token>``, or once through the
  login form, which starts a session (a random id in an ``HttpOnly; SameSite=Strict`` cookie).
- Every state change (POST) needs a CSRF token bound to the session: a random one per login
  session, or for bearer clients one derived from the token (``GET /api/session`` tells it).
  The login form itself is protected with a double-submit cookie.
- Failed token checks (login form and bearer header alike) are throttled, so the token cannot
  be guessed at request speed.
- Sessions are bounded (the oldest goes first); a new login ends the session it arrived with.

Sessions live in memory: restarting ``traceguard review`` logs everyone out, and one process
serves the app (run a single worker).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from collections import deque
from dataclasses import dataclass

__all__ = ["MIN_TOKEN_CHARS", "Identity", "ReviewAuth", "generate_token"]

MIN_TOKEN_CHARS = 16
MAX_NAME_CHARS = 80
SESSION_COOKIE = "tg_review_session"
LOGIN_COOKIE = "tg_review_login"
CSRF_FIELD = "csrf"
CSRF_HEADER = "x-csrf-token"


def generate_token() -> str:
    """A fresh random token (192 bits, URL-safe)."""
    return secrets.token_urlsafe(24)


@dataclass(frozen=True)
class Identity:
    """An authenticated requester: the reviewer's name and the CSRF token their forms carry."""

    reviewer: str
    csrf: str
    session_id: str | None = None
    """The login session, or None for a bearer-token client."""


@dataclass
class _Session:
    reviewer: str
    csrf: str
    expires: float


class ReviewAuth:
    """Checks tokens, keeps login sessions, issues and checks CSRF tokens. Thread-safe.

    Args:
        token: the secret every reviewer must present.
        session_ttl: seconds a login lasts.
        max_failures: failed logins tolerated per ``failure_window`` seconds before further
            attempts are refused (HTTP 429) until the window passes.
        max_sessions: live sessions kept; a login beyond it ends the oldest.
    """

    def __init__(
        self,
        token: str,
        *,
        session_ttl: float = 12 * 3600,
        max_failures: int = 10,
        failure_window: float = 60.0,
        max_sessions: int = 1000,
    ) -> None:
        if len(token) < MIN_TOKEN_CHARS:
            raise ValueError(f"the review token must be at least {MIN_TOKEN_CHARS} characters")
        self._token = token.encode()
        self._key = secrets.token_bytes(32)  # per process: derived tokens die with it
        self._sessions: dict[str, _Session] = {}
        self._failures: deque[float] = deque()
        self._lock = threading.Lock()
        self.session_ttl = session_ttl
        self.max_failures = max_failures
        self.failure_window = failure_window
        self.max_sessions = max_sessions

    # -- tokens ------------------------------------------------------------------------------

    def token_matches(self, candidate: str) -> bool:
        """Constant-time comparison with the app's token."""
        return hmac.compare_digest(candidate.encode("utf-8", "replace"), self._token)

    def throttled(self, now: float | None = None) -> bool:
        """True while too many logins failed recently."""
        now = time.monotonic() if now is None else now
        with self._lock:
            while self._failures and self._failures[0] < now - self.failure_window:
                self._failures.popleft()
            return len(self._failures) >= self.max_failures

    def record_failure(self, now: float | None = None) -> None:
        with self._lock:
            self._failures.append(time.monotonic() if now is None else now)

    # -- sessions ----------------------------------------------------------------------------

    def login(self, token: str, reviewer: str, now: float | None = None) -> str | None:
        """A new session id for a correct token, else None (and the failure is counted)."""
        now = time.monotonic() if now is None else now
        if not self.token_matches(token):
            self.record_failure(now)
            return None
        session_id = secrets.token_urlsafe(32)
        with self._lock:
            self._expire(now)
            while len(self._sessions) >= self.max_sessions:
                del self._sessions[next(iter(self._sessions))]  # the oldest login
            self._sessions[session_id] = _Session(
                reviewer=clean_name(reviewer) or "reviewer",
                csrf=secrets.token_urlsafe(32),
                expires=now + self.session_ttl,
            )
        return session_id

    def logout(self, session_id: str) -> None:
        with self._lock:
            self._sessions.pop(session_id, None)

    def session(self, session_id: str, now: float | None = None) -> Identity | None:
        """The identity of a live session, or None."""
        now = time.monotonic() if now is None else now
        with self._lock:
            found = self._sessions.get(session_id)
            if found is None or found.expires <= now:
                self._sessions.pop(session_id, None)
                return None
            return Identity(reviewer=found.reviewer, csrf=found.csrf, session_id=session_id)

    def bearer(self, token: str, reviewer: str | None) -> Identity | None:
        """The identity of a bearer client, or None for a wrong token (a failure counted with
        the logins': check :meth:`throttled` first, as for a login)."""
        if not self.token_matches(token):
            self.record_failure()
            return None
        return Identity(reviewer=clean_name(reviewer or "") or "api", csrf=self._bearer_csrf())

    def _bearer_csrf(self) -> str:
        digest = hmac.new(self._key, b"bearer:" + hashlib.sha256(self._token).digest(), "sha256")
        return digest.hexdigest()

    def _expire(self, now: float) -> None:
        for session_id in [s for s, v in self._sessions.items() if v.expires <= now]:
            del self._sessions[session_id]

    # -- CSRF --------------------------------------------------------------------------------

    @staticmethod
    def csrf_matches(identity: Identity, candidate: str | None) -> bool:
        """True when ``candidate`` is the identity's CSRF token."""
        if not candidate:
            return False
        return hmac.compare_digest(candidate.encode("utf-8", "replace"), identity.csrf.encode())


def clean_name(name: str) -> str:
    """A reviewer name as stored: printable, single-spaced, at most ``MAX_NAME_CHARS``."""
    text = " ".join("".join(ch for ch in name if ch.isprintable()).split())
    return text[:MAX_NAME_CHARS]
