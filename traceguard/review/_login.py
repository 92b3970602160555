"""Who is asking, on the review app's web side: the bearer header or the login session, the
login form, and :meth:`LoginGate.guarded`, which every page but the login form goes through
(token, token-guess throttle, CSRF on every POST).

The token, session and CSRF bookkeeping itself has no I/O and lives in ``_auth.py``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response

from traceguard.review._auth import (
    CSRF_FIELD,
    CSRF_HEADER,
    LOGIN_COOKIE,
    SESSION_COOKIE,
    Identity,
    ReviewAuth,
    clean_name,
)
from traceguard.review._render import Renderer

__all__ = ["MAX_FORM_BYTES", "LoginGate"]

logger = logging.getLogger("traceguard.review")

MAX_FORM_BYTES = 64 * 1024


class LoginGate:
    """The app's door: who a request comes from, the login and logout routes, and the wrapper
    that lets only known reviewers (with the session's CSRF token, on a POST) reach a page.

    Args:
        auth: the token and the sessions.
        render: draws the login form and the refusals.
        secure_cookies: mark cookies ``Secure`` (served over HTTPS).
        session_ttl: seconds a login lasts (the session cookie's max age).
    """

    def __init__(
        self, auth: ReviewAuth, render: Renderer, *, secure_cookies: bool, session_ttl: float
    ) -> None:
        self.auth = auth
        self.render = render
        self.secure_cookies = secure_cookies
        self.session_ttl = session_ttl

    def bearer_of(self, request: Request) -> str | None:
        header = request.headers.get("authorization", "")
        return header[7:].strip() if header[:7].lower() == "bearer " else None

    def identity_of(self, request: Request) -> Identity | None:
        token = self.bearer_of(request)
        if token is not None:
            return self.auth.bearer(token, request.headers.get("x-reviewer"))
        session_id = request.cookies.get(SESSION_COOKIE)
        return self.auth.session(session_id) if session_id else None

    def throttled_bearer(self, request: Request) -> Response | None:
        """429 for a bearer client while token guesses are throttled (a right token too: a
        different answer for it would make the throttle an oracle)."""
        if self.bearer_of(request) is None or not self.auth.throttled():
            return None
        return PlainTextResponse(
            "too many failed token checks; wait a minute",
            status_code=429,
            headers={"retry-after": str(int(self.auth.failure_window))},
        )

    def login_page(self, request: Request, status_code: int, error: str | None = None) -> Response:
        nonce = os.urandom(24).hex()
        target = request.url.path
        if request.url.query:
            target += "?" + request.url.query
        if request.url.path in ("/login", "/logout"):
            target = _local_path(request.query_params.get("next"), "/")
        response = self.render.page(
            request,
            "login.html",
            {"login_csrf": nonce, "next": target, "error": error},
            status_code=status_code,
        )
        response.set_cookie(
            LOGIN_COOKIE,
            nonce,
            max_age=3600,
            path="/login",
            httponly=True,
            samesite="strict",
            secure=self.secure_cookies,
        )
        return response

    def guarded(
        self,
        handler: Callable[[Request, Identity], Any],
    ) -> Callable[[Request], Any]:
        """``handler`` as an endpoint that only a known reviewer reaches (with the session's
        CSRF token on a POST, whose form it finds in ``request.state.form``)."""

        async def endpoint(request: Request) -> Response:
            refused = self.throttled_bearer(request)
            if refused is not None:
                return refused
            identity = self.identity_of(request)
            if identity is None:
                if request.headers.get("authorization"):
                    logger.warning("review app: wrong bearer token from %s", _client(request))
                    return PlainTextResponse(
                        "invalid token", status_code=401, headers={"www-authenticate": "Bearer"}
                    )
                return self.login_page(request, 401)
            if request.method == "POST":
                form = await request.form(max_files=0, max_fields=20, max_part_size=MAX_FORM_BYTES)
                supplied = request.headers.get(CSRF_HEADER) or form.get(CSRF_FIELD)
                if not self.auth.csrf_matches(
                    identity, supplied if isinstance(supplied, str) else None
                ):
                    return self.render.message(
                        request,
                        identity,
                        403,
                        "Request refused",
                        "The form's security token is missing or stale. Reload the page and "
                        "try again.",
                    )
                request.state.form = form
            result: Response = await handler(request, identity)
            return result

        return endpoint

    # -- routes ------------------------------------------------------------------------------

    async def login_form(self, request: Request) -> Response:
        refused = self.throttled_bearer(request)
        if refused is not None:
            return refused
        if self.identity_of(request) is not None:
            return RedirectResponse(_local_path(request.query_params.get("next"), "/"), 303)
        return self.login_page(request, 200)

    async def login(self, request: Request) -> Response:
        form = await request.form(max_files=0, max_fields=10, max_part_size=MAX_FORM_BYTES)
        nonce = request.cookies.get(LOGIN_COOKIE, "")
        supplied = form.get(CSRF_FIELD)
        if not nonce or not isinstance(supplied, str) or supplied != nonce:
            return self.login_page(request, 403, "The login form expired; please try again.")
        if self.auth.throttled():
            return self.login_page(request, 429, "Too many failed logins; wait a minute.")
        token = form.get("token")
        name = form.get("name")
        if not isinstance(token, str) or not isinstance(name, str) or not clean_name(name):
            return self.login_page(request, 400, "Give the token and your name.")
        session_id = self.auth.login(token.strip(), name)
        if session_id is None:
            logger.warning("review app: failed login from %s", _client(request))
            return self.login_page(request, 401, "Wrong token.")
        previous = request.cookies.get(SESSION_COOKIE)
        if previous:
            self.auth.logout(previous)  # one browser, one session: the one it came with ends here
        target = _local_path(str(form.get("next") or ""), "/")
        response = RedirectResponse(target, status_code=303)
        response.set_cookie(
            SESSION_COOKIE,
            session_id,
            max_age=int(self.session_ttl),
            path="/",
            httponly=True,
            samesite="strict",
            secure=self.secure_cookies,
        )
        response.delete_cookie(LOGIN_COOKIE, path="/login")
        return response

    async def logout(self, request: Request, identity: Identity) -> Response:
        if identity.session_id:
            self.auth.logout(identity.session_id)
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(SESSION_COOKIE, path="/")
        return response

    async def session_info(self, request: Request, identity: Identity) -> Response:
        from starlette.responses import JSONResponse

        return JSONResponse({"reviewer": identity.reviewer, "csrf": identity.csrf})


def _local_path(value: str | None, default: str) -> str:
    """``value`` if it is a path on this app (never another host or scheme), else ``default``."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return default
    if any(ord(ch) < 0x20 for ch in value):
        return default
    return value


def _client(request: Request) -> str:
    return request.client.host if request.client else "?"
