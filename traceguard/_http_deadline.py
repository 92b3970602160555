"""A deadline for a whole HTTP call, from the first connection attempt to the last byte.

httpx's timeouts bound each socket operation on its own: a server that sends a few bytes before
every read timeout expires holds a call for as long as it likes (one trickling 4 bytes/s held a
call under a 2 s timeout for 78 s). Here a wrapper around httpcore's network backend gives each
connect, read and write only the time left until the deadline of the call in progress, and
fails it as a timeout once none is left. Sync and async calls share the rule; the deadline is a
context variable, so it follows the calling thread or task into httpcore.

Usage: build clients with :func:`deadline_client` / :func:`deadline_async_client`, and make
each call inside ``with call_deadline(seconds):`` (nested deadlines keep the earliest).
"""

from __future__ import annotations

import contextvars
import ssl
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import httpcore
import httpx

__all__ = [
    "call_deadline",
    "deadline_async_client",
    "deadline_client",
    "time_left",
]

_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "traceguard_http_deadline", default=None
)


@contextmanager
def call_deadline(seconds: float | None) -> Iterator[float | None]:
    """Bound every HTTP operation of the calls inside to ``seconds`` from now, all together.

    Yields the deadline (a ``time.monotonic()`` value), or None when ``seconds`` is None and no
    outer deadline applies.
    """
    outer = _deadline.get()
    at = outer if seconds is None else time.monotonic() + seconds
    if outer is not None and at is not None:
        at = min(at, outer)
    token = _deadline.set(at)
    try:
        yield at
    finally:
        _deadline.reset(token)


def time_left() -> float | None:
    """Seconds until the current deadline (may be negative), or None without one."""
    at = _deadline.get()
    return None if at is None else at - time.monotonic()


def _bounded(timeout: float | None, expired: type[Exception]) -> float | None:
    left = time_left()
    if left is None:
        return timeout
    if left <= 0:
        raise expired("the call's deadline has passed")
    return left if timeout is None else min(timeout, left)


class _Stream(httpcore.NetworkStream):
    def __init__(self, inner: httpcore.NetworkStream) -> None:
        self._inner = inner

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, _bounded(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, _bounded(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        bounded = _bounded(timeout, httpcore.ConnectTimeout)
        return _Stream(self._inner.start_tls(ssl_context, server_hostname, bounded))

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class _Backend(httpcore.NetworkBackend):
    def __init__(self, inner: httpcore.NetworkBackend) -> None:
        self._inner = inner

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        bounded = _bounded(timeout, httpcore.ConnectTimeout)
        return _Stream(self._inner.connect_tcp(host, port, bounded, local_address, socket_options))

    def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        bounded = _bounded(timeout, httpcore.ConnectTimeout)
        return _Stream(self._inner.connect_unix_socket(path, bounded, socket_options))

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


class _AsyncStream(httpcore.AsyncNetworkStream):
    def __init__(self, inner: httpcore.AsyncNetworkStream) -> None:
        self._inner = inner

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return await self._inner.read(max_bytes, _bounded(timeout, httpcore.ReadTimeout))

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        await self._inner.write(buffer, _bounded(timeout, httpcore.WriteTimeout))

    async def aclose(self) -> None:
        await self._inner.aclose()

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.AsyncNetworkStream:
        bounded = _bounded(timeout, httpcore.ConnectTimeout)
        return _AsyncStream(await self._inner.start_tls(ssl_context, server_hostname, bounded))

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class _AsyncBackend(httpcore.AsyncNetworkBackend):
    def __init__(self, inner: httpcore.AsyncNetworkBackend) -> None:
        self._inner = inner

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        bounded = _bounded(timeout, httpcore.ConnectTimeout)
        stream = await self._inner.connect_tcp(host, port, bounded, local_address, socket_options)
        return _AsyncStream(stream)

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        bounded = _bounded(timeout, httpcore.ConnectTimeout)
        return _AsyncStream(await self._inner.connect_unix_socket(path, bounded, socket_options))

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


def _pools(client: httpx.Client | httpx.AsyncClient) -> list[Any]:
    # httpx has no public hook for the network backend. Its transports keep their httpcore pool
    # as ``_pool`` (proxy pools included), and the pool its backend as ``_network_backend``;
    # both have been stable since httpcore 1.0. Anything else fails loudly here rather than
    # leave calls without a deadline.
    transports = [client._transport, *client._mounts.values()]
    pools = []
    for transport in transports:
        if transport is None:
            continue
        pool = getattr(transport, "_pool", None)
        if pool is None or not hasattr(pool, "_network_backend"):
            raise RuntimeError(
                f"cannot enforce call deadlines on {type(transport).__name__} with this httpx "
                f"{httpx.__version__} / httpcore {httpcore.__version__}"
            )
        pools.append(pool)
    return pools


def deadline_client(**options: Any) -> httpx.Client:
    """An ``httpx.Client(**options)`` whose socket operations obey :func:`call_deadline`."""
    client = httpx.Client(**options)
    for pool in _pools(client):
        pool._network_backend = _Backend(pool._network_backend)
    return client


def deadline_async_client(**options: Any) -> httpx.AsyncClient:
    """An ``httpx.AsyncClient(**options)`` whose socket operations obey :func:`call_deadline`."""
    client = httpx.AsyncClient(**options)
    for pool in _pools(client):
        pool._network_backend = _AsyncBackend(pool._network_backend)
    return client
