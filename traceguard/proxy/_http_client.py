"""A lean HTTP/1.1 client for the one upstream: pooled keep-alive connections over asyncio
streams.

Why not httpx: on the proxy's hot path httpx costs about 1.5 ms of CPU per request (its
request/response models, anyio, the pool's bookkeeping), more than everything else the proxy
does; this client writes a request in one ``write`` and parses the answer with a few bytes
operations. It speaks only what an OpenAI-compatible server answers: ``Content-Length``,
``Transfer-Encoding: chunked`` or close-delimited bodies, keep-alive, TLS via :mod:`ssl`. No
redirects, no proxies from the environment, no decompression (the proxy asks for ``identity``
where it reads bodies, and relays raw bytes where it does not).

A request that fails on a reused keep-alive connection before any byte of the answer arrived is
sent once more on a fresh connection: the server closed the idle connection first, and did not
see the request.

The upstream is not trusted to be well-formed: a body is read in pieces of at most 64 KiB
whatever size a chunk declares (the caller bounds the total); a malformed chunk size or
``Content-Length`` is an :class:`UpstreamError`; a header line holding control characters (a
bare LF, a NUL) or a name that is not an HTTP token is dropped. An optional ``scrub`` on the
response (see ``_scrub.py``) filters the body as it streams.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import ssl
import sys
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Iterable
from typing import Protocol, TypeVar
from urllib.parse import urlsplit

__all__ = ["HttpClient", "UpstreamError", "UpstreamResponse", "UpstreamTimeout"]

_MAX_HEAD = 64 * 1024
_READ_SIZE = 64 * 1024
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_CONTROL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")

T = TypeVar("T")

if sys.version_info >= (3, 11):

    async def _timed(awaitable: Awaitable[T], seconds: float) -> T:
        async with asyncio.timeout(seconds):
            return await awaitable

else:  # pragma: no cover - Python 3.10

    async def _timed(awaitable: Awaitable[T], seconds: float) -> T:
        return await asyncio.wait_for(awaitable, seconds)


class UpstreamError(Exception):
    """The upstream could not be reached, or the connection broke."""


class UpstreamTimeout(UpstreamError):
    """The upstream did not connect or answer in time."""


class BodyFilter(Protocol):
    """Transforms a body as it streams (:class:`~._scrub.StreamScrub` is one)."""

    def feed(self, data: bytes) -> bytes: ...

    def close(self) -> bytes: ...


def _length(value: bytes) -> int | None:
    """A ``Content-Length`` value; raises :class:`UpstreamError` unless it is digits."""
    if not value:
        return None
    value = value.strip()
    if not value.isdigit():
        raise UpstreamError("the upstream sent a malformed Content-Length")
    return int(value)


def _chunk_size(line: bytes) -> int:
    size = line.split(b";", 1)[0].strip()
    if not size or len(size) > 16 or not all(c in b"0123456789abcdefABCDEF" for c in size):
        raise UpstreamError("the upstream sent a malformed chunk size")
    return int(size, 16)


class _Connection:
    __slots__ = ("reader", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()


class UpstreamResponse:
    """An answer whose body is read on demand; :meth:`aclose` returns the connection to the
    pool when the body was read to its end, and closes it otherwise."""

    def __init__(
        self,
        client: HttpClient,
        connection: _Connection,
        status_code: int,
        headers: list[tuple[bytes, bytes]],
        *,
        keep_alive: bool,
    ) -> None:
        self._client = client
        self._connection: _Connection | None = connection
        self.status_code = status_code
        self.headers = headers
        self._keep_alive = keep_alive
        self._done = False
        self.scrub: BodyFilter | None = None
        """Applied to the body as it streams, when set (before the first read)."""
        chunked = b"chunked" in self.header(b"transfer-encoding").lower()
        self._chunked = chunked
        length = None if chunked else _length(self.header(b"content-length"))
        self._remaining: int | None = length
        if length is None and not chunked:
            if status_code in (204, 304) or 100 <= status_code < 200:
                self._remaining = 0
            else:
                self._keep_alive = False  # close-delimited
        if self._remaining == 0:
            self._done = True

    def header(self, name: bytes) -> bytes:
        """One header's value (empty when absent); ``name`` in lower case."""
        for key, value in self.headers:
            if key == name:
                return value
        return b""

    @property
    def content_type(self) -> str:
        """The ``content-type`` header, decoded."""
        return self.header(b"content-type").decode("latin-1")

    async def _read(self, awaitable: Awaitable[bytes]) -> bytes:
        try:
            return await _timed(awaitable, self._client.read_timeout)
        except asyncio.TimeoutError:
            raise UpstreamTimeout("the upstream stopped answering") from None
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
            raise UpstreamError(f"the upstream connection broke ({type(exc).__name__})") from None
        except ValueError:  # StreamReader.readline past its limit: a line with no end
            raise UpstreamError("the upstream sent an overlong line") from None

    async def aiter_bytes(self) -> AsyncIterator[bytes]:
        """The body as it arrives (chunked framing removed, :attr:`scrub` applied)."""
        scrub = self.scrub
        async for data in self._raw_bytes():
            if scrub is not None:
                data = scrub.feed(data)
            if data:
                yield data
        if scrub is not None:
            rest = scrub.close()
            if rest:
                yield rest

    async def _raw_bytes(self) -> AsyncIterator[bytes]:
        connection = self._connection
        if connection is None or self._done:
            return
        reader = connection.reader
        if self._chunked:
            while True:
                line = await self._read(reader.readline())
                if not line:
                    raise UpstreamError("the upstream closed a chunked body early")
                size = _chunk_size(line)
                if size == 0:
                    while (await self._read(reader.readline())) not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    self._done = True
                    return
                while size > 0:  # in pieces: a declared gigabyte is never read at once
                    data = await self._read(reader.read(min(size, _READ_SIZE)))
                    if not data:
                        raise UpstreamError("the upstream closed inside a chunk")
                    size -= len(data)
                    yield data
                await self._read(reader.readline())
        elif self._remaining is not None:
            while self._remaining > 0:
                data = await self._read(reader.read(min(self._remaining, _READ_SIZE)))
                if not data:
                    raise UpstreamError("the upstream closed the body early")
                self._remaining -= len(data)
                yield data
            self._done = True
        else:
            while True:
                data = await self._read(reader.read(_READ_SIZE))
                if not data:
                    self._done = True
                    return
                yield data

    async def aread(self) -> bytes:
        """The whole body."""
        return b"".join([piece async for piece in self.aiter_bytes()])

    async def aclose(self) -> None:
        """Release the connection (back to the pool only after a complete body)."""
        connection, self._connection = self._connection, None
        if connection is None:
            return
        if self._done and self._keep_alive:
            self._client._release(connection)
        else:
            connection.close()
            self._client._forget()


