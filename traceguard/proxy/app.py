"""``create_app``: the guard proxy as one ASGI application (Starlette).

Routes:

====================================  ===========================================================
``POST /v1/chat/completions``         guarded (JSON and SSE)
``POST /v1/responses``                guarded (JSON and SSE)
``/v1/...`` in ``serve.passthrough``  forwarded unaudited (``/v1/models``, embeddings, ...)
other ``/v1/...``                     refused: 404 ``endpoint_not_guarded``
``GET /healthz``                      liveness: 200 while the process serves (anyone)
``GET /readyz``                       readiness: 200 when the auditor answers a cheap probe and
                                      the proxy is not draining, else 503 (anyone; no details)
``GET /metrics``                      Prometheus text; bearer ``serve.metrics.token_env`` if
                                      set, else loopback peers only
====================================  ===========================================================

Nothing imports this module but ``traceguard serve`` (and tests): it is the proxy's door.
"""

from __future__ import annotations

import contextlib
import hmac
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from traceguard._config_serve import ServeSpec, is_loopback_host
from traceguard._exceptions import ConfigurationError
from traceguard.config import GuardConfig

from ._apis import API_BY_PATH
from ._asgi import SECURITY_HEADERS, Receive, Scope, Send, send_error
from ._errors import ProxyError
from ._guarded import guarded, passthrough
from ._keys import bearer_token
from ._metrics import merge, render
from ._runtime import Proxy

__all__ = ["create_app"]

_READY_CACHE_S = 2.0


class _ProxyRoutes:
    """The ``/v1`` routes as one ASGI callable (guarded endpoints, passthrough, refusals)."""

    def __init__(self, proxy: Proxy) -> None:
        self.proxy = proxy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        api = API_BY_PATH.get(scope["path"].rstrip("/"))
        if api is not None:
            await guarded(self.proxy, api, scope, receive, send)
        else:
            await passthrough(self.proxy, scope, receive, send)


class _Readiness:
    def __init__(self, proxy: Proxy) -> None:
        self.proxy = proxy
        self._checked = 0.0
        self._ready = False

    async def endpoint(self, request: Request) -> Response:
        now = time.monotonic()
        if self.proxy.draining:
            ready = False
        elif now - self._checked > _READY_CACHE_S:
            self._ready = await self.proxy.ready()
            self._checked = now
            ready = self._ready
        else:
            ready = self._ready
        return _ops_json(
            {"status": "ready" if ready else "not_ready"}, status=200 if ready else 503
        )


def _ops_json(content: Any, *, status: int = 200) -> Response:
    response = JSONResponse(content, status_code=status)
    response.headers.update({k.decode(): v.decode() for k, v in SECURITY_HEADERS})
    return response


async def _healthz(request: Request) -> Response:
    return _ops_json({"status": "ok"})


class _MetricsRoute:
    def __init__(self, proxy: Proxy) -> None:
        self.proxy = proxy
        env = proxy.spec.metrics.token_env
        self._token = os.environ.get(env) if env else None
        if env and not self._token:
            raise ConfigurationError(
                f"serve.metrics.token_env: the environment variable {env} is not set"
            )

    def _allowed(self, request: Request) -> bool:
        if self._token is not None:
            given = bearer_token(request.headers.get("authorization"))
            # Bytes: compare_digest refuses str with non-ASCII characters (a TypeError, a 500).
            return given is not None and hmac.compare_digest(
                given.encode("utf-8", "surrogateescape"), self._token.encode()
            )
        peer = request.client.host if request.client is not None else ""
        return is_loopback_host(peer)

    async def endpoint(self, request: Request) -> Response:
        if not self._allowed(request):
            error = ProxyError(
                "forbidden",
                "Metrics need the metrics token (serve.metrics.token_env), or a loopback peer "
                "when no token is set.",
            )
            response = Response(
                error.body(), status_code=error.http_status, media_type="application/json"
            )
            response.headers.update({k.decode(): v.decode() for k, v in SECURITY_HEADERS})
            return response
        from ._workers import snapshots

        text = render(merge(snapshots(self.proxy)))
        response = PlainTextResponse(text, media_type="text/plain; version=0.0.4")
        response.headers.update({k.decode(): v.decode() for k, v in SECURITY_HEADERS})
        return response


class _NotFound:
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        error = ProxyError("endpoint_not_guarded", "No such endpoint on this proxy.")
        await send_error(send, error)


def create_app(
    config: GuardConfig | str | os.PathLike[str],
    *,
    upstream: str | None = None,
    host: str | None = None,
    port: int | None = None,
    workers: int | None = None,
) -> Starlette:
    """The proxy for ``config`` (a :class:`~traceguard.config.GuardConfig` or its file).

    ``upstream``, ``host``, ``port`` and ``workers`` override the ``serve`` section, as the
    command line does. Everything is built and checked now: an invalid configuration, a
    missing environment variable, a proxy without client keys (unless ``serve.open`` on
    loopback) raise :class:`~traceguard.ConfigurationError` before anything listens.
    """
    if not isinstance(config, GuardConfig):
        config = GuardConfig.from_file(Path(config))
    spec = (config.serve or ServeSpec()).with_overrides(
        upstream=upstream, host=host, port=port, workers=workers
    )
    proxy = Proxy(config, spec)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        from ._workers import publisher

        async with publisher(proxy):
            try:
                yield
            finally:
                proxy.draining = True
                await proxy.aclose()

    routes = _ProxyRoutes(proxy)
    app = Starlette(
        routes=[
            Route("/healthz", _healthz, methods=["GET"]),
            Route("/readyz", _Readiness(proxy).endpoint, methods=["GET"]),
            Route("/metrics", _MetricsRoute(proxy).endpoint, methods=["GET"]),
            Route("/v1/{rest:path}", routes),
            Route("/{rest:path}", _NotFound()),
        ],
        lifespan=lifespan,
    )
    app.state.proxy = proxy
    return app
