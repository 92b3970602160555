"""Fetching remote images: one flow with no I/O, driven by a sync and an async shell.

:func:`_fetch_flow` holds every rule of a remote fetch (scheme, host resolution to public
addresses only, redirects re-checked hop by hop, status, encoding, declared and actual size, the
overall deadline). It is a generator that yields what it needs done (:class:`_Resolve` a host,
:class:`_Get` a URL, :class:`_ReadBody` into a bounded buffer) and is sent the results, so
:func:`fetch` (blocking DNS, ``httpx.Client``) and :func:`afetch` (the loop's resolver,
``httpx.AsyncClient``) contain only I/O, as httpx's own ``Auth.auth_flow`` does.

Known limit: the host is resolved and checked, then httpx resolves it again to connect, so a DNS
server answering differently within that window (DNS rebinding) could still reach a private
address. Keep ``allow_remote`` off for untrusted traces where that matters, or fetch through an
egress proxy that enforces the same rule.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time
from collections.abc import Generator, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, NoReturn

import httpx

from traceguard._exceptions import ImageAccessDenied, ImageError
from traceguard._image_access import ImageAccess
from traceguard._net_addresses import is_public_address
from traceguard._urls import redact_url
from traceguard._version import __version__

__all__ = ["afetch", "fetch"]

_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})


# -- the flow's steps -------------------------------------------------------------------------


@dataclass(frozen=True)
class _Resolve:
    """Resolve ``host`` and send back its addresses as strings, or None when it did not resolve."""

    host: str
    port: int


@dataclass(frozen=True)
class _Get:
    """Open a streamed GET of ``url`` (no redirects followed) and send back the response."""

    url: httpx.URL


@dataclass(frozen=True)
class _ReadBody:
    """The last step: feed the open response's raw chunks to ``body`` and return its value."""

    body: _Body


_Step = _Resolve | _Get | _ReadBody
_Reply = list[str] | httpx.Response | None


def _fetch_flow(url: str, access: ImageAccess) -> Generator[_Step, _Reply, NoReturn]:
    """Every rule of a remote fetch, with no I/O; ends by yielding :class:`_ReadBody`."""
    deadline = time.monotonic() + access.timeout_s
    target, shown = _checked_target(url, access)
    for hop in range(access.max_redirects + 1):
        if not access.allow_private_hosts:
            addresses = yield _Resolve(target.host, _port(target))
            if not isinstance(addresses, list):
                raise ImageError(f"image URL {shown!r}: host did not resolve")
            _check_addresses(addresses, access, shown)
        response = yield _Get(target)
        assert isinstance(response, httpx.Response)
        redirect = _next_hop(response, target, hop, access)
        if redirect is None:
            yield _ReadBody(_Body(access, shown, deadline))
            raise AssertionError("the driver stops at _ReadBody")
        target, shown = _checked_target(redirect, access)
    raise AssertionError("unreachable: _next_hop refuses one redirect too many")


# -- the shells: I/O only ---------------------------------------------------------------------


def fetch(url: str, access: ImageAccess) -> bytes:
    """The image bytes at ``url``, fetched under ``access`` (blocking)."""
    flow = _fetch_flow(url, access)
    step = next(flow)
    with _http_errors(url), httpx.Client(**_client_options(access)) as client:
        while True:
            if isinstance(step, _Resolve):
                try:
                    infos = socket.getaddrinfo(step.host, step.port, type=socket.SOCK_STREAM)
                except (OSError, UnicodeError):  # UnicodeError: a DNS label over 63 bytes
                    step = flow.send(None)
                else:
                    step = flow.send(_sockaddrs(infos))
                continue
            assert isinstance(step, _Get)
            with client.stream("GET", step.url) as response:
                step = flow.send(response)
                if isinstance(step, _ReadBody):
                    for chunk in response.iter_raw():
                        step.body.add(chunk)
                    return step.body.value()


async def afetch(url: str, access: ImageAccess) -> bytes:
    """Async :func:`fetch`: the event loop's resolver and ``httpx.AsyncClient``."""
    flow = _fetch_flow(url, access)
    step = next(flow)
    loop = asyncio.get_running_loop()
    with _http_errors(url):
        async with httpx.AsyncClient(**_client_options(access)) as client:
            while True:
                if isinstance(step, _Resolve):
                    try:
                        infos = await loop.getaddrinfo(
                            step.host, step.port, type=socket.SOCK_STREAM
                        )
                    except (OSError, UnicodeError):
                        step = flow.send(None)
                    else:
                        step = flow.send(_sockaddrs(infos))
                    continue
                assert isinstance(step, _Get)
                async with client.stream("GET", step.url) as response:
                    step = flow.send(response)
                    if isinstance(step, _ReadBody):
                        async for chunk in response.aiter_raw():
                            step.body.add(chunk)
                        return step.body.value()


