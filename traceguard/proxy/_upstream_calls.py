"""Calling the upstream from the proxy's shells, its failures as :class:`ProxyError` values:
opening a request, reading an answer within the size limit, refusing a redirect, and naming what
went wrong with a stream (each counted in ``traceguard_proxy_upstream_errors_total``)."""

from __future__ import annotations

from typing import Any

from ._asgi import Scope
from ._cycle import Cycle
from ._errors import ProxyError
from ._http_client import UpstreamError, UpstreamResponse, UpstreamTimeout
from ._relay import BufferFull
from ._runtime import Proxy
from ._sse import FrameTooLarge

__all__ = ["open_upstream", "read_limited", "refuse_redirect", "upstream_problem"]


def upstream_problem(metrics: Any, exc: Exception) -> ProxyError:
    if isinstance(exc, FrameTooLarge | BufferFull):
        metrics.inc("traceguard_proxy_upstream_errors_total", kind="too_large")
        return ProxyError(
            "response_too_large",
            "The upstream's answer is larger than the proxy holds for an audit "
            "(max_response_bytes).",
        )
    if isinstance(exc, UpstreamTimeout):
        metrics.inc("traceguard_proxy_upstream_errors_total", kind="timeout")
        return ProxyError("upstream_timeout", "The upstream stopped answering in time.")
    if isinstance(exc, UpstreamError):
        metrics.inc("traceguard_proxy_upstream_errors_total", kind="broken")
        return ProxyError("upstream_unavailable", "The upstream connection broke.")
    metrics.inc("traceguard_proxy_upstream_errors_total", kind="unreadable")
    return ProxyError(
        "upstream_unreadable",
        "The upstream sent a stream event that cannot be read; the rest was not passed on.",
    )


def refuse_redirect(proxy: Proxy, response: UpstreamResponse) -> None:
    """A 3xx from the upstream goes no further: following it is not the proxy's job, and its
    ``Location`` (which may carry anything) must not send a client elsewhere."""
    if 300 <= response.status_code < 400:
        proxy.metrics.inc("traceguard_proxy_upstream_errors_total", kind="redirect")
        raise ProxyError(
            "upstream_unreadable",
            f"The upstream answered with a redirect (HTTP {response.status_code}); the proxy "
            "neither follows nor forwards redirects.",
        )


async def read_limited(response: UpstreamResponse, limit: int) -> bytes:
    body = bytearray()
    try:
        async for piece in response.aiter_bytes():
            body += piece
            if len(body) > limit:
                raise ProxyError(
                    "response_too_large",
                    "The upstream's answer is larger than the proxy holds for an audit "
                    "(max_response_bytes).",
                )
    except UpstreamTimeout:
        raise ProxyError("upstream_timeout", "The upstream stopped answering in time.") from None
    except UpstreamError:
        raise ProxyError("upstream_unavailable", "The upstream connection broke.") from None
    return bytes(body)


async def open_upstream(
    proxy: Proxy,
    cycle: Cycle,
    method: str,
    scope: Scope,
    headers: list[tuple[bytes, bytes]],
    body: bytes,
    *,
    decoded: bool,
) -> UpstreamResponse:
    try:
        return await proxy.upstream.open(
            method, scope["path"], scope.get("query_string", b""), headers, body, decoded=decoded
        )
    except UpstreamTimeout:
        proxy.metrics.inc("traceguard_proxy_upstream_errors_total", kind="timeout")
        raise ProxyError("upstream_timeout", "The upstream did not answer in time.") from None
    except UpstreamError:
        proxy.metrics.inc("traceguard_proxy_upstream_errors_total", kind="unreachable")
        raise ProxyError("upstream_unavailable", "The upstream could not be reached.") from None
