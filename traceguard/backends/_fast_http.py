"""A lean HTTP/1.1 client for the async hot path: keep-alive POSTs to plain-HTTP auditors.

Why it exists: profiled at 50 ms auditor latency and 32 calls in flight
(``bench/served_throughput.py`` under py-spy), the async served path was CPU-bound on its one
event loop, and three quarters of that CPU went to httpx, httpcore, anyio and h11 — about
0.8 ms per POST on the development machine, against 0.09 ms for a POST written here straight
onto an asyncio transport. The rest of the client (request building, the verdict parser) is
the small share.

Scope, kept narrow on purpose: ``http://`` URLs reached without a proxy (a vLLM or SGLang
replica in the same cluster). HTTPS, proxies (``HTTP_PROXY`` and friends, which httpx honours),
URLs carrying credentials (httpx sends them as Basic auth) and the sync path stay on httpx;
:func:`eligible` decides. Failures are raised as httpx's own
exception types (``ConnectError``, ``ConnectTimeout``, ``ReadTimeout``, ``RemoteProtocolError``),
so retries, failover and deadlines classify them exactly as before.

What it speaks: one request at a time per connection, ``Content-Length`` request bodies;
responses framed by ``Content-Length``, chunked transfer coding or the connection's close,
``1xx`` interim responses skipped, ``gzip``/``deflate`` content decoded. A response larger
than ``max_response_bytes`` is an error (a hostile server cannot make the auditor buffer
without bound); a timed-out or cancelled request closes its connection, since the answer may
still arrive on it.
"""

from __future__ import annotations

import asyncio
import urllib.request
import zlib
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import cast
from urllib.parse import SplitResult, urlsplit

import httpx

__all__ = ["AsyncHTTP11Pool", "FastResponse", "eligible"]

MAX_HEAD_BYTES = 64 * 1024
DEFAULT_MAX_RESPONSE_BYTES = 64 * 1024 * 1024


def _has_credentials(parts: SplitResult) -> bool:
    # As httpx decides: a user name or a password that is not empty makes it send Basic auth.
    return bool(parts.username or parts.password)


def eligible(url: str) -> bool:
    """True when ``url`` can go through this client: plain HTTP, no proxy configured for it,
    no credentials in it (httpx turns those into Basic auth; this client would drop them)."""
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname or _has_credentials(parts):
        return False
    proxies = urllib.request.getproxies()
    if not proxies.get("http") and not proxies.get("all"):
        return True
    return bool(urllib.request.proxy_bypass(parts.hostname))


@dataclass(frozen=True)
class FastResponse:
    """What :meth:`AsyncHTTP11Pool.post` returns (the attributes retry classification reads)."""

    status_code: int
    headers: httpx.Headers
    content: bytes


class _Incomplete(Exception):
    """More bytes are needed to finish the response."""


@dataclass
class _Head:
    status: int
    headers: list[tuple[bytes, bytes]]
    body_start: int
    keep_alive: bool
    length: int | None
    chunked: bool


def _parse_head(buffer: bytearray) -> _Head | None:
    end = buffer.find(b"\r\n\r\n")
    if end < 0:
        if len(buffer) > MAX_HEAD_BYTES:
            raise httpx.RemoteProtocolError("response headers too large")
        return None
    lines = bytes(buffer[:end]).split(b"\r\n")
    version, _, rest = lines[0].partition(b" ")
    code = rest[:3]
    if not version.startswith(b"HTTP/1.") or not code.isdigit():
        raise httpx.RemoteProtocolError("malformed HTTP status line")
    headers: list[tuple[bytes, bytes]] = []
    length: int | None = None
    chunked = False
    keep_alive = version == b"HTTP/1.1"
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon:
            raise httpx.RemoteProtocolError("malformed HTTP header line")
        name, value = name.strip().lower(), value.strip()
        headers.append((name, value))
        if name == b"content-length":
            if not value.isdigit():
                raise httpx.RemoteProtocolError("malformed Content-Length")
            length = int(value)
        elif name == b"transfer-encoding":
            chunked = value.lower().split(b",")[-1].strip() == b"chunked"
        elif name == b"connection":
            tokens = {t.strip() for t in value.lower().split(b",")}
            if b"close" in tokens:
                keep_alive = False
            elif b"keep-alive" in tokens:
                keep_alive = True
    return _Head(int(code), headers, end + 4, keep_alive, length, chunked)


