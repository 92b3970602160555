"""The proxy's upstream client against a raw loopback server: body framings and stale
keep-alive connections."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from traceguard.proxy._http_client import HttpClient, UpstreamError, UpstreamTimeout

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[bool]]


async def serve(handler: Handler) -> tuple[asyncio.AbstractServer, int, list[int]]:
    """A server whose handler answers one request and says whether to keep the connection."""
    served: list[int] = []

    async def on_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                await reader.readuntil(b"\r\n\r\n")
                served.append(len(served))
                if not await handler(reader, writer, len(served)):
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(on_connection, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1], served


def client(port: int, read_timeout: float = 5.0) -> HttpClient:
    return HttpClient(f"http://127.0.0.1:{port}/v1", connect_timeout=2, read_timeout=read_timeout)


async def test_framings_and_a_stale_keep_alive_connection() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> bool:
        if n == 1:  # content-length, then the server drops the idle connection
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello")
            await writer.drain()
            return False
        if n == 2:  # chunked, kept alive
            writer.write(
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
                b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
            )
            await writer.drain()
            return True
        writer.write(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nuntil the end")
        await writer.drain()
        return False

    server, port, served = await serve(handler)
    http = client(port)
    try:
        first = await http.request("POST", "/v1/x", [("content-type", "text/plain")], b"1")
        assert first.status_code == 200
        assert await first.aread() == b"hello"
        await first.aclose()
        await asyncio.sleep(0.05)  # the server has closed the pooled connection by now
        second = await http.request("POST", "/v1/x", [], b"2")  # retried on a fresh one
        assert await second.aread() == b"abcde"
        await second.aclose()
        third = await http.request("GET", "/v1/x", [], b"")  # reuses the chunked one
        assert await third.aread() == b"until the end"
        await third.aclose()
        assert len(served) == 3
    finally:
        await http.aclose()
        server.close()


async def test_timeouts_and_refused_connections() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> bool:
        await asyncio.sleep(5)
        return False

    server, port, _ = await serve(silent)
    try:
        with pytest.raises(UpstreamTimeout):
            await client(port, read_timeout=0.2).request("POST", "/v1/x", [], b"{}")
    finally:
        server.close()
    with pytest.raises(UpstreamError):
        await client(9).request("POST", "/v1/x", [], b"{}")


async def test_header_injection_is_dropped() -> None:
    http = client(9)
    raw = http._request_bytes("POST", "/v1/x", [("x-a", "1\r\nx-b: 2"), ("x-c", "3")], b"")
    assert b"x-b" not in raw and b"x-c: 3" in raw
