"""Hostile probes of the guard proxy (``traceguard serve``) over real HTTP on 127.0.0.1.

Attacks from both sides: a client with a valid key trying to reach past the guard or the
upstream's key, and an upstream (broken or hostile) trying to push unaudited bytes, secrets or
unbounded data through the proxy. Tests marked with a finding failed before its fix.
"""

from __future__ import annotations

import json
import logging
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from traceguard.proxy._logs import JsonFormatter
from traceguard.testing.openai_server import OpenAIServer, ScriptedResponse, chat_completion

from ._auditor import judge
from ._hostile_http import Connection, hostile_server, json_response
from ._served import (
    CLIENT_KEY,
    UPSTREAM_KEY,
    client_headers,
    proxy_config,
    running_proxy,
)

USER = [{"role": "user", "content": "hello"}]
MIB = 1024 * 1024


@pytest.fixture(scope="module")
def auditor_url() -> Iterator[str]:
    with OpenAIServer(responder=judge) as server:
        yield server.base_url


@pytest.fixture(autouse=True)
def _upstream_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROBE_UPSTREAM_KEY", UPSTREAM_KEY)


def _chunk(content: str) -> bytes:
    chunk = {
        "id": "c",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "m",
        "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": None}],
    }
    return b"data: " + json.dumps(chunk).encode() + b"\n\n"


def _raw_get(base: str, target: bytes, *, key: str = CLIENT_KEY) -> bytes:
    """GET ``target`` exactly as written (no client-side normalisation); the status line."""
    port = int(base.rsplit(":", 1)[1].split("/", 1)[0])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(
            b"GET "
            + target
            + b" HTTP/1.1\r\nhost: 127.0.0.1\r\nauthorization: Bearer "
            + key.encode()
            + b"\r\nconnection: close\r\n\r\n"
        )
        data = b""
        while True:
            piece = sock.recv(65536)
            if not piece:
                break
            data += piece
    return data.split(b"\r\n", 1)[0]


def _everything(response: httpx.Response) -> str:
    return "\n".join(f"{k}: {v}" for k, v in response.headers.items()) + "\n" + response.text


# -- requests toward the upstream -----------------------------------------------------------------


@pytest.mark.probe("guard proxy: hostile clients")
def test_a_client_cannot_write_the_upstream_request_line(
    tmp_path: Path, auditor_url: str, probe_cases: Any
) -> None:
    """Finding: the proxy wrote the *decoded* path into the upstream's request line, so
    ``%0D``, ``%20``, ``%3F``, ``%00`` and non-ASCII escapes became raw bytes there (a bare CR
    and a second ``HTTP/1.0`` are request-smuggling material for a lenient upstream), and a
    ``..`` segment under a ``GET /v1/models/*`` rule reached other upstream paths."""

    def answer(connection: Connection) -> None:
        connection.send(json_response(200, b'{"object": "model", "id": "m"}'))

    escaped = (
        b"/v1/models/x%0Dinjected:%201",
        b"/v1/models/x%20HTTP",
        b"/v1/models/x%3Fadmin=1",
        b"/v1/models/a%00b",
        b"/v1/models/%C3%A9t%C3%A9",
    )
    dotted = (b"/v1/models/..", b"/v1/models/%2e%2e", b"/v1/models/.")
    probe_cases(len(escaped) + len(dotted))
    with hostile_server(answer) as upstream:
        config = proxy_config(tmp_path, upstream_url=upstream.base_url, auditor_url=auditor_url)
        with running_proxy(config) as base:
            for target in escaped:
                assert _raw_get(base, target) == b"HTTP/1.1 200 OK"
            for target in dotted:
                assert _raw_get(base, target).startswith(b"HTTP/1.1 404"), target
        lines = [head.split(b"\r\n", 1)[0] for head in upstream.heads()]
    assert len(lines) == 5
    for line in lines:
        assert re.fullmatch(rb"GET /v1/models/[\x21-\x7e]+ HTTP/1\.1", line), line
        assert b"?" not in line and b"/.." not in line
    assert lines[0] == b"GET /v1/models/x%0Dinjected:%201 HTTP/1.1"
    assert lines[4] == b"GET /v1/models/%C3%A9t%C3%A9 HTTP/1.1"