def _chunked_body(buffer: bytearray, start: int, limit: int) -> tuple[bytes, int]:
    """The body of a chunked response starting at ``start``, and where it ends."""
    parts: list[bytes] = []
    total = 0
    position = start
    while True:
        line_end = buffer.find(b"\r\n", position)
        if line_end < 0:
            raise _Incomplete
        size_text = bytes(buffer[position:line_end]).split(b";")[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError:
            raise httpx.RemoteProtocolError("malformed chunk size") from None
        position = line_end + 2
        if size == 0:
            trailer_end = buffer.find(b"\r\n\r\n", position - 2)
            if trailer_end < 0:
                raise _Incomplete
            return b"".join(parts), trailer_end + 4
        total += size
        if total > limit:
            raise httpx.RemoteProtocolError("response too large")
        if len(buffer) < position + size + 2:
            raise _Incomplete
        parts.append(bytes(buffer[position : position + size]))
        position += size + 2


def _decoded(content: bytes, headers: list[tuple[bytes, bytes]]) -> bytes:
    for name, value in headers:
        if name == b"content-encoding":
            coding = value.lower().strip()
            try:
                if coding in (b"gzip", b"x-gzip"):
                    return zlib.decompress(content, 16 + zlib.MAX_WBITS)
                if coding == b"deflate":
                    return zlib.decompress(content)
            except zlib.error as exc:
                raise httpx.DecodingError(f"cannot decode the response: {exc}") from None
    return content


class _Connection(asyncio.Protocol):
    """One keep-alive connection: sends a request, collects its response."""

    def __init__(self, max_response_bytes: int) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self._limit = max_response_bytes
        self._buffer = bytearray()
        self._waiter: asyncio.Future[FastResponse] | None = None
        self._head: _Head | None = None
        self.keep_alive = True

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport; not always an asyncio.Transport instance (uvloop has its own).
        self.transport = cast(asyncio.Transport, transport)

    def send(self, data: bytes) -> asyncio.Future[FastResponse]:
        assert self.transport is not None
        self._buffer.clear()
        self._head = None
        self._waiter = asyncio.get_running_loop().create_future()
        self.transport.write(data)
        return self._waiter

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if len(self._buffer) > self._limit + MAX_HEAD_BYTES:
            self._fail(httpx.RemoteProtocolError("response too large"))
            return
        self._try_finish(at_eof=False)

    def eof_received(self) -> bool | None:
        self._try_finish(at_eof=True)
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._try_finish(at_eof=True)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            message = (
                "Server disconnected without sending a response."
                if not self._buffer
                else "Server disconnected in the middle of a response."
            )
            waiter.set_exception(httpx.RemoteProtocolError(message))

    def _fail(self, exc: Exception) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)
        self.close()

    def _try_finish(self, *, at_eof: bool) -> None:
        waiter = self._waiter
        if waiter is None or waiter.done():
            return
        try:
            response = self._parse(at_eof=at_eof)
        except _Incomplete:
            return
        except httpx.HTTPError as exc:
            self._fail(exc)
            return
        if response is not None:
            waiter.set_result(response)

    def _parse(self, *, at_eof: bool) -> FastResponse | None:
        while True:
            head = self._head or _parse_head(self._buffer)
            if head is None:
                return None
            if 100 <= head.status < 200:  # an interim response: the real one follows
                del self._buffer[: head.body_start]
                continue
            self._head = head
            break
        start = head.body_start
        if head.chunked:
            body, end = _chunked_body(self._buffer, start, self._limit)
        elif head.length is not None:
            if head.length > self._limit:
                raise httpx.RemoteProtocolError("response too large")
            end = start + head.length
            if len(self._buffer) < end:
                raise _Incomplete
            body = bytes(self._buffer[start:end])
        elif head.status in (204, 304):
            body, end = b"", start
        else:  # delimited by the connection's close
            if not at_eof:
                raise _Incomplete
            head.keep_alive = False
            body, end = bytes(self._buffer[start:]), len(self._buffer)
        self.keep_alive = head.keep_alive and end == len(self._buffer)
        headers = httpx.Headers(
            [(n.decode("latin-1"), v.decode("latin-1")) for n, v in head.headers]
        )
        return FastResponse(head.status, headers, _decoded(body, head.headers))

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


def _check_header(name: str, value: str) -> None:
    if any(c in name for c in "\r\n\0:") or any(c in value for c in "\r\n\0"):
        raise ValueError(f"invalid character in HTTP header {name!r}")


