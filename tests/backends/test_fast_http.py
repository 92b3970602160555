"""The lean HTTP/1.1 client of the async served path, against the real loopback server."""

from __future__ import annotations

import gzip
import json
import socket

import httpx
import pytest

from traceguard.backends._fast_http import AsyncHTTP11Pool, eligible
from traceguard.testing.openai_server import OpenAIServer, ScriptedResponse, SSEEvent


def _pool(**options: object) -> AsyncHTTP11Pool:
    return AsyncHTTP11Pool(
        4,
        connect_timeout=2.0,
        headers={"Content-Type": "application/json", "Authorization": "Bearer k"},
        **options,  # type: ignore[arg-type]
    )


async def test_posts_and_reuses_the_connection() -> None:
    with OpenAIServer() as server:
        server.enqueue(ScriptedResponse.json({"n": 1}), ScriptedResponse.json({"n": 2}))
        pool = _pool()
        url = f"{server.base_url}/chat/completions?x=1"
        async with pool.slot() as client:
            first = await client.post(url, b'{"a": 1}', timeout=5)
        async with pool.slot() as client:
            second = await client.post(url, b'{"a": 2}', timeout=5)
        await pool.aclose()
        host = f"127.0.0.1:{server.port}"
    assert (first.status_code, json.loads(first.content)) == (200, {"n": 1})
    assert json.loads(second.content) == {"n": 2}
    sent = server.requests
    assert [r.json for r in sent] == [{"a": 1}, {"a": 2}]
    assert sent[0].path == "/v1/chat/completions" and sent[0].query == "x=1"
    assert sent[0].headers["authorization"] == "Bearer k"
    assert sent[0].headers["host"] == host


async def test_one_connection_serves_sequential_requests() -> None:
    with OpenAIServer() as server:
        server.enqueue(*(ScriptedResponse.json({"i": i}) for i in range(3)))
        pool = _pool()
        for _ in range(3):
            async with pool.slot() as client:
                await client.post(f"{server.base_url}/chat/completions", b"{}", timeout=5)
        idle = [c for conns in pool._idle.values() for c in conns]
        await pool.aclose()
    assert len(idle) == 1


async def test_error_status_keeps_headers_and_body() -> None:
    with OpenAIServer() as server:
        server.enqueue(ScriptedResponse.error(429, "slow down", headers={"Retry-After": "3"}))
        pool = _pool()
        async with pool.slot() as client:
            response = await client.post(f"{server.base_url}/chat/completions", b"{}", timeout=5)
        await pool.aclose()
    assert response.status_code == 429
    assert response.headers["retry-after"] == "3"
    assert json.loads(response.content)["error"]["message"] == "slow down"


async def test_chunked_body_is_reassembled() -> None:
    with OpenAIServer() as server:
        server.enqueue(ScriptedResponse.sse([SSEEvent('{"a": 1}'), SSEEvent('{"b": 2}')]))
        pool = _pool()
        async with pool.slot() as client:
            response = await client.post(f"{server.base_url}/chat/completions", b"{}", timeout=5)
        await pool.aclose()
    assert response.content.count(b"data: ") == 3  # two events and [DONE]
    assert b'{"b": 2}' in response.content


async def test_gzip_content_is_decoded() -> None:
    payload = json.dumps({"ok": True}).encode()
    with OpenAIServer() as server:
        server.enqueue(
            ScriptedResponse(
                status=200, raw=gzip.compress(payload), headers={"Content-Encoding": "gzip"}
            )
        )
        pool = _pool()
        async with pool.slot() as client:
            response = await client.post(f"{server.base_url}/chat/completions", b"{}", timeout=5)
        await pool.aclose()
    assert response.content == payload


async def test_a_dropped_connection_is_a_protocol_error() -> None:
    with OpenAIServer() as server:
        server.enqueue(ScriptedResponse.dropped())
        pool = _pool()
        with pytest.raises(httpx.RemoteProtocolError, match="without sending a response"):
            async with pool.slot() as client:
                await client.post(f"{server.base_url}/chat/completions", b"{}", timeout=5)
        await pool.aclose()


async def test_a_slow_answer_times_out_and_its_connection_is_not_reused() -> None:
    with OpenAIServer() as server:
        server.enqueue(ScriptedResponse.json({"late": 1}, delay_s=2.0), ScriptedResponse.json({}))
        pool = _pool()
        url = f"{server.base_url}/chat/completions"
        with pytest.raises(httpx.ReadTimeout):
            async with pool.slot() as client:
                await client.post(url, b"{}", timeout=0.2)
        assert not any(pool._idle.values())
        async with pool.slot() as client:
            response = await client.post(url, b"{}", timeout=5)
        await pool.aclose()
    assert response.status_code == 200


async def test_nothing_listening_is_a_connect_error() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    pool = _pool()
    with pytest.raises(httpx.ConnectError):
        async with pool.slot() as client:
            await client.post(f"http://127.0.0.1:{port}/v1/chat/completions", b"{}", timeout=2)


async def test_an_oversized_answer_is_refused() -> None:
    with OpenAIServer() as server:
        server.enqueue(ScriptedResponse(status=200, raw=b"x" * 5000))
        pool = _pool(max_response_bytes=1000)
        with pytest.raises(httpx.RemoteProtocolError, match="too large"):
            async with pool.slot() as client:
                await client.post(f"{server.base_url}/chat/completions", b"{}", timeout=5)
        await pool.aclose()


def test_header_injection_is_refused() -> None:
    with pytest.raises(ValueError, match="invalid character"):
        AsyncHTTP11Pool(1, connect_timeout=1, headers={"X-Key": "a\r\nEvil: 1"})


def test_only_plain_http_without_a_proxy_is_eligible(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY", "no_proxy", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    assert eligible("http://gpu-a:8000/v1")
    assert not eligible("https://gpu-a:8000/v1")
    monkeypatch.setenv("HTTP_PROXY", "http://proxy:3128")
    assert not eligible("http://gpu-a:8000/v1")
    monkeypatch.setenv("NO_PROXY", "gpu-a")
    assert eligible("http://gpu-a:8000/v1")


def test_urls_with_credentials_stay_on_httpx(monkeypatch: pytest.MonkeyPatch) -> None:
    # This client sends no Basic auth: a URL with credentials through it would lose them.
    for name in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    for url in ("http://u:pw@gpu-a:8000/v1", "http://u@gpu-a/v1", "http://:pw@gpu-a/v1"):
        assert not eligible(url), url
    assert eligible("http://@gpu-a:8000/v1")  # an empty userinfo: httpx sends no auth either


async def test_a_url_with_credentials_is_refused_without_quoting_it() -> None:
    pool = _pool()
    with pytest.raises(ValueError, match="credentials") as refused:
        async with pool.slot() as client:
            await client.post("http://user:S3cretPassw0rd@127.0.0.1:9/v1", b"{}", timeout=5)
    await pool.aclose()
    assert "S3cretPassw0rd" not in str(refused.value) and "user" not in str(refused.value)


def test_works_on_uvloop() -> None:
    # Ray's async actors and the proxy run on uvloop when it is installed.
    uvloop = pytest.importorskip("uvloop")
    import asyncio

    async def go(url: str) -> int:
        pool = _pool()
        async with pool.slot() as client:
            response = await client.post(f"{url}/chat/completions", b"{}", timeout=5)
        await pool.aclose()
        return response.status_code

    with OpenAIServer() as server:
        server.enqueue(ScriptedResponse.json({"ok": True}))
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            assert runner.run(go(server.base_url)) == 200