@pytest.mark.probe("guard proxy: hostile clients")
def test_chunked_request_bodies_obey_the_size_limit(tmp_path: Path, auditor_url: str) -> None:
    def answer(connection: Connection) -> None:
        connection.send(json_response(200, json.dumps(chat_completion("hi")).encode()))

    with hostile_server(answer) as upstream:
        config = proxy_config(
            tmp_path,
            upstream_url=upstream.base_url,
            auditor_url=auditor_url,
            serve={"limits": {"max_body_bytes": 4096}},
        )
        with running_proxy(config) as base, httpx.Client(timeout=30) as client:
            body = json.dumps({"model": "m", "messages": USER, "pad": "x" * 20_000}).encode()
            response = client.post(
                base + "/chat/completions",
                content=iter([body[i : i + 1000] for i in range(0, len(body), 1000)]),
                headers={**client_headers(), "content-type": "application/json"},
            )
            assert response.status_code == 413
            assert response.json()["error"]["code"] == "request_too_large"
        assert upstream.connections == []


@pytest.mark.probe("guard proxy: hostile clients")
def test_a_request_body_that_never_finishes_is_cut_off(tmp_path: Path, auditor_url: str) -> None:
    """Finding: nothing bounded the time a request body may take. A client that sends its
    headers and then a byte now and then held a slot of ``max_in_flight`` for as long as it
    liked (slowloris); ``limits.body_timeout_s`` now ends it with 408."""
    with hostile_server(lambda c: None) as upstream:
        config = proxy_config(
            tmp_path,
            upstream_url=upstream.base_url,
            auditor_url=auditor_url,
            serve={"limits": {"body_timeout_s": 0.5}},
        )
        with running_proxy(config) as base:
            port = int(base.rsplit(":", 1)[1].split("/", 1)[0])
            with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
                sock.sendall(
                    b"POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1\r\n"
                    b"authorization: Bearer " + CLIENT_KEY.encode() + b"\r\n"
                    b"content-type: application/json\r\ncontent-length: 1000\r\n\r\n{"
                )
                answer = sock.recv(65536)  # the hang guard is the socket timeout
        assert answer.startswith(b"HTTP/1.1 408"), answer[:80]
        assert b'"request_timeout"' in answer
        assert upstream.connections == []


# -- the upstream's key --------------------------------------------------------------------------


def _echo_key(connection: Connection) -> None:
    """An upstream that repeats the credentials it was sent, everywhere it can."""
    auth = re.search(rb"authorization: ([^\r\n]+)", connection.head)
    seen = auth.group(1).decode() if auth else "none"
    path = connection.head.split(b" ", 2)[1]
    if path == b"/v1/models":  # a passthrough answer, the key split across two chunks
        body = json.dumps({"object": "list", "data": [], "debug": seen}).encode()
        cut = body.index(UPSTREAM_KEY.encode()) + 5
        connection.send(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
            b"transfer-encoding: chunked\r\n\r\n"
        )
        for part in (body[:cut], body[cut:]):
            connection.send(b"%x\r\n%s\r\n" % (len(part), part))
            time.sleep(0.05)
        connection.send(b"0\r\n\r\n")
    elif path == b"/v1/models/redirect":
        connection.send(
            b"HTTP/1.1 307 Temporary Redirect\r\nlocation: http://127.0.0.1:9/?key="
            + UPSTREAM_KEY.encode()
            + b"\r\ncontent-length: 0\r\n\r\n"
        )
    else:  # a guarded call: an error that quotes the key, in the body and a header
        body = json.dumps({"error": {"message": f"Incorrect API key: {seen}", "code": "k"}})
        connection.send(json_response(401, body.encode(), ("x-debug-auth", seen)))


