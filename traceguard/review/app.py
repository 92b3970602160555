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

The pieces: ``_login.py`` (who is asking: bearer header, login session, CSRF on every POST),
``_web_security.py`` (headers, Host check, the 500), ``_render.py`` (templates and how a value
prints); this module holds the pages and puts them together.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from traceguard._version import install_hint
from traceguard.review._auth import Identity, ReviewAuth
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
    import jinja2  # noqa: F401  (the templates need it: checked here with the rest of the extra)
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
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(f"the review app needs its extra: {install_hint('review')}") from exc

# After the extra's check: these import starlette and jinja2 themselves.
from traceguard.review._login import MAX_FORM_BYTES, LoginGate
from traceguard.review._render import Renderer, count_labels, templates
from traceguard.review._web_security import (
    CONTENT_SECURITY_POLICY,
    IMAGE_POLICY,
    LOOPBACK_HOSTS,
    HostCheck,
    SecurityHeaders,
    server_error,
)

__all__ = ["CONTENT_SECURITY_POLICY", "create_app"]

_PACKAGE = Path(__file__).resolve().parent
_EXPORT_STATES = ("resolved", "approved", "rejected")


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
    render = Renderer(templates())
    gate = LoginGate(auth, render, secure_cookies=secure_cookies, session_ttl=session_ttl)
    hosts = list(allowed_hosts) if allowed_hosts is not None else list(LOOPBACK_HOSTS)
    page, message, guarded = render.page, render.message, gate.guarded

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
                "count_labels": count_labels(counts, db.count_cap),
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
                "content-security-policy": IMAGE_POLICY,
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
        Route("/login", gate.login_form, methods=["GET"]),
        Route("/login", gate.login, methods=["POST"]),
        Route("/logout", guarded(gate.logout), methods=["POST"]),
        Route("/api/session", guarded(gate.session_info), methods=["GET"]),
        Route("/", guarded(list_page), methods=["GET"]),
        Route("/items/{escalation_id}", guarded(detail_page), methods=["GET"]),
        Route("/items/{escalation_id}/resolve", guarded(resolve), methods=["POST"]),
        Route("/items/{escalation_id}/images/{position:int}", guarded(image), methods=["GET"]),
        Route("/export.jsonl", guarded(export_jsonl), methods=["GET"]),
        Route("/export.csv", guarded(export_csv), methods=["GET"]),
        Mount("/static", app=StaticFiles(directory=str(_PACKAGE / "static")), name="static"),
    ]
    app = Starlette(routes=routes, exception_handlers={Exception: server_error})
    # Inside the security headers (Starlette's own max_body_size would answer from outside).
    app.add_middleware(RequestBodyLimitMiddleware, max_body_size=MAX_FORM_BYTES)
    app.add_middleware(HostCheck, allowed=hosts)
    app.add_middleware(SecurityHeaders)
    app.state.store = db
    return app
