"""The reviewers' web app: :func:`create_app` builds it on an :class:`EscalationStore`.

Server-side Jinja2 templates and two static files (CSS, keyboard script) shipped with the
package: no build step, nothing loaded from elsewhere. ``traceguard review`` serves it with
uvicorn on 127.0.0.1.

Security is part of the page, because everything it shows is hostile (audited text may carry
script, fake links, control characters; images may be polyglots):

- every request needs the token (bearer header or login session, see ``_auth.py``); a missing
  or wrong one gets 401 and the login form;
- every POST needs the session's CSRF token (403 without it);
- a strict Content-Security-Policy (no inline script or style, nothing from other origins),
  ``nosniff``, ``no-referrer``, no framing, ``no-store`` on every response;
- audited text is rendered through autoescaping only (never marked safe), inside ``<pre>``; no
  text ever becomes a link; bidi and zero-width characters are shown as visible escapes in
  every value a page shows (the templates' ``finalize``), metadata included;
- images are served only as the re-encoded PNG/JPEG thumbnails the queue made, with their
  content type and a sandboxing CSP of their own;
- the Host header must name this machine (DNS rebinding), unless ``allowed_hosts`` says
  otherwise;
- the security headers go on every answer, the body-size 413 and a 500 included.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from traceguard._version import install_hint
from traceguard.review._auth import (
    CSRF_FIELD,
    CSRF_HEADER,
    LOGIN_COOKIE,
    SESSION_COOKIE,
    Identity,
    ReviewAuth,
    clean_name,
)
from traceguard.review._entry import MAX_IMAGES
from traceguard.review._export import csv_chunks, jsonl_lines
from traceguard.review._model import (
    RISK_FILTERS,
    STATE_FILTERS,
    AlreadyResolved,
    Escalation,
    EscalationFilter,
)
from traceguard.review._store import MAX_NOTE_CHARS, EscalationStore

try:
    import jinja2
    from markupsafe import Markup
    from starlette.applications import Starlette
    from starlette.concurrency import iterate_in_threadpool, run_in_threadpool
    from starlette.middleware.body_limit import RequestBodyLimitMiddleware
    from starlette.requests import Request
    from starlette.responses import (
        PlainTextResponse,
        RedirectResponse,
        Response,
        StreamingResponse,
    )
    from starlette.routing import Mount, Route
    from starlette.staticfiles import StaticFiles
    from starlette.templating import Jinja2Templates
    from starlette.types import ASGIApp, Message, Receive, Scope, Send
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(f"the review app needs its extra: {install_hint('review')}") from exc

__all__ = ["CONTENT_SECURITY_POLICY", "create_app"]

logger = logging.getLogger("traceguard.review")

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
_IMAGE_POLICY = "default-src 'none'; sandbox"
_SECURITY_HEADERS = (
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cross-origin-resource-policy", b"same-origin"),
    (b"cache-control", b"no-store"),
)
"""Sent with every answer, next to a Content-Security-Policy."""
_LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
_PACKAGE = Path(__file__).resolve().parent
_EXPORT_STATES = ("resolved", "approved", "rejected")
_MAX_FORM_BYTES = 64 * 1024

# Characters that make text display differently from what it is (Trojan Source reordering,
# invisible joiners): shown as visible escapes so a reviewer sees what is really there.
_DECEPTIVE = re.compile("[\u061c\u200b-\u200f\u202a-\u202e\u2060-\u2064\u2066-\u2069\ufeff]")


def _reveal(text: Any) -> str:
    """Jinja filter: deceptive invisible characters as ``\\u202e``-style escapes.

    The result is still escaped by autoescaping; it is never marked safe.
    """
    if text is None:
        return ""
    return _DECEPTIVE.sub(lambda m: f"\\u{ord(m.group()):04x}", str(text))


def _finalize(value: Any) -> Any:
    """Jinja ``finalize``: every value a template prints goes through :func:`_reveal` (an
    integration or auditor name must not reorder the text after it); markup the templates
    build themselves is left alone."""
    if isinstance(value, Markup) or not isinstance(value, str):
        return value
    return _reveal(value)


def _risk_label(value: Any) -> str:
    return {0.0: "0 safe", 0.5: "0.5 potentially harmful", 1.0: "1 harmful"}.get(value, "—")


class _SecurityHeaders:
    """ASGI middleware: the security headers on every response, and ``Server-Timing`` (the
    app's wall time to the response headers, and the process's CPU time meanwhile)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        cpu_started = time.process_time()  # the whole process: exact only one request at a time

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [
                    (k, v) for k, v in message.get("headers", []) if k.lower() != b"server-timing"
                ]
                present = {k.lower() for k, _ in headers}
                if b"content-security-policy" not in present:
                    headers.append((b"content-security-policy", CONTENT_SECURITY_POLICY.encode()))
                headers += _SECURITY_HEADERS
                elapsed_ms = (time.perf_counter() - started) * 1000
                cpu_ms = (time.process_time() - cpu_started) * 1000
                timing = f"app;dur={elapsed_ms:.2f}, cpu;dur={cpu_ms:.2f}"
                headers.append((b"server-timing", timing.encode()))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)