# -- the flow's checks ------------------------------------------------------------------------


def _checked_target(url: str, access: ImageAccess) -> tuple[httpx.URL, str]:
    """Parse ``url`` and check its scheme; returns it with its loggable form."""
    shown = redact_url(url)
    if not access.allow_remote:
        raise ImageAccessDenied(
            f"image URL {shown!r}: remote images are not allowed (ImageAccess.allow_remote)"
        )
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL:
        raise ImageError(f"image URL {shown!r} is not a valid URL") from None
    if parsed.scheme not in ("http", "https"):
        raise ImageAccessDenied(f"image URL {shown!r}: only http and https are allowed")
    if not parsed.host:
        raise ImageError(f"image URL {shown!r} has no host")
    return parsed, shown


def _check_addresses(addresses: Iterable[str], access: ImageAccess, shown: str) -> None:
    """Refuse hosts that resolve to anything but public unicast addresses."""
    if access.allow_private_hosts:
        return
    found = False
    for text in addresses:
        found = True
        address = ipaddress.ip_address(text.split("%", 1)[0])  # drop an IPv6 zone id
        if not is_public_address(address):
            raise ImageAccessDenied(
                f"image URL {shown!r} resolves to a non-public address "
                "(set ImageAccess.allow_private_hosts to allow it)"
            )
    if not found:
        raise ImageError(f"image URL {shown!r}: host did not resolve")


def _port(url: httpx.URL) -> int:
    return url.port or (443 if url.scheme == "https" else 80)


def _sockaddrs(infos: Iterable[tuple[Any, ...]]) -> list[str]:
    return [str(info[4][0]) for info in infos]


def _next_hop(
    response: httpx.Response, url: httpx.URL, hop: int, access: ImageAccess
) -> str | None:
    """The redirect target to follow, or None when ``response`` carries the image."""
    shown = redact_url(str(url))
    if response.status_code in _REDIRECT_STATUSES and "location" in response.headers:
        if hop >= access.max_redirects:
            raise ImageError(f"image URL {shown!r}: more than {access.max_redirects} redirects")
        return str(url.join(response.headers["location"]))
    if not 200 <= response.status_code < 300:
        raise ImageError(f"image URL {shown!r} answered HTTP {response.status_code}")
    encoding = response.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        # Raw bytes are counted against max_bytes; a compressed body would inflate past it.
        raise ImageError(f"image URL {shown!r} sent a {encoding!r}-encoded body")
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > access.max_bytes:
        raise ImageError(f"image URL {shown!r} is {declared} bytes, over max_bytes")
    return None


class _Body:
    """Collects a response body, stopping at ``max_bytes`` or the overall deadline."""

    def __init__(self, access: ImageAccess, shown: str, deadline: float) -> None:
        self._parts: list[bytes] = []
        self._size = 0
        self._limit = access.max_bytes
        self._shown = shown
        self._deadline = deadline

    def add(self, chunk: bytes) -> None:
        self._size += len(chunk)
        if self._size > self._limit:
            raise ImageError(f"image URL {self._shown!r} is over max_bytes={self._limit}")
        if time.monotonic() > self._deadline:
            raise ImageError(f"image URL {self._shown!r}: download timed out")
        self._parts.append(chunk)

    def value(self) -> bytes:
        return b"".join(self._parts)


def _client_options(access: ImageAccess) -> dict[str, Any]:
    return {
        "timeout": httpx.Timeout(access.timeout_s),
        "follow_redirects": False,  # every hop is re-checked by _fetch_flow
        "trust_env": False,  # never send .netrc credentials or route through env proxies
        "headers": {"User-Agent": f"traceguard/{__version__}", "Accept-Encoding": "identity"},
    }


@contextmanager
def _http_errors(url: str) -> Iterator[None]:
    """Turn transport failures into ImageError, naming the URL without its secrets."""
    try:
        yield
    except httpx.TimeoutException:
        raise ImageError(f"image URL {redact_url(url)!r}: download timed out") from None
    except httpx.HTTPError as exc:
        raise ImageError(f"image URL {redact_url(url)!r}: {type(exc).__name__}") from None