@pytest.mark.probe("guard proxy: hostile upstream")
def test_the_upstream_key_never_reaches_a_client(
    tmp_path: Path, auditor_url: str, probe_cases: Any
) -> None:
    """Finding: the upstream's error bodies and headers went to the client as they came, so an
    upstream that echoes the credentials it got (many say "Incorrect API key: sk-...") handed
    the proxy's own key to every client; a redirect's Location went along too."""
    with hostile_server(_echo_key) as upstream:
        config = proxy_config(tmp_path, upstream_url=upstream.base_url, auditor_url=auditor_url)
        with running_proxy(config) as base, httpx.Client(timeout=30) as client:
            guarded = client.post(
                base + "/chat/completions",
                json={"model": "m", "messages": USER},
                headers=client_headers(),
            )
            listed = client.get(base + "/models", headers=client_headers())
            moved = client.get(base + "/models/redirect", headers=client_headers())
        assert all(UPSTREAM_KEY.encode() in c.head for c in upstream.connections)
    assert guarded.status_code == 401
    assert guarded.json()["error"]["message"] == "Incorrect API key: [redacted]"
    assert listed.status_code == 200 and listed.json()["debug"] == "[redacted]"
    assert moved.status_code == 502 and "location" not in moved.headers
    probe_cases(3)  # an error body, a header, a redirect
    for response in (guarded, listed, moved):
        assert UPSTREAM_KEY not in _everything(response)
        assert UPSTREAM_KEY[:12] not in _everything(response)


@pytest.mark.probe("guard proxy: hostile upstream")
def test_upstream_errors_reach_the_client_in_the_openai_shape_only(
    tmp_path: Path, auditor_url: str, probe_cases: Any
) -> None:
    """Finding: a non-2xx answer went to the client with whatever body and content type the
    upstream chose (an HTML page, a body carrying generated text under other keys)."""
    probe_cases(2)  # a JSON error carrying output, an HTML page
    leaked = "UNAUDITED-OUTPUT " * 400

    def answer(connection: Connection) -> None:
        if b"/chat/completions" in connection.head.split(b"\r\n", 1)[0]:
            body = {
                "error": {"message": leaked, "type": "server_error", "code": 7},
                "choices": [{"message": {"content": leaked}}],
            }
            connection.send(json_response(500, json.dumps(body).encode()))
        else:
            page = b"<html><script>alert(1)</script>" + leaked.encode() + b"</html>"
            connection.send(
                b"HTTP/1.1 503 Busy\r\ncontent-type: text/html\r\ncontent-length: %d\r\n\r\n%s"
                % (len(page), page)
            )

    with hostile_server(answer) as upstream:
        config = proxy_config(tmp_path, upstream_url=upstream.base_url, auditor_url=auditor_url)
        with running_proxy(config) as base, httpx.Client(timeout=30) as client:
            json_error = client.post(
                base + "/chat/completions",
                json={"model": "m", "messages": USER},
                headers=client_headers(),
            )
            html_error = client.post(
                base + "/responses", json={"model": "m", "input": "hi"}, headers=client_headers()
            )
    assert json_error.status_code == 500
    error = json_error.json()
    assert set(error) == {"error"}
    assert error["error"]["type"] == "server_error" and error["error"]["code"] == 7
    assert len(error["error"]["message"]) <= 1000
    assert html_error.status_code == 503
    assert html_error.headers["content-type"] == "application/json"
    assert "UNAUDITED" not in html_error.text and "<script>" not in html_error.text
    assert html_error.json()["error"]["type"] == "upstream_error"


# -- a hostile upstream: bounded memory and time, nothing unaudited ------------------------------


