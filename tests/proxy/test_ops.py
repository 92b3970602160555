"""Operations: health, readiness, metrics, spans, limits, keys and images."""

from __future__ import annotations

import base64
import time
from typing import Any

import httpx
import openai
import pytest

from traceguard.testing.openai_server import OpenAIServer, ScriptedResponse, chat_completion

from .conftest import CLIENT_KEY, OTHER_KEY, RISKY, ProxyFactory, digest

USER = [{"role": "user", "content": "Tell me a story."}]


def sdk(base_url: str, key: str = CLIENT_KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=base_url, api_key=key, max_retries=0)


def test_health_and_readiness(make_proxy: ProxyFactory, auditor: OpenAIServer) -> None:
    auditor.enqueue(ScriptedResponse.json({"object": "list", "data": []}), path="/v1/models")
    proxy = make_proxy()
    assert httpx.get(f"{proxy.url}/healthz").json() == {"status": "ok"}
    ready = httpx.get(f"{proxy.url}/readyz")
    assert ready.status_code == 200
    assert ready.headers["x-content-type-options"] == "nosniff"
    down = make_proxy(auditor_url="http://127.0.0.1:9/v1")
    not_ready = httpx.get(f"{down.url}/readyz")
    assert not_ready.status_code == 503
    assert not_ready.json() == {"status": "not_ready"}


def test_metrics_count_requests_decisions_and_auditor_time(
    make_proxy: ProxyFactory, upstream: OpenAIServer
) -> None:
    proxy = make_proxy()
    upstream.enqueue(ScriptedResponse.json(chat_completion("Fine.")))
    with sdk(proxy.base_url) as client:
        client.chat.completions.create(model="m", messages=USER)
    # A request is counted just after its last byte went out: wait for the count.
    served = 'traceguard_proxy_requests_total{endpoint="chat.completions",status="200"} 1'
    deadline = time.monotonic() + 10
    while served not in (text := httpx.get(f"{proxy.url}/metrics").text):
        assert time.monotonic() < deadline, text
        time.sleep(0.01)
    lines = set(text.splitlines())
    assert 'traceguard_proxy_requests_total{endpoint="chat.completions",status="200"} 1' in lines
    assert 'traceguard_proxy_decisions_total{action="allow",disposition="allow"} 1' in lines
    assert 'traceguard_proxy_audits_total{api="chat.completions",stage="final"} 1' in lines
    assert "traceguard_proxy_auditor_seconds_count 1" in lines
    assert 'traceguard_proxy_auditor_seconds_bucket{le="+Inf"} 1' in lines
    assert "# TYPE traceguard_proxy_stream_stops_total counter" in lines
    assert "traceguard_proxy_in_flight 0" in lines


def test_metrics_need_the_token_when_one_is_set(
    make_proxy: ProxyFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("METRICS_TOKEN", "scrape-me-please")
    proxy = make_proxy(serve={"metrics": {"token_env": "METRICS_TOKEN"}})
    assert httpx.get(f"{proxy.url}/metrics").status_code == 403
    wrong = httpx.get(f"{proxy.url}/metrics", headers={"authorization": "Bearer nope"})
    assert wrong.status_code == 403
    right = httpx.get(f"{proxy.url}/metrics", headers={"authorization": "Bearer scrape-me-please"})
    assert right.status_code == 200
    assert right.headers["content-type"].startswith("text/plain; version=0.0.4")


def test_rate_limit_per_key(make_proxy: ProxyFactory, upstream: OpenAIServer) -> None:
    keys = [
        {
            "name": "team-a",
            "sha256": digest(CLIENT_KEY),
            "rate_limit": {"requests_per_minute": 6, "burst": 2},
        },
        {"name": "team-b", "sha256": digest(OTHER_KEY)},
    ]
    proxy = make_proxy(serve={"keys": keys})
    upstream.enqueue(*[ScriptedResponse.json(chat_completion("ok")) for _ in range(3)])
    with sdk(proxy.base_url) as client:
        client.chat.completions.create(model="m", messages=USER)
        client.chat.completions.create(model="m", messages=USER)
        with pytest.raises(openai.RateLimitError) as caught:
            client.chat.completions.create(model="m", messages=USER)
    assert caught.value.code == "rate_limit_exceeded"
    assert int(caught.value.response.headers["retry-after"]) >= 1
    with sdk(proxy.base_url, key=OTHER_KEY) as other:
        other.chat.completions.create(model="m", messages=USER)  # its own budget
    assert len(upstream.requests) == 3
    metrics = httpx.get(f"{proxy.url}/metrics").text
    assert 'traceguard_proxy_rate_limited_total{client="team-a"} 1' in metrics


def test_per_key_policy(make_proxy: ProxyFactory, upstream: OpenAIServer) -> None:
    keys = [
        {"name": "team-a", "sha256": digest(CLIENT_KEY)},
        {
            "name": "strict",
            "sha256": digest(OTHER_KEY),
            "policy": {"potentially_harmful": "block", "auditor_error": "block"},
        },
    ]
    proxy = make_proxy(serve={"keys": keys})
    risky = chat_completion(f"An answer with {RISKY}.", reasoning_content="some thinking")
    upstream.enqueue(ScriptedResponse.json(risky), ScriptedResponse.json(risky))
    with sdk(proxy.base_url) as client:
        raw = client.chat.completions.with_raw_response.create(model="m", messages=USER)
    assert raw.headers["x-traceguard-action"] == "redact"
    with (
        sdk(proxy.base_url, key=OTHER_KEY) as strict,
        pytest.raises(openai.BadRequestError) as caught,
    ):
        strict.chat.completions.create(model="m", messages=USER)
    assert caught.value.code == "content_blocked"


def test_remote_images_are_never_fetched_unless_allowed(
    make_proxy: ProxyFactory, upstream: OpenAIServer
) -> None:
    with OpenAIServer() as image_host:
        proxy = make_proxy()
        url = f"{image_host.url}/cat.png?token=secret"
        messages: list[dict[str, Any]] = [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is in this picture?"},
                    {"type": "image_url", "image_url": {"url": url}},
                ],
            }
        ]
        upstream.enqueue(ScriptedResponse.json(chat_completion("A cat.")))
        with sdk(proxy.base_url) as client, pytest.raises(openai.BadRequestError) as caught:
            client.chat.completions.create(model="m", messages=messages)
        assert caught.value.code == "audit_invalid_input"
        assert image_host.requests == []  # the proxy and the auditor never fetched it
    [record] = proxy.decisions()
    assert record["status"] == "invalid_input"