class HttpClient:
    """Keep-alive connections to one origin (``scheme://host:port``). How many are open at once
    is bounded by the requests in flight (the proxy's ``max_in_flight``); at most ``max_idle`` wait
    for reuse."""

    def __init__(
        self,
        base_url: str,
        *,
        connect_timeout: float,
        read_timeout: float,
        max_idle: int = 256,
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"expected an http(s) URL, not {base_url!r}")
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.ssl: ssl.SSLContext | None = (
            ssl.create_default_context() if parts.scheme == "https" else None
        )
        default_port = self.port == (443 if parts.scheme == "https" else 80)
        host = f"[{self.host}]" if ":" in self.host else self.host
        self.host_header = (host if default_port else f"{host}:{self.port}").encode("idna")
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self._idle: deque[_Connection] = deque()
        self._max_idle = max_idle
        self._open = 0
        self._closed = False

    async def _connect(self) -> _Connection:
        try:
            reader, writer = await _timed(
                asyncio.open_connection(
                    self.host,
                    self.port,
                    ssl=self.ssl,
                    limit=_MAX_HEAD,
                    server_hostname=self.host if self.ssl else None,
                ),
                self.connect_timeout,
            )
        except asyncio.TimeoutError:
            raise UpstreamTimeout("connecting to the upstream timed out") from None
        except OSError as exc:
            raise UpstreamError(f"cannot connect to the upstream ({type(exc).__name__})") from None
        self._open += 1
        return _Connection(reader, writer)

    def _take_idle(self) -> _Connection | None:
        while self._idle:
            connection = self._idle.pop()
            if connection.reader.at_eof() or connection.writer.is_closing():
                connection.close()
                self._open -= 1
                continue
            return connection
        return None

    def _release(self, connection: _Connection) -> None:
        if self._closed or len(self._idle) >= self._max_idle:
            connection.close()
            self._open -= 1
        else:
            self._idle.append(connection)

    def _forget(self) -> None:
        self._open -= 1

    def _request_bytes(
        self, method: str, target: str, headers: Iterable[tuple[str, str]], body: bytes
    ) -> bytes:
        lines = [f"{method} {target} HTTP/1.1".encode("latin-1"), b"host: " + self.host_header]
        for name, value in headers:
            if "\r" in value or "\n" in value or "\r" in name or "\n" in name:
                continue  # never let a header value start another header
            lines.append(f"{name}: {value}".encode("latin-1", "replace"))
        if body or method in ("POST", "PUT", "PATCH"):
            lines.append(b"content-length: %d" % len(body))
        return b"\r\n".join(lines) + b"\r\n\r\n" + body

    async def request(
        self, method: str, target: str, headers: Iterable[tuple[str, str]], body: bytes
    ) -> UpstreamResponse:
        """Send a request; the caller reads the body and must :meth:`UpstreamResponse.aclose`.

        Raises:
            UpstreamError: could not connect, or the connection broke before the answer's head.
            UpstreamTimeout: a connect or read timeout.
        """
        payload = self._request_bytes(method, target, headers, body)
        connection = self._take_idle()
        if connection is not None:
            try:
                return await self._exchange(connection, payload, reused=True)
            except _Stale:
                pass  # the server closed the idle connection first: one fresh try
        return await self._exchange(await self._connect(), payload, reused=False)

    async def _exchange(
        self, connection: _Connection, payload: bytes, *, reused: bool
    ) -> UpstreamResponse:
        try:
            connection.writer.write(payload)
            head = await _timed(connection.reader.readuntil(b"\r\n\r\n"), self.read_timeout)
        except asyncio.TimeoutError:
            connection.close()
            self._open -= 1
            raise UpstreamTimeout("the upstream did not answer in time") from None
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
            connection.close()
            self._open -= 1
            partial = getattr(exc, "partial", b"")
            if reused and not partial:
                raise _Stale from None
            raise UpstreamError(f"the upstream connection broke ({type(exc).__name__})") from None
        lines = head[:-4].split(b"\r\n")
        try:
            version, status, *_ = lines[0].split(b" ", 2)
            status_code = int(status)
        except ValueError:
            connection.close()
            self._open -= 1
            raise UpstreamError("the upstream answered something other than HTTP") from None
        headers = []
        keep_alive = version == b"HTTP/1.1"
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            value = value.strip()
            if not _TOKEN.fullmatch(name) or _CONTROL.search(value):
                continue  # a line that would split into more headers, or no header at all
            headers.append((name, value))
            if name == b"connection":
                token = value.lower()
                keep_alive = b"close" not in token and (keep_alive or b"keep-alive" in token)
        try:
            return UpstreamResponse(self, connection, status_code, headers, keep_alive=keep_alive)
        except UpstreamError:
            connection.close()
            self._open -= 1
            raise

    async def aclose(self) -> None:
        """Close every idle connection; answers still being read close when released."""
        self._closed = True
        while self._idle:
            self._idle.pop().close()


class _Stale(Exception):
    """A reused connection failed before any byte of the answer."""