@pytest.mark.probe("guard proxy: hostile upstream")
def test_a_gigantic_chunk_is_not_buffered_whole(tmp_path: Path, auditor_url: str) -> None:
    """Finding: the client read a chunk with one ``readexactly(size)``: an upstream that
    declares a 1 GiB chunk made the proxy buffer all of it, whatever ``max_response_bytes``
    said (≈480 MB resident for a 200 MB chunk in the first probe)."""

    def answer(connection: Connection) -> None:
        connection.send(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
            b"transfer-encoding: chunked\r\n\r\n40000000\r\n"
        )
        block = b"x" * MIB
        for _ in range(96):
            if not connection.send(block):
                return

    with hostile_server(answer) as upstream:
        config = proxy_config(
            tmp_path,
            upstream_url=upstream.base_url,
            auditor_url=auditor_url,
            serve={"limits": {"max_response_bytes": MIB}},
        )
        with running_proxy(config) as base, httpx.Client(timeout=60) as client:
            response = client.post(
                base + "/chat/completions",
                json={"model": "m", "messages": USER},
                headers=client_headers(),
            )
        [connection] = upstream.connections
    assert response.status_code == 502
    assert response.json()["error"]["code"] == "response_too_large"
    # The proxy hung up after the limit (plus what the kernel's socket buffers held).
    assert connection.closed_by_peer and connection.sent < 40 * MIB