def test_inline_images_reach_the_auditor(
    make_proxy: ProxyFactory, upstream: OpenAIServer, auditor: OpenAIServer
) -> None:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 10, 10)).save(buffer, format="PNG")
    data_uri = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
    proxy = make_proxy()
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Describe."},
                {"type": "image_url", "image_url": {"url": data_uri}},
            ],
        }
    ]
    upstream.enqueue(ScriptedResponse.json(chat_completion("A red square.")))
    auditor.reset()
    with sdk(proxy.base_url) as client:
        raw = client.chat.completions.with_raw_response.create(model="m", messages=messages)
    assert raw.headers["x-traceguard-action"] == "allow"
    audited = auditor.requests[-1].body
    assert b"image_url" in audited  # the auditor was shown the image


def test_origin_and_host_checks(make_proxy: ProxyFactory, upstream: OpenAIServer) -> None:
    proxy = make_proxy()
    browser = httpx.post(
        f"{proxy.base_url}/chat/completions",
        json={"model": "m", "messages": USER},
        headers={"authorization": f"Bearer {CLIENT_KEY}", "origin": "https://evil.example"},
    )
    assert browser.status_code == 403
    assert browser.json()["error"]["code"] == "origin_not_allowed"
    open_proxy = make_proxy(serve={"open": True, "keys": []})
    rebound = httpx.post(
        f"{open_proxy.base_url}/chat/completions",
        json={"model": "m", "messages": USER},
        headers={"host": "attacker.example"},
    )
    assert rebound.status_code == 403
    assert rebound.json()["error"]["code"] == "host_not_allowed"
    upstream.enqueue(ScriptedResponse.json(chat_completion("ok")))
    local = httpx.post(
        f"{open_proxy.base_url}/chat/completions", json={"model": "m", "messages": USER}
    )
    assert local.status_code == 200
    assert upstream.requests  # keyless on loopback works when configured open
    assert local.headers["content-security-policy"].startswith("default-src 'none'")


def test_spans_when_opentelemetry_is_configured(
    make_proxy: ProxyFactory, upstream: OpenAIServer
) -> None:
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    proxy = make_proxy()
    upstream.enqueue(ScriptedResponse.json(chat_completion("Hello.")))
    with sdk(proxy.base_url) as client:
        client.chat.completions.create(model="m", messages=USER)
    # The request span ends just after the last byte went out: wait for it.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and len(exporter.get_finished_spans()) < 2:
        time.sleep(0.01)
    spans = {span.name: span for span in exporter.get_finished_spans()}
    request = spans["traceguard.proxy.request"]
    audit = spans["traceguard.audit"]
    assert request.attributes is not None and audit.attributes is not None
    assert request.attributes["traceguard.client"] == "team-a"
    assert request.attributes["http.response.status_code"] == 200
    assert audit.attributes["traceguard.actions"] == "allow"
    assert audit.parent is not None and audit.parent.span_id == request.context.span_id
    texts = " ".join(str(v) for s in spans.values() for v in (s.attributes or {}).values())
    assert "Hello." not in texts and "story" not in texts
