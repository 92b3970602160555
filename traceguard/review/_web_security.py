"""The review app's HTTP hardening around every route: the security headers and the
Content-Security-Policy on every answer (a 500 included), and the Host check that keeps a page
rebinding its DNS name to 127.0.0.1 away from the app."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = [
    "CONTENT_SECURITY_POLICY",
    "IMAGE_POLICY",
    "LOOPBACK_HOSTS",
    "HostCheck",
    "SecurityHeaders",
    "server_error",
]

logger = logging.getLogger("traceguard.review")

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
IMAGE_POLICY = "default-src 'none'; sandbox"
_SECURITY_HEADERS = (
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cross-origin-resource-policy", b"same-origin"),
    (b"cache-control", b"no-store"),
)
"""Sent with every answer, next to a Content-Security-Policy."""
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


class SecurityHeaders:
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


class HostCheck:
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


def server_error(request: Request, exc: Exception) -> Response:
    """The 500 answer. Starlette sends it from outside every added middleware, so it carries
    the security headers itself."""
    logger.error("review app: %s on %s", type(exc).__name__, request.url.path, exc_info=exc)
    headers = {"content-security-policy": CONTENT_SECURITY_POLICY}
    headers.update({k.decode(): v.decode() for k, v in _SECURITY_HEADERS})
    return PlainTextResponse("Internal Server Error", status_code=500, headers=headers)
