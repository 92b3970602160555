"""Non-streamed completions through the proxy, with the real openai SDK as the client."""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai
import pytest

from traceguard.testing.openai_server import (
    OpenAIServer,
    ScriptedResponse,
    chat_completion,
    responses_response,
)

from .conftest import CLIENT_KEY, HARMFUL, OTHER_KEY, RISKY, UPSTREAM_KEY, ProxyFactory

USER = [{"role": "user", "content": "Tell me a story."}]


def sdk(base_url: str, key: str = CLIENT_KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=base_url, api_key=key, max_retries=0)


def test_allow_passes_the_upstream_body_byte_for_byte(
    make_proxy: ProxyFactory, upstream: OpenAIServer
) -> None:
    proxy = make_proxy()
    payload = chat_completion("Once upon a time.", reasoning_content="A short story is fine.")
    upstream.enqueue(ScriptedResponse.json(payload))
    with sdk(proxy.base_url) as client:
        raw = client.chat.completions.with_raw_response.create(model="m", messages=USER)
    assert raw.headers["x-traceguard-action"] == "allow"
    assert raw.headers["x-traceguard-disposition"] == "allow"
    assert raw.http_response.content == json.dumps(payload).encode()
    completion = raw.parse()
    assert completion.choices[0].message.content == "Once upon a time."
    # The upstream got the client's body unchanged, under the upstream's key, not the client's.
    sent = upstream.requests[-1]
    assert sent.json == {"model": "m", "messages": USER}
    assert sent.headers["authorization"] == f"Bearer {UPSTREAM_KEY}"
    assert CLIENT_KEY not in json.dumps(dict(sent.headers))
    [record] = proxy.decisions()
    assert record["action"] == "allow"
    assert record["stage"] == "final"


def test_block_is_an_openai_error_with_its_code(
    make_proxy: ProxyFactory, upstream: OpenAIServer
) -> None:
    proxy = make_proxy()
    upstream.enqueue(ScriptedResponse.json(chat_completion(f"Here is how: {HARMFUL}")))
    with sdk(proxy.base_url) as client, pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="m", messages=USER)
    error = caught.value
    assert error.status_code == 400
    assert error.code == "content_blocked"
    assert error.response.headers["x-traceguard-action"] == "block"
    assert HARMFUL not in error.response.text  # the held output is never echoed
    [record] = proxy.decisions()
    assert record["action"] == "block"


def test_block_as_refusal_returns_a_completion(
    make_proxy: ProxyFactory, upstream: OpenAIServer
) -> None:
    proxy = make_proxy(serve={"block": {"mode": "refusal", "refusal": "Not this one."}})
    upstream.enqueue(
        ScriptedResponse.json(chat_completion(f"Sure: {HARMFUL}", reasoning_content="plan"))
    )
    with sdk(proxy.base_url) as client:
        raw = client.chat.completions.with_raw_response.create(model="m", messages=USER)
    assert raw.headers["x-traceguard-action"] == "block"
    message = raw.parse().choices[0].message
    assert message.content == "Not this one."
    assert HARMFUL not in raw.http_response.text
    assert "plan" not in raw.http_response.text


def test_redact_returns_the_same_shape_edited(
    make_proxy: ProxyFactory, upstream: OpenAIServer
) -> None:
    proxy = make_proxy()
    payload = chat_completion("The answer.", reasoning_content=f"thinking about {RISKY}")
    upstream.enqueue(ScriptedResponse.json(payload))
    with sdk(proxy.base_url) as client:
        raw = client.chat.completions.with_raw_response.create(model="m", messages=USER)
    assert raw.headers["x-traceguard-action"] == "redact"
    body = raw.http_response.json()
    message = body["choices"][0]["message"]
    assert message["content"] == "The answer."
    assert "reasoning_content" not in message
    assert set(body) == set(payload)  # same shape: nothing added, nothing dropped
    assert RISKY not in raw.http_response.text


def test_responses_api_allow_and_block(make_proxy: ProxyFactory, upstream: OpenAIServer) -> None:
    proxy = make_proxy()
    allowed = responses_response("A fine answer.")
    upstream.enqueue(
        ScriptedResponse.json(allowed),
        ScriptedResponse.json(responses_response(f"Bad: {HARMFUL}")),
        path="/v1/responses",
    )
    with sdk(proxy.base_url) as client:
        raw = client.responses.with_raw_response.create(model="m", input="Hello")
        assert raw.http_response.content == json.dumps(allowed).encode()
        assert raw.parse().output_text == "A fine answer."
        with pytest.raises(openai.BadRequestError) as caught:
            client.responses.create(model="m", input="Hello")
    assert caught.value.code == "content_blocked"
    assert [r["action"] for r in proxy.decisions()] == ["allow", "block"]


def test_keys_are_required_and_checked(make_proxy: ProxyFactory, upstream: OpenAIServer) -> None:
    proxy = make_proxy()
    with (
        sdk(proxy.base_url, key="wrong") as client,
        pytest.raises(openai.AuthenticationError) as caught,
    ):
        client.chat.completions.create(model="m", messages=USER)
    assert caught.value.code == "invalid_api_key"
    missing = httpx.post(f"{proxy.base_url}/chat/completions", json={"messages": USER})
    assert missing.status_code == 401
    assert missing.json()["error"]["code"] == "missing_api_key"
    assert upstream.requests == []  # nobody unknown reaches the upstream
    # The second key works, under its own name.
    upstream.enqueue(ScriptedResponse.json(chat_completion("ok")))
    with sdk(proxy.base_url, key=OTHER_KEY) as client:
        client.chat.completions.create(model="m", messages=USER)
    assert [r["action"] for r in proxy.decisions()] == ["allow"]