class _HostCheck:
    """ASGI middleware: refuse requests whose Host is not one this app answers to (a page on
    another site that rebinds its DNS name to 127.0.0.1 must not reach the app)."""

    def __init__(self, app: ASGIApp, allowed: Sequence[str]) -> None:
        self.app = app
        self.allowed = {h.lower().strip("[]") for h in allowed}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and "*" not in self.allowed:
            host = ""
            for key, value in scope.get("headers", []):
                if key == b"host":
                    host = value.decode("latin-1")
                    break
            name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
            if name.lower().strip("[]") not in self.allowed:
                response = PlainTextResponse("unknown host", status_code=400)
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _server_error(request: Request, exc: Exception) -> Response:
    """The 500 answer. Starlette sends it from outside every added middleware, so it carries
    the security headers itself."""
    logger.error("review app: %s on %s", type(exc).__name__, request.url.path, exc_info=exc)
    headers = {"content-security-policy": CONTENT_SECURITY_POLICY}
    headers.update({k.decode(): v.decode() for k, v in _SECURITY_HEADERS})
    return PlainTextResponse("Internal Server Error", status_code=500, headers=headers)


def _templates() -> Jinja2Templates:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(_PACKAGE / "templates")),
        # Every template is HTML: escape everything, whatever the file name.
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        finalize=_finalize,
    )
    env.filters["reveal"] = _reveal
    env.filters["risk_label"] = _risk_label
    env.filters["path"] = lambda value: quote(str(value), safe="")
    return Jinja2Templates(env=env)


def _filter_from(params: Mapping[str, str], *, default_state: str) -> EscalationFilter:
    state = params.get("state") or default_state
    values: dict[str, Any] = {"state": state if state in STATE_FILTERS else default_state}
    risk = params.get("risk") or None
    values["risk"] = risk if risk in RISK_FILTERS else None
    for name in ("category", "auditor", "integration", "thread_id"):
        value = (params.get(name) or "").strip()
        values[name] = value[:512] or None
    for name in ("since", "until"):
        value = (params.get(name) or "").strip()
        values[name] = value or None
    try:
        return EscalationFilter(**values)
    except ValueError:
        values["since"] = values["until"] = None
        return EscalationFilter(**values)


def _filter_query(where: EscalationFilter) -> dict[str, str]:
    """The non-empty filter fields as query parameters (to carry through links)."""
    out: dict[str, str] = {}
    for name in ("state", "risk", "category", "auditor", "integration", "thread_id"):
        value = getattr(where, name)
        if value:
            out[name] = str(value)
    for name in ("since", "until"):
        value = getattr(where, name)
        if value:
            out[name] = value
    return out


def _int_param(params: Mapping[str, str], name: str) -> int | None:
    value = params.get(name, "")
    return int(value) if value.isdigit() and len(value) < 19 else None


