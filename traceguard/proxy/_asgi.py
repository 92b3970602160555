"""The few ASGI moves the proxy makes: read a bounded body, answer, stream, notice a client
that left.

The proxy's routes are plain ASGI callables rather than Starlette request/response functions:
a guarded stream must decide when its headers go out (after the audit, in buffer mode) and
must learn at once when the client hangs up, to close the upstream request and record what was
shown. :func:`race_disconnect` runs the exchange next to a listener for ``http.disconnect`` and
cancels the exchange when the client is gone; the exchange's own ``except CancelledError``
does the recording.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Iterable, Sequence
from typing import Any

from ._errors import ProxyError

__all__ = [
    "SECURITY_HEADERS",
    "ClientGone",
    "Sender",
    "race_disconnect",
    "read_body",
    "send_error",
    "send_response",
]

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Any
Send = Any

SECURITY_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"x-content-type-options", b"nosniff"),
    (b"content-security-policy", b"default-src 'none'; frame-ancestors 'none'"),
    (b"referrer-policy", b"no-referrer"),
    (b"cache-control", b"no-store"),
)
"""Sent with every answer: nothing the proxy returns is a page, a frame or cacheable."""


class ClientGone(Exception):
    """The client disconnected before its request body arrived."""


async def read_body(receive: Receive, *, limit: int, declared: str, timeout: float) -> bytes:
    """The request body, refused past ``limit`` bytes (by ``Content-Length`` or as it comes,
    chunked bodies too) or when it takes longer than ``timeout`` seconds in all.

    Raises:
        ProxyError: ``request_too_large``, ``request_timeout``.
        ClientGone: the client left first.
    """
    if declared.strip().isdigit() and int(declared) > limit:
        raise _too_large(limit)
    try:
        return await asyncio.wait_for(_read(receive, limit), timeout)
    except asyncio.TimeoutError:
        raise ProxyError(
            "request_timeout",
            f"The request body did not arrive within {timeout:g} s (body_timeout_s).",
        ) from None


def _too_large(limit: int) -> ProxyError:
    return ProxyError(
        "request_too_large", f"The request body is larger than {limit} bytes (max_body_bytes)."
    )


async def _read(receive: Receive, limit: int) -> bytes:
    body = bytearray()
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        body += message.get("body", b"")
        if len(body) > limit:
            raise _too_large(limit)
        if not message.get("more_body", False):
            return bytes(body)


def _headers(
    base: Iterable[tuple[bytes, bytes]], extra: Iterable[tuple[str, str]] = ()
) -> list[tuple[bytes, bytes]]:
    out = list(base)
    out.extend((name.encode("latin-1"), value.encode("latin-1")) for name, value in extra)
    present = {name for name, _ in out}
    out.extend(item for item in SECURITY_HEADERS if item[0] not in present)
    return out


async def send_response(
    send: Send,
    status: int,
    body: bytes,
    *,
    headers: Iterable[tuple[bytes, bytes]] = (),
    extra: Iterable[tuple[str, str]] = (),
    content_type: bytes = b"application/json",
) -> None:
    """A whole response with ``Content-Length``."""
    base = [(name, value) for name, value in headers if name != b"content-type"]
    base.append((b"content-type", content_type))
    base.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": _headers(base, extra)})
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def send_error(send: Send, error: ProxyError) -> None:
    """An OpenAI-style error response."""
    await send_response(send, error.http_status, error.body(), extra=error.headers)


class Sender:
    """A streamed response whose headers go out with its first bytes (or at the end)."""

    def __init__(self, send: Send, status: int, headers: Sequence[tuple[bytes, bytes]]) -> None:
        self._send = send
        self._status = status
        self._headers = list(headers)
        self.started = False
        self.ended = False
        self.sent_bytes = 0

    async def _start(self, extra: Iterable[tuple[str, str]]) -> None:
        self.started = True
        await self._send(
            {
                "type": "http.response.start",
                "status": self._status,
                "headers": _headers(self._headers, extra),
            }
        )

    async def write(self, data: bytes, *, headers: Iterable[tuple[str, str]] = ()) -> None:
        """Send ``data``; ``headers`` join the response headers if they have not gone yet."""
        if not data:
            return
        if not self.started:
            await self._start(headers)
        self.sent_bytes += len(data)
        await self._send({"type": "http.response.body", "body": data, "more_body": True})

    async def end(self, *, headers: Iterable[tuple[str, str]] = ()) -> None:
        """Finish the response (starting it if nothing was sent)."""
        if self.ended:
            return
        if not self.started:
            await self._start(headers)
        self.ended = True
        await self._send({"type": "http.response.body", "body": b"", "more_body": False})


async def _until_disconnected(receive: Receive) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


async def race_disconnect(receive: Receive, work: Awaitable[None]) -> bool:
    """Run ``work`` until it ends or the client disconnects; False when the client left.

    On a disconnect ``work`` is cancelled and awaited, so its cleanup (closing the upstream,
    auditing what was shown) finishes before this returns. If this task itself is cancelled
    (the server's shutdown deadline), ``work`` is cancelled the same way.
    """
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_until_disconnected(receive))
    try:
        done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        watcher.cancel()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        raise
    if task in done:
        watcher.cancel()
        task.result()  # re-raise what the exchange raised
        return True
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return False