@pytest.mark.parametrize(
    ("body", "content_type", "code"),
    [
        (b"{not json", "application/json", "invalid_json"),
        (b"[1, 2]", "application/json", "invalid_json"),
        (b'{"model": "m", "messages": "hi"}', "application/json", "invalid_body"),
        (b'{"model": "m", "messages": [], "stream": "yes"}', "application/json", "invalid_body"),
        (b'{"model": "m", "messages": []}', "text/plain", "unsupported_media_type"),
    ],
)
def test_malformed_requests_get_a_400_style_error(
    make_proxy: ProxyFactory, upstream: OpenAIServer, body: bytes, content_type: str, code: str
) -> None:
    proxy = make_proxy()
    response = httpx.post(
        f"{proxy.base_url}/chat/completions",
        content=body,
        headers={"authorization": f"Bearer {CLIENT_KEY}", "content-type": content_type},
    )
    assert response.status_code in (400, 415)
    error = response.json()["error"]
    assert error["code"] == code
    assert set(error) >= {"message", "type", "param", "code"}
    assert upstream.requests == []


def test_body_size_limit(make_proxy: ProxyFactory, upstream: OpenAIServer) -> None:
    proxy = make_proxy(serve={"limits": {"max_body_bytes": 1000}})
    big = {"model": "m", "messages": [{"role": "user", "content": "x" * 2000}]}
    with sdk(proxy.base_url) as client, pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(**big)
    assert caught.value.status_code == 413
    assert caught.value.code == "request_too_large"
    assert upstream.requests == []


def test_auditor_down_is_the_policys_error_action_never_a_pass(
    make_proxy: ProxyFactory, upstream: OpenAIServer
) -> None:
    proxy = make_proxy(auditor_url="http://127.0.0.1:9/v1")  # nothing listens on port 9
    upstream.enqueue(ScriptedResponse.json(chat_completion("An innocent answer.")))
    with sdk(proxy.base_url) as client, pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(model="m", messages=USER)
    assert caught.value.status_code == 503
    assert caught.value.code == "audit_unavailable"
    assert "An innocent answer." not in caught.value.response.text
    [record] = proxy.decisions()
    assert record["status"] == "auditor_error"
    assert record["action"] == "block"


def test_escalation_goes_to_the_review_queue_with_its_id(
    make_proxy: ProxyFactory, upstream: OpenAIServer
) -> None:
    from traceguard.review import EscalationStore

    proxy = make_proxy(policy={"harmful": "escalate"}, review=True)
    upstream.enqueue(ScriptedResponse.json(chat_completion(f"Maybe: {HARMFUL}")))
    with sdk(proxy.base_url) as client, pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="m", messages=USER)
    error = caught.value
    assert error.code == "content_escalated"
    escalation_id = error.response.headers["x-traceguard-escalation-id"]
    assert escalation_id in error.message
    assert error.response.headers["x-traceguard-action"] == "escalate"
    assert error.response.headers["x-traceguard-disposition"] == "block"
    proxy.proxy.guard.flush(5)
    store = EscalationStore(proxy.config_path.parent / "review.sqlite")
    try:
        item = store.get(escalation_id)
        assert item is not None
        assert item.integration == "proxy"
        assert item.model == "m"
    finally:
        store.close()


def test_upstream_errors_pass_through(make_proxy: ProxyFactory, upstream: OpenAIServer) -> None:
    proxy = make_proxy()
    upstream.enqueue(ScriptedResponse.error(429, "slow down", headers={"Retry-After": "7"}))
    with sdk(proxy.base_url) as client, pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model="m", messages=USER)
    assert caught.value.response.headers["retry-after"] == "7"
    assert proxy.decisions() == []  # no output, nothing to audit


def test_unreadable_upstream_answer_is_refused(
    make_proxy: ProxyFactory, upstream: OpenAIServer
) -> None:
    proxy = make_proxy()
    upstream.enqueue(ScriptedResponse.json({"choices": "nope", "text": "raw output"}))
    with sdk(proxy.base_url) as client, pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(model="m", messages=USER)
    assert caught.value.status_code == 502
    assert caught.value.code == "upstream_unreadable"
    assert "raw output" not in caught.value.response.text


def test_other_endpoints_pass_through_or_are_refused(
    make_proxy: ProxyFactory, upstream: OpenAIServer
) -> None:
    proxy = make_proxy()
    models: dict[str, Any] = {"object": "list", "data": [{"id": "m", "object": "model"}]}
    upstream.enqueue(ScriptedResponse.json(models), path="/v1/models")
    with sdk(proxy.base_url) as client:
        listed = client.models.list()
        assert [m.id for m in listed.data] == ["m"]
        assert upstream.requests[-1].headers["authorization"] == f"Bearer {UPSTREAM_KEY}"
        with pytest.raises(openai.NotFoundError) as caught:
            client.completions.create(model="m", prompt="legacy completions are not guarded")
    assert caught.value.code == "endpoint_not_guarded"
    assert len(upstream.requests) == 1