@pytest.mark.probe("guard proxy: hostile upstream")
def test_an_endless_passthrough_stream_is_cut_at_the_limit(
    tmp_path: Path, auditor_url: str
) -> None:
    """Finding: in passthrough mode only the SSE frame size was bounded; the text held for the
    final audit grew with the stream (2.4 GB resident after 50 s of an endless stream)."""

    def answer(connection: Connection) -> None:
        connection.send(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\r\n")
        frame = _chunk("y" * 4000)
        for _ in range(24_000):  # ~96 MB, if nobody stops it
            if not connection.send(frame):
                return

    with hostile_server(answer) as upstream:
        config = proxy_config(
            tmp_path,
            upstream_url=upstream.base_url,
            auditor_url=auditor_url,
            serve={"limits": {"max_response_bytes": MIB}, "stream": {"mode": "passthrough"}},
        )
        with running_proxy(config) as base, httpx.Client(timeout=60) as client:
            with client.stream(
                "POST",
                base + "/chat/completions",
                json={"model": "m", "messages": USER, "stream": True},
                headers=client_headers(),
            ) as response:
                received = b"".join(response.iter_bytes())
        [connection] = upstream.connections
    assert connection.closed_by_peer and connection.sent < 40 * MIB
    last = received.rstrip(b"\n").rsplit(b"\n\n", 1)[-1]
    assert json.loads(last.removeprefix(b"data: "))["error"]["code"] == "response_too_large"


@pytest.mark.probe("guard proxy: hostile upstream")
def test_the_stream_ends_at_done_even_if_the_upstream_does_not(
    tmp_path: Path, auditor_url: str
) -> None:
    """Finding: after ``[DONE]`` the proxy kept reading until the upstream closed; an upstream
    that sends keep-alives forever held the client's stream open forever."""

    def answer(connection: Connection) -> None:
        connection.send(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\r\n")
        connection.send(_chunk("all done") + b"data: [DONE]\n\n")
        for _ in range(400):
            if not connection.send(b": keep-alive\n\n"):
                return
            time.sleep(0.02)

    with hostile_server(answer) as upstream:
        config = proxy_config(tmp_path, upstream_url=upstream.base_url, auditor_url=auditor_url)
        with running_proxy(config) as base:
            stream = openai.OpenAI(base_url=base, api_key=CLIENT_KEY, max_retries=0)
            chunks = stream.chat.completions.create(model="m", messages=USER, stream=True)
            text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            stream.close()
        [connection] = upstream.connections
    assert text == "all done"
    assert connection.closed_by_peer  # the proxy hung up; the upstream had more to say


@pytest.mark.probe("guard proxy: hostile upstream")
@pytest.mark.parametrize("size_line", [b"zz", b"-5", b"1" * 70_000])
def test_a_malformed_chunk_is_an_upstream_error_not_a_crash(
    tmp_path: Path, auditor_url: str, size_line: bytes
) -> None:
    """Finding: a chunk-size line that is not hex raised ``ValueError`` inside the client: the
    proxy logged a bug and answered 500 ``internal_error`` (and a passthrough stream just
    stopped, with no error event and no audit of what was shown)."""

    def answer(connection: Connection) -> None:
        connection.send(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
            b"transfer-encoding: chunked\r\n\r\n" + size_line + b"\r\n"
        )

    with hostile_server(answer) as upstream:
        config = proxy_config(tmp_path, upstream_url=upstream.base_url, auditor_url=auditor_url)
        with running_proxy(config) as base, httpx.Client(timeout=30) as client:
            response = client.post(
                base + "/chat/completions",
                json={"model": "m", "messages": USER},
                headers=client_headers(),
            )
    assert response.status_code == 502
    assert response.json()["error"]["code"] == "upstream_unavailable"


@pytest.mark.probe("guard proxy: hostile upstream")
def test_header_lines_with_control_characters_are_dropped(tmp_path: Path, auditor_url: str) -> None:
    """Finding: a response header holding a bare LF reached uvicorn, which refuses to send it:
    the client's connection dropped with no answer at all."""
    models = b'{"object": "list", "data": []}'

    def answer(connection: Connection) -> None:
        connection.send(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
            b"x-note: a\nset-cookie: planted=1\r\nx fake header: 1\r\n"
            b"content-length: %d\r\n\r\n%s" % (len(models), models)
        )

    with hostile_server(answer) as upstream:
        config = proxy_config(tmp_path, upstream_url=upstream.base_url, auditor_url=auditor_url)
        with running_proxy(config) as base, httpx.Client(timeout=30) as client:
            response = client.get(base + "/models", headers=client_headers())
    assert response.status_code == 200 and response.content == models
    assert "set-cookie" not in response.headers and "x-note" not in response.headers


# -- operations routes ---------------------------------------------------------------------------


@pytest.mark.probe("guard proxy: hostile clients")
def test_metrics_token_check_does_not_crash_on_non_ascii(
    tmp_path: Path, auditor_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Finding: ``hmac.compare_digest`` on two ``str`` raises ``TypeError`` for non-ASCII input:
    a bearer header with a Latin-1 byte made ``/metrics`` answer 500 (without the proxy's
    security headers, which its 403 lacked too)."""
    monkeypatch.setenv("PROBE_METRICS_TOKEN", "metrics-token-0001")
    with hostile_server(lambda c: None) as upstream:
        config = proxy_config(
            tmp_path,
            upstream_url=upstream.base_url,
            auditor_url=auditor_url,
            serve={"metrics": {"token_env": "PROBE_METRICS_TOKEN"}},
        )
        with running_proxy(config) as base, httpx.Client(timeout=30) as client:
            url = base.removesuffix("/v1") + "/metrics"
            odd = client.get(url, headers={"authorization": "Bearer \xe9t\xe9".encode("latin-1")})
            none = client.get(url)
            right = client.get(url, headers={"authorization": "Bearer metrics-token-0001"})
    assert (odd.status_code, none.status_code, right.status_code) == (403, 403, 200)
    assert odd.headers["x-content-type-options"] == "nosniff"


@pytest.mark.probe("guard proxy: hostile clients")
def test_every_forwarding_route_needs_a_key(
    tmp_path: Path, auditor_url: str, probe_cases: Any
) -> None:
    routes = (
        ("POST", "/chat/completions"),
        ("POST", "/responses"),
        ("GET", "/models"),
        ("GET", "/models/m"),
        ("POST", "/embeddings"),
    )
    keyless: tuple[dict[str, str], ...] = (
        {},
        {"authorization": "Bearer wrong"},
        {"api-key": CLIENT_KEY},
    )
    probe_cases(len(routes) * len(keyless))
    with hostile_server(lambda c: None) as upstream:
        config = proxy_config(tmp_path, upstream_url=upstream.base_url, auditor_url=auditor_url)
        with running_proxy(config) as base, httpx.Client(timeout=30) as client:
            for method, path in routes:
                for headers in keyless:
                    response = client.request(method, base + path, json={}, headers=headers)
                    assert response.status_code == 401, (method, path, headers)
        assert upstream.connections == []


# -- images ---------------------------------------------------------------------------------------


@pytest.mark.probe("guard proxy: hostile clients")
def test_image_urls_in_requests_cannot_reach_loopback(tmp_path: Path, auditor_url: str) -> None:
    """Even with remote images allowed, an ``image_url`` naming a private or loopback address
    (SSRF toward the proxy's own network) is never fetched: the audit is ``invalid_input``."""
    fetched: list[bytes] = []

    def canary(connection: Connection) -> None:
        fetched.append(connection.head)

    upstream = OpenAIServer()
    upstream.enqueue(ScriptedResponse.json(chat_completion("a picture of a cat")))
    with upstream, hostile_server(canary) as target:
        config = proxy_config(
            tmp_path,
            upstream_url=upstream.base_url,
            auditor_url=auditor_url,
            images={"allow_remote": True},
        )
        with running_proxy(config) as base:
            client = openai.OpenAI(base_url=base, api_key=CLIENT_KEY, max_retries=0)
            parts: list[Any] = [
                {"type": "text", "text": "what is this?"},
                {
                    "type": "image_url",
                    "image_url": {"url": f"http://127.0.0.1:{target.port}/x.png"},
                },
            ]
            with pytest.raises(openai.BadRequestError) as caught:
                client.chat.completions.create(
                    model="m", messages=[{"role": "user", "content": parts}]
                )
            client.close()
    assert caught.value.code == "audit_invalid_input"
    assert fetched == []


# -- logs ----------------------------------------------------------------------------------------


@pytest.mark.probe("secrets in logs, sinks and stores")
def test_logs_carry_neither_content_nor_the_upstream_key(tmp_path: Path, auditor_url: str) -> None:
    marker = "marker-5eedf00dcafe probe-verdict=1"

    def answer(connection: Connection) -> None:
        line = connection.head.split(b"\r\n", 1)[0]
        if b"/models" in line:
            connection.send(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n")
        elif b"/responses" in line:
            body = json.dumps({"error": {"message": f"key {UPSTREAM_KEY} and {marker}"}})
            connection.send(json_response(400, body.encode()))
        else:
            completion = chat_completion(f"the answer: {marker}")
            connection.send(json_response(200, json.dumps(completion).encode()))

    lines: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(self.format(record))

    handler = Collect()
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.addHandler(handler)
    level = root.level
    root.setLevel(logging.DEBUG)
    try:
        with hostile_server(answer) as upstream:
            config = proxy_config(tmp_path, upstream_url=upstream.base_url, auditor_url=auditor_url)
            with running_proxy(config) as base, httpx.Client(timeout=30) as client:
                blocked = client.post(
                    base + "/chat/completions",
                    json={"model": "m", "messages": [{"role": "user", "content": marker}]},
                    headers=client_headers(),
                )
                client.post(
                    base + "/responses",
                    json={"model": "m", "input": marker},
                    headers=client_headers(),
                )
                client.get(base + "/models", headers=client_headers())
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
    assert blocked.status_code == 400 and blocked.json()["error"]["code"] == "content_blocked"
    text = "\n".join(lines)
    assert lines and '"request_id"' in text
    assert "5eedf00dcafe" not in text
    assert UPSTREAM_KEY not in text and CLIENT_KEY not in text
