"""Streamed completions through the proxy: buffer, passthrough, early stop, cut streams."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx
import openai
import pytest

from traceguard.testing.openai_server import (
    OpenAIServer,
    ScriptedResponse,
    SSEEvent,
    chat_completion_chunks,
    responses_events,
)

from .conftest import CLIENT_KEY, HARMFUL, RISKY, ProxyFactory, RunningProxy

USER = [{"role": "user", "content": "Tell me a story."}]


def sdk(proxy: RunningProxy) -> openai.OpenAI:
    return openai.OpenAI(base_url=proxy.base_url, api_key=CLIENT_KEY, max_retries=0)


def wire(chunks: list[dict[str, Any]], *, done: bool = True) -> bytes:
    """The exact bytes the loopback upstream sends for ``chunks``."""
    events = [SSEEvent(chunk) for chunk in chunks]
    if done:
        events.append(SSEEvent("[DONE]"))
    return b"".join(event.encode() for event in events)


def eventually(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


def raw_stream(proxy: RunningProxy, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(
        f"{proxy.base_url}/chat/completions",
        json={**body, "stream": True},
        headers={"authorization": f"Bearer {CLIENT_KEY}"},
        timeout=30,
    )


def test_buffered_allow_is_byte_identical(make_proxy: ProxyFactory, upstream: OpenAIServer) -> None:
    proxy = make_proxy()
    chunks = chat_completion_chunks("Once upon a time there was a fox.", reasoning_content="fine")
    upstream.enqueue(ScriptedResponse.sse(chunks))
    response = raw_stream(proxy, {"model": "m", "messages": USER})
    assert response.status_code == 200
    assert response.headers["x-traceguard-action"] == "allow"
    assert response.content == wire(chunks)
    # The SDK reads it like any stream.
    upstream.enqueue(ScriptedResponse.sse(chunks))
    with sdk(proxy) as client:
        stream = client.chat.completions.create(model="m", messages=USER, stream=True)
        text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == "Once upon a time there was a fox."
    # Early stop audits the finished thinking first, then the whole output.
    assert [(r["stage"], r["action"]) for r in proxy.decisions()] == [
        ("thinking", "allow"),
        ("final", "allow"),
    ] * 2


def test_buffered_block_is_an_http_error_before_any_chunk(
    make_proxy: ProxyFactory, upstream: OpenAIServer
) -> None:
    proxy = make_proxy(serve={"stream": {"mode": "buffer", "early_stop": False}})
    upstream.enqueue(ScriptedResponse.sse(chat_completion_chunks(f"Step one: {HARMFUL}")))
    with sdk(proxy) as client, pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="m", messages=USER, stream=True)
    assert caught.value.code == "content_blocked"
    assert HARMFUL not in caught.value.response.text


def test_buffered_redaction_drops_the_thinking(
    make_proxy: ProxyFactory, upstream: OpenAIServer
) -> None:
    proxy = make_proxy(serve={"stream": {"early_stop": False}})
    chunks = chat_completion_chunks("The answer is 42.", reasoning_content=f"hmm {RISKY} hmm")
    upstream.enqueue(ScriptedResponse.sse(chunks))
    response = raw_stream(proxy, {"model": "m", "messages": USER})
    assert response.headers["x-traceguard-action"] == "redact"
    assert RISKY not in response.text
    assert "reasoning_content" not in response.text
    assert response.text.endswith("data: [DONE]\n\n")
    with sdk(proxy) as client:
        upstream.enqueue(ScriptedResponse.sse(chunks))
        stream = client.chat.completions.create(model="m", messages=USER, stream=True)
        text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == "The answer is 42."


def test_block_as_refusal_stream(make_proxy: ProxyFactory, upstream: OpenAIServer) -> None:
    proxy = make_proxy(serve={"block": {"mode": "refusal", "refusal": "No."}})
    upstream.enqueue(ScriptedResponse.sse(chat_completion_chunks(f"Do this: {HARMFUL}")))
    with sdk(proxy) as client:
        stream = client.chat.completions.create(model="m", messages=USER, stream=True)
        chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "No."
    assert chunks[-1].choices[0].finish_reason == "content_filter"


def test_passthrough_block_ends_the_stream_with_an_error_event(
    make_proxy: ProxyFactory, upstream: OpenAIServer
) -> None:
    proxy = make_proxy(serve={"stream": {"mode": "passthrough"}})
    upstream.enqueue(ScriptedResponse.sse(chat_completion_chunks(f"Leaked: {HARMFUL}")))
    received: list[Any] = []
    with sdk(proxy) as client:
        stream = client.chat.completions.create(model="m", messages=USER, stream=True)
        assert stream.response.headers["x-traceguard-stream-mode"] == "passthrough"
        with pytest.raises(openai.APIError) as caught:
            for chunk in stream:
                received.append(chunk)
    assert received  # passthrough: chunks flowed before the audit
    assert caught.value.code == "content_blocked"
    assert [r["action"] for r in proxy.decisions()] == ["block"]


def test_early_stop_closes_the_upstream_request(
    make_proxy: ProxyFactory, upstream: OpenAIServer
) -> None:
    proxy = make_proxy()  # buffer mode, early stop on
    content = ["word "] * 400  # 400 events at 50 ms: 20 s if the upstream ran to the end
    chunks = chat_completion_chunks(content, reasoning_content=f"plan: {HARMFUL}")
    upstream.enqueue(ScriptedResponse.sse(chunks, event_delay_s=0.05))
    with sdk(proxy) as client, pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="m", messages=USER, stream=True)
    assert caught.value.code == "content_blocked"
    assert eventually(lambda: upstream.in_flight == 0, timeout=10)
    [record] = proxy.decisions()
    assert record["stage"] == "thinking"
    assert proxy.proxy.metrics.counter("traceguard_proxy_stream_stops_total", reason="blocked") == 1


def test_client_disconnect_closes_upstream_and_records_the_audit(
    make_proxy: ProxyFactory, upstream: OpenAIServer
) -> None:
    proxy = make_proxy(serve={"stream": {"mode": "passthrough"}})
    chunks = chat_completion_chunks(["piece "] * 400)
    upstream.enqueue(ScriptedResponse.sse(chunks, event_delay_s=0.05))
    with sdk(proxy) as client:
        stream = client.chat.completions.create(model="m", messages=USER, stream=True)
        for count, _ in enumerate(stream):
            if count == 3:
                break
        stream.close()
    assert eventually(lambda: upstream.in_flight == 0, timeout=10)
    assert eventually(lambda: len(proxy.decisions()) == 1)
    [record] = proxy.decisions()
    assert record["stage"] == "partial"
    assert record["action"] == "allow"
    assert (
        proxy.proxy.metrics.counter("traceguard_proxy_stream_stops_total", reason="client_closed")
        == 1
    )


def test_upstream_error_mid_stream_is_forwarded(
    make_proxy: ProxyFactory, upstream: OpenAIServer
) -> None:
    proxy = make_proxy(serve={"stream": {"mode": "passthrough"}})
    chunks = chat_completion_chunks("partial answer")
    events: list[Any] = [*chunks[:3], {"error": {"message": "engine died", "type": "server"}}]
    upstream.enqueue(ScriptedResponse.sse(events, done=False))
    with sdk(proxy) as client:
        stream = client.chat.completions.create(model="m", messages=USER, stream=True)
        with pytest.raises(openai.APIError) as caught:
            list(stream)
    assert "engine died" in caught.value.message
    assert [r["stage"] for r in proxy.decisions()] == ["partial"]


def test_responses_stream_allow_and_block(make_proxy: ProxyFactory, upstream: OpenAIServer) -> None:
    proxy = make_proxy()
    allowed = responses_events("A calm reply.")
    upstream.enqueue(
        ScriptedResponse.sse(allowed, done=False),
        ScriptedResponse.sse(responses_events(f"Bad {HARMFUL}"), done=False),
        path="/v1/responses",
    )
    with sdk(proxy) as client:
        with client.responses.stream(model="m", input="Hi") as stream:
            final = stream.get_final_response()
        assert final.output_text == "A calm reply."
        with pytest.raises(openai.BadRequestError) as caught:
            client.responses.create(model="m", input="Hi", stream=True)
    assert caught.value.code == "content_blocked"
    assert [r["action"] for r in proxy.decisions()] == ["allow", "block"]