def _local_path(value: str | None, default: str) -> str:
    """``value`` if it is a path on this app (never another host or scheme), else ``default``."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return default
    if any(ord(ch) < 0x20 for ch in value):
        return default
    return value


def create_app(
    store: EscalationStore | str | os.PathLike[str],
    *,
    token: str,
    allowed_hosts: Sequence[str] | None = None,
    secure_cookies: bool = False,
    session_ttl: float = 12 * 3600,
    page_size: int = 50,
) -> Starlette:
    """The review app on ``store`` (an :class:`EscalationStore` or the queue's file).

    Args:
        store: the queue database, or its path (which must exist); the app keeps it open as
            ``app.state.store`` (close it when the server has stopped).
        token: the secret reviewers log in with (at least 16 characters).
        allowed_hosts: host names the app answers to (default: 127.0.0.1, localhost, ::1);
            ``["*"]`` accepts any, for a deployment behind a proxy that checks it.
        secure_cookies: mark cookies ``Secure`` (set it when served over HTTPS).
        session_ttl: seconds a login lasts.
        page_size: items per list page.
    """
    if not token:
        raise ValueError("the review app needs a token")
    db = EscalationStore(store, create=False) if not isinstance(store, EscalationStore) else store
    auth = ReviewAuth(token, session_ttl=session_ttl)
    templates = _templates()
    hosts = list(allowed_hosts) if allowed_hosts is not None else list(_LOOPBACK_HOSTS)

    # -- helpers -----------------------------------------------------------------------------

    def bearer_of(request: Request) -> str | None:
        header = request.headers.get("authorization", "")
        return header[7:].strip() if header[:7].lower() == "bearer " else None

    def identity_of(request: Request) -> Identity | None:
        token = bearer_of(request)
        if token is not None:
            return auth.bearer(token, request.headers.get("x-reviewer"))
        session_id = request.cookies.get(SESSION_COOKIE)
        return auth.session(session_id) if session_id else None

    def throttled_bearer(request: Request) -> Response | None:
        """429 for a bearer client while token guesses are throttled (a right token too: a
        different answer for it would make the throttle an oracle)."""
        if bearer_of(request) is None or not auth.throttled():
            return None
        return PlainTextResponse(
            "too many failed token checks; wait a minute",
            status_code=429,
            headers={"retry-after": str(int(auth.failure_window))},
        )

    def page(
        request: Request, name: str, context: dict[str, Any], status_code: int = 200
    ) -> Response:
        context.setdefault("identity", None)
        context.setdefault("max_note", MAX_NOTE_CHARS)
        return templates.TemplateResponse(request, name, context, status_code=status_code)

    def login_page(request: Request, status_code: int, error: str | None = None) -> Response:
        nonce = os.urandom(24).hex()
        target = request.url.path
        if request.url.query:
            target += "?" + request.url.query
        if request.url.path in ("/login", "/logout"):
            target = _local_path(request.query_params.get("next"), "/")
        response = page(
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
            secure=secure_cookies,
        )
        return response

    def message(
        request: Request, identity: Identity | None, status: int, title: str, text: str
    ) -> Response:
        return page(
            request,
            "message.html",
            {"identity": identity, "title": title, "text": text},
            status_code=status,
        )

    def guarded(
        handler: Callable[[Request, Identity], Any],
    ) -> Callable[[Request], Any]:
        async def endpoint(request: Request) -> Response:
            refused = throttled_bearer(request)
            if refused is not None:
                return refused
            identity = identity_of(request)
            if identity is None:
                if request.headers.get("authorization"):
                    logger.warning("review app: wrong bearer token from %s", _client(request))
                    return PlainTextResponse(
                        "invalid token", status_code=401, headers={"www-authenticate": "Bearer"}
                    )
                return login_page(request, 401)
            if request.method == "POST":
                form = await request.form(max_files=0, max_fields=20, max_part_size=_MAX_FORM_BYTES)
                supplied = request.headers.get(CSRF_HEADER) or form.get(CSRF_FIELD)
                if not auth.csrf_matches(identity, supplied if isinstance(supplied, str) else None):
                    return message(
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

    # -- login -------------------------------------------------------------------------------

    async def login_form(request: Request) -> Response:
        refused = throttled_bearer(request)
        if refused is not None:
            return refused
        if identity_of(request) is not None:
            return RedirectResponse(_local_path(request.query_params.get("next"), "/"), 303)
        return login_page(request, 200)

    async def login(request: Request) -> Response:
        form = await request.form(max_files=0, max_fields=10, max_part_size=_MAX_FORM_BYTES)
        nonce = request.cookies.get(LOGIN_COOKIE, "")
        supplied = form.get(CSRF_FIELD)
        if not nonce or not isinstance(supplied, str) or supplied != nonce:
            return login_page(request, 403, "The login form expired; please try again.")
        if auth.throttled():
            return login_page(request, 429, "Too many failed logins; wait a minute.")
        token = form.get("token")
        name = form.get("name")
        if not isinstance(token, str) or not isinstance(name, str) or not clean_name(name):
            return login_page(request, 400, "Give the token and your name.")
        session_id = auth.login(token.strip(), name)
        if session_id is None:
            logger.warning("review app: failed login from %s", _client(request))
            return login_page(request, 401, "Wrong token.")
        previous = request.cookies.get(SESSION_COOKIE)
        if previous:
            auth.logout(previous)  # one browser, one session: the one it came with ends here
        target = _local_path(str(form.get("next") or ""), "/")
        response = RedirectResponse(target, status_code=303)
        response.set_cookie(
            SESSION_COOKIE,
            session_id,
            max_age=int(session_ttl),
            path="/",
            httponly=True,
            samesite="strict",
            secure=secure_cookies,
        )
        response.delete_cookie(LOGIN_COOKIE, path="/login")
        return response

    async def logout(request: Request, identity: Identity) -> Response:
        if identity.session_id:
            auth.logout(identity.session_id)
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(SESSION_COOKIE, path="/")
        return response

    async def session_info(request: Request, identity: Identity) -> Response:
        from starlette.responses import JSONResponse

        return JSONResponse({"reviewer": identity.reviewer, "csrf": identity.csrf})

    # -- pages -------------------------------------------------------------------------------

    async def list_page(request: Request, identity: Identity) -> Response:
        params = request.query_params
        where = _filter_from(params, default_state="pending")
        before, after = _int_param(params, "before"), _int_param(params, "after")

        def read() -> tuple[Any, dict[str, int], dict[str, list[str]]]:
            return (
                db.page(where, limit=page_size, before=before, after=after),
                db.counts(where),
                db.facets(),
            )

        result, counts, facets = await run_in_threadpool(read)
        query = _filter_query(where)
        return page(
            request,
            "list.html",
            {
                "identity": identity,
                "page": result,
                "count_labels": _count_labels(counts, db.count_cap),
                "facets": facets,
                "where": where,
                "risks": RISK_FILTERS,
                "query": urlencode(query),
                "state_links": {
                    state: urlencode({**query, "state": state})
                    for state in ("pending", "approved", "rejected", "all")
                },
                "older_link": urlencode({**query, "before": result.older}) if result.older else "",
                "newer_link": urlencode({**query, "after": result.newer}) if result.newer else "",
                "export_query": urlencode(
                    {**query, "state": where.state if where.state in _EXPORT_STATES else "resolved"}
                ),
            },
        )

    async def detail_page(request: Request, identity: Identity) -> Response:
        escalation_id = request.path_params["escalation_id"]
        where = _filter_from(request.query_params, default_state="pending")

        def read() -> tuple[Escalation | None, tuple[str | None, str | None]]:
            item = db.find(escalation_id)
            if item is None:
                return None, (None, None)
            return item, db.neighbours(item.id, where)

        item, (newer, older) = await run_in_threadpool(read)
        if item is None:
            return message(request, identity, 404, "Not found", "No escalation has this id.")
        query = urlencode(_filter_query(where))
        return page(
            request,
            "detail.html",
            {
                "identity": identity,
                "item": item,
                "query": query,
                "newer": newer,
                "older": older,
                "just_resolved": request.query_params.get("resolved") == "1",
            },
        )

    async def resolve(request: Request, identity: Identity) -> Response:
        escalation_id = request.path_params["escalation_id"]
        form = request.state.form
        resolution = form.get("resolution")
        note = form.get("note") or ""
        if resolution not in ("approved", "rejected") or not isinstance(note, str):
            return message(request, identity, 400, "Bad request", "Choose approve or reject.")
        if len(note) > MAX_NOTE_CHARS:
            return message(
                request,
                identity,
                400,
                "Bad request",
                f"A note is at most {MAX_NOTE_CHARS} characters.",
            )
        try:
            await run_in_threadpool(db.resolve, escalation_id, resolution, identity.reviewer, note)
        except KeyError:
            return message(request, identity, 404, "Not found", "No escalation has this id.")
        except AlreadyResolved as exc:
            done = exc.escalation
            return page(
                request,
                "message.html",
                {
                    "identity": identity,
                    "title": "Already resolved",
                    "text": f"This escalation was already {done.resolution} by {done.reviewer}"
                    f" at {done.resolved_at}.",
                    "item": done,
                },
                status_code=409,
            )
        query = str(form.get("query") or "")
        target = f"/items/{escalation_id}?resolved=1"
        if query and re.fullmatch(r"[A-Za-z0-9_.~%&=+\-]*", query):
            target += "&" + query
        return RedirectResponse(target, status_code=303)

    async def image(request: Request, identity: Identity) -> Response:
        escalation_id = request.path_params["escalation_id"]
        position = request.path_params["position"]
        if position >= MAX_IMAGES:  # also keeps a 30-digit number away from SQLite
            return PlainTextResponse("no such image", status_code=404)
        stored = await run_in_threadpool(db.image, escalation_id, position)
        if stored is None:
            return PlainTextResponse("no such image", status_code=404)
        extension = "png" if stored.mime == "image/png" else "jpg"
        return Response(
            stored.data,
            media_type=stored.mime,
            headers={
                "content-security-policy": _IMAGE_POLICY,
                "content-disposition": f'inline; filename="image-{position}.{extension}"',
            },
        )

    def export_filter(request: Request) -> EscalationFilter:
        where = _filter_from(request.query_params, default_state="resolved")
        if where.state not in _EXPORT_STATES:
            where = EscalationFilter(**{**_filter_query(where), "state": "resolved"})  # type: ignore[arg-type]
        return where

    async def export_jsonl(request: Request, identity: Identity) -> Response:
        return StreamingResponse(
            iterate_in_threadpool(jsonl_lines(db.items(export_filter(request)))),
            media_type="application/x-ndjson",
            headers={"content-disposition": 'attachment; filename="escalations.jsonl"'},
        )

    async def export_csv(request: Request, identity: Identity) -> Response:
        return StreamingResponse(
            iterate_in_threadpool(csv_chunks(db.items(export_filter(request)))),
            media_type="text/csv; charset=utf-8",
            headers={"content-disposition": 'attachment; filename="escalations.csv"'},
        )

    routes = [
        Route("/login", login_form, methods=["GET"]),
        Route("/login", login, methods=["POST"]),
        Route("/logout", guarded(logout), methods=["POST"]),
        Route("/api/session", guarded(session_info), methods=["GET"]),
        Route("/", guarded(list_page), methods=["GET"]),
        Route("/items/{escalation_id}", guarded(detail_page), methods=["GET"]),
        Route("/items/{escalation_id}/resolve", guarded(resolve), methods=["POST"]),
        Route("/items/{escalation_id}/images/{position:int}", guarded(image), methods=["GET"]),
        Route("/export.jsonl", guarded(export_jsonl), methods=["GET"]),
        Route("/export.csv", guarded(export_csv), methods=["GET"]),
        Mount("/static", app=StaticFiles(directory=str(_PACKAGE / "static")), name="static"),
    ]
    app = Starlette(routes=routes, exception_handlers={Exception: _server_error})
    # Inside the security headers (Starlette's own max_body_size would answer from outside).
    app.add_middleware(RequestBodyLimitMiddleware, max_body_size=_MAX_FORM_BYTES)
    app.add_middleware(_HostCheck, allowed=hosts)
    app.add_middleware(_SecurityHeaders)
    app.state.store = db
    return app


def _count_labels(counts: Mapping[str, int], cap: int) -> dict[str, str]:
    """Tab labels: exact counts, or ``1,000+`` where counting stopped at the cap."""
    labels = {state: f"{cap:,}+" if n > cap else f"{n:,}" for state, n in counts.items()}
    total = sum(min(n, cap) for n in counts.values())
    labels["all"] = f"{total:,}+" if any(n > cap for n in counts.values()) else f"{total:,}"
    return labels


def _client(request: Request) -> str:
    return request.client.host if request.client else "?"