class AsyncHTTP11Pool:
    """Keep-alive connections per host for one event loop, at most ``max_connections`` busy.

    ``slot()`` is the concurrency limit (as the httpx pools' slots are); inside it, ``post()``
    borrows an idle connection to the URL's host or opens one.
    """

    def __init__(
        self,
        max_connections: int,
        *,
        connect_timeout: float,
        headers: Mapping[str, str],
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
    ) -> None:
        for name, value in headers.items():
            _check_header(name, value)
        self._fixed = "".join(
            f"{name}: {value}\r\n"
            for name, value in headers.items()
            if name.lower() not in ("host", "content-length", "connection", "transfer-encoding")
        )
        self._slots = asyncio.Semaphore(max_connections)
        self._idle: dict[tuple[str, int], list[_Connection]] = {}
        self._connect_timeout = connect_timeout
        self._limit = max_response_bytes
        self._closed = False

    @asynccontextmanager
    async def slot(self, timeout: float | None = None) -> AsyncIterator[AsyncHTTP11Pool]:
        """Wait (up to ``timeout`` s) for a free slot.

        Raises:
            TimeoutError: no slot came free in time.
        """
        if timeout is None:
            await self._slots.acquire()
        else:
            await self._acquire_within(timeout)
        try:
            yield self
        finally:
            self._slots.release()

    async def _acquire_within(self, timeout: float) -> None:
        # Not asyncio.wait_for: before Python 3.12 it can lose a slot acquired just as the
        # timeout fires, and the pool would shrink for good.
        acquiring = asyncio.ensure_future(self._slots.acquire())
        try:
            await asyncio.wait({acquiring}, timeout=max(timeout, 0.0))
        except BaseException:
            if acquiring.done() and not acquiring.cancelled():
                self._slots.release()
            else:
                acquiring.cancel()
            raise
        if not acquiring.done():
            acquiring.cancel()
            raise TimeoutError("no free connection in time")

    async def _connection(self, host: str, port: int, timeout: float | None) -> _Connection:
        idle = self._idle.get((host, port))
        while idle:
            connection = idle.pop()
            if not connection.closed:
                return connection
        loop = asyncio.get_running_loop()
        try:
            _, protocol = await asyncio.wait_for(
                loop.create_connection(lambda: _Connection(self._limit), host, port),
                self._connect_timeout if timeout is None else min(self._connect_timeout, timeout),
            )
        except asyncio.TimeoutError:
            raise httpx.ConnectTimeout(f"no connection to {host}:{port} in time") from None
        except OSError as exc:
            raise httpx.ConnectError(f"cannot connect to {host}:{port}: {exc}") from None
        return protocol

    async def post(self, url: str, body: bytes, *, timeout: float | None) -> FastResponse:
        """POST ``body`` to ``url`` and read the whole answer within ``timeout`` seconds, the
        connection included.

        Raises:
            httpx.TransportError: connect failure or timeout, read timeout, a connection closed
                without an answer, a malformed or oversized answer.
            ValueError: ``url`` carries credentials (:func:`eligible` keeps such URLs on httpx).
        """
        parts = urlsplit(url)
        if _has_credentials(parts):
            # This client sends no Basic auth; posting would drop the credentials silently.
            # The URL is not quoted: its password must not reach an error message.
            raise ValueError("the lean HTTP client does not send URL credentials (use httpx)")
        host = parts.hostname or ""
        port = parts.port or 80
        target = parts.path or "/"
        if parts.query:
            target += "?" + parts.query
        authority = parts.netloc.rpartition("@")[2]  # without an empty userinfo ("http://@h")
        head = (
            f"POST {target} HTTP/1.1\r\nHost: {authority}\r\n{self._fixed}"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode("latin-1")
        clock = asyncio.get_running_loop().time
        started = clock()
        connection = await self._connection(host, port, timeout)
        if timeout is not None:  # what is left of it after connecting
            timeout -= clock() - started
        try:
            waiter = connection.send(head + body if len(body) < 65536 else head)
            if len(body) >= 65536:
                assert connection.transport is not None
                connection.transport.write(body)
            if timeout is None:
                response = await waiter
            else:
                response = await asyncio.wait_for(waiter, max(timeout, 0.0))
        except asyncio.TimeoutError:
            connection.close()
            raise httpx.ReadTimeout(f"no answer from {host}:{port} in time") from None
        except BaseException:
            connection.close()
            raise
        if connection.keep_alive and not connection.closed and not self._closed:
            self._idle.setdefault((host, port), []).append(connection)
        else:
            connection.close()
        return response

    async def aclose(self) -> None:
        """Close every idle connection."""
        self._closed = True
        for connections in self._idle.values():
            for connection in connections:
                connection.close()
        self._idle.clear()
