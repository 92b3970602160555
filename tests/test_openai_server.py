"""The loopback server speaks OpenAI well enough for the real ``openai`` SDK and raw httpx."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator

import httpx
import openai
import pytest

from traceguard.testing.openai_server import (
    OpenAIServer,
    RecordedRequest,
    ScriptedResponse,
    SSEEvent,
    chat_completion,
    chat_completion_chunks,
    guardtrace_output,
    responses_events,
    responses_response,
    top_logprobs_completion,
)


@pytest.fixture
def server() -> Iterator[OpenAIServer]:
    with OpenAIServer() as srv:
        yield srv


def _client(server: OpenAIServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key="sk-test", max_retries=0)


def test_chat_completion_parsed_by_sdk(server: OpenAIServer) -> None:
    server.enqueue(
        ScriptedResponse.json(
            chat_completion(
                "the answer",
                reasoning_content="think A",
                tool_calls=[{"name": "search", "arguments": {"q": "x"}}],
            )
        )
    )
    client = _client(server)
    out = client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "hi"}], temperature=0
    )
    message = out.choices[0].message
    assert message.content == "the answer"
    assert message.model_extra is not None
    assert message.model_extra["reasoning_content"] == "think A"
    assert message.tool_calls is not None
    call = message.tool_calls[0]
    assert call.type == "function"
    assert call.function.name == "search"
    assert json.loads(call.function.arguments) == {"q": "x"}
    assert out.usage is not None and out.usage.total_tokens > 0
    (request,) = server.requests
    assert request.method == "POST"
    assert request.path == "/v1/chat/completions"
    assert request.headers["authorization"] == "Bearer sk-test"
    assert request.json["messages"] == [{"role": "user", "content": "hi"}]
    client.close()


def test_chat_stream_parsed_by_sdk(server: OpenAIServer) -> None:
    chunks = chat_completion_chunks(
        "final answer text",
        reasoning=["step one, ", "step two"],
        tool_calls=[{"name": "lookup", "arguments": '{"id": 7}', "id": "call_x"}],
        chunk_size=5,
    )
    server.enqueue(ScriptedResponse.sse(chunks))
    client = _client(server)
    stream = client.chat.completions.create(
        model="m",
        messages=[{"role": "user", "content": "hi"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    content, reasoning, args, names, finish = [], [], [], [], None
    usage = None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            delta = choice.delta
            content.append(delta.content or "")
            reasoning.append((delta.model_extra or {}).get("reasoning") or "")
            for call in delta.tool_calls or ():
                if call.function is not None:
                    names.append(call.function.name or "")
                    args.append(call.function.arguments or "")
            finish = choice.finish_reason or finish
    assert "".join(content) == "final answer text"
    assert "".join(reasoning) == "step one, step two"
    assert "".join(names) == "lookup"
    assert json.loads("".join(args)) == {"id": 7}
    assert finish == "tool_calls"
    assert usage is not None and usage.completion_tokens > 0
    client.close()


def test_responses_plain_parsed_by_sdk(server: OpenAIServer) -> None:
    server.enqueue(
        ScriptedResponse.json(responses_response("the output", reasoning_summary="my summary")),
        path="/v1/responses",
    )
    client = _client(server)
    out = client.responses.create(model="m", input="hi")
    assert out.output_text == "the output"
    reasoning = [item for item in out.output if item.type == "reasoning"]
    assert reasoning[0].summary[0].text == "my summary"
    assert server.requests[0].path == "/v1/responses"
    client.close()


def test_responses_stream_parsed_by_sdk(server: OpenAIServer) -> None:
    events = responses_events(
        "streamed output",
        reasoning_summary="streamed summary",
        tool_calls=[{"name": "f", "arguments": {"a": 1}}],
        chunk_size=4,
    )
    server.enqueue(ScriptedResponse.sse(events, done=False))
    client = _client(server)
    text, summary, kinds = [], [], []
    final = None
    for event in client.responses.create(model="m", input="hi", stream=True):
        kinds.append(event.type)
        if event.type == "response.output_text.delta":
            text.append(event.delta)
        elif event.type == "response.reasoning_summary_text.delta":
            summary.append(event.delta)
        elif event.type == "response.completed":
            final = event.response
    assert "".join(text) == "streamed output"
    assert "".join(summary) == "streamed summary"
    assert kinds[0] == "response.created"
    assert kinds[-1] == "response.completed"
    assert "response.function_call_arguments.delta" in kinds
    assert final is not None and final.output_text == "streamed output"
    client.close()


def test_responses_stream_helper_accumulates(server: OpenAIServer) -> None:
    # The SDK's higher-level stream helper rebuilds the response from the events themselves,
    # which checks that the event sequence is coherent, not just individually parseable.
    server.enqueue(ScriptedResponse.sse(responses_events("abc def", chunk_size=2), done=False))
    client = _client(server)
    with client.responses.stream(model="m", input="hi") as stream:
        for _ in stream:
            pass
        final = stream.get_final_response()
    assert final.output_text == "abc def"
    client.close()


async def test_async_sdk_and_logprobs(server: OpenAIServer) -> None:
    server.enqueue(ScriptedResponse.json(top_logprobs_completion({"0": -0.1, "1": -2.5})))
    client = openai.AsyncOpenAI(base_url=server.base_url, api_key="x", max_retries=0)
    out = await client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "hi"}], logprobs=True, top_logprobs=2
    )
    assert out.choices[0].message.content == "0"
    assert out.choices[0].logprobs is not None
    content = out.choices[0].logprobs.content
    assert content is not None
    top = {t.token: t.logprob for t in content[0].top_logprobs}
    assert top == {"0": -0.1, "1": -2.5}
    await client.close()


def test_sdk_sees_status_errors(server: OpenAIServer) -> None:
    server.enqueue(ScriptedResponse.error(429, "slow down", headers={"Retry-After": "0"}))
    client = _client(server)
    with pytest.raises(openai.RateLimitError) as info:
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
    assert info.value.response.headers["retry-after"] == "0"
    assert "slow down" in str(info.value)
    client.close()


def test_per_path_queue_before_shared_queue(server: OpenAIServer) -> None:
    server.enqueue(ScriptedResponse.json({"n": "shared"}))
    server.enqueue(ScriptedResponse.json({"n": "models"}), path="/v1/models")
    with httpx.Client(base_url=server.url) as http:
        assert http.post("/v1/chat/completions", json={}).json() == {"n": "shared"}
        assert http.get("/v1/models").json() == {"n": "models"}
        unscripted = http.get("/v1/other")
    assert unscripted.status_code == 500
    assert [r.path for r in server.unexpected] == ["/v1/other"]
    assert server.pending == 0


def test_responder_and_keep_alive(server: OpenAIServer) -> None:
    seen_ports: set[int] = set()

    def echo(request: RecordedRequest) -> ScriptedResponse:
        return ScriptedResponse.json({"echo": request.json, "q": request.query})

    server.responder = echo
    with httpx.Client(base_url=server.url) as http:
        for i in range(3):
            response = http.post("/v1/x?a=1", json={"i": i}, extensions={})
            assert response.json() == {"echo": {"i": i}, "q": "a=1"}
            stream = response.extensions.get("network_stream")
            if stream is not None:
                seen_ports.add(stream.get_extra_info("client_addr")[1])
    # One pooled connection served all three requests (HTTP/1.1 keep-alive).
    assert len(seen_ports) <= 1


def test_malformed_and_dropped(server: OpenAIServer) -> None:
    server.enqueue(ScriptedResponse.malformed(), ScriptedResponse.dropped())
    with httpx.Client(base_url=server.url) as http:
        response = http.post("/v1/chat/completions", json={})
        with pytest.raises(json.JSONDecodeError):
            response.json()
        with pytest.raises(httpx.RemoteProtocolError):
            http.post("/v1/chat/completions", json={})


def test_dropped_mid_stream_is_an_error(server: OpenAIServer) -> None:
    server.enqueue(
        ScriptedResponse.sse(chat_completion_chunks("abcdefgh", chunk_size=1), drop_after=3)
    )
    client = _client(server)
    received = []
    with pytest.raises(openai.APIConnectionError):
        for chunk in client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "x"}], stream=True
        ):
            received.append(chunk)
    assert len(received) == 3
    client.close()


def test_sse_event_names_and_multiline_data() -> None:
    encoded = SSEEvent("a\nb", event="thing").encode()
    assert encoded == b"event: thing\ndata: a\ndata: b\n\n"


def test_delay_and_event_delay(server: OpenAIServer) -> None:
    events = [{"i": 0}, {"i": 1}]
    server.enqueue(ScriptedResponse.sse(events, event_delay_s=0.1, delay_s=0.1))
    started = time.perf_counter()
    with httpx.Client(base_url=server.url) as http:
        body = http.post("/v1/chat/completions", json={}).text
    elapsed = time.perf_counter() - started
    assert elapsed >= 0.29
    assert body.count("data: ") == 3  # two events and [DONE]


def test_fixed_delay_mode_overlaps_requests() -> None:
    with OpenAIServer(fixed_delay_s=0.2) as srv:
        results: list[str] = []
        limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
        http = httpx.Client(limits=limits, timeout=10)

        def call() -> None:
            reply = http.post(f"{srv.base_url}/chat/completions", json={"model": "g"})
            results.append(reply.json()["choices"][0]["message"]["content"])

        threads = [threading.Thread(target=call) for _ in range(64)]
        started = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - started
        http.close()
        assert results == [guardtrace_output()] * 64
        # 64 concurrent connections at 0.2 s each: serialised would take 12.8 s.
        assert elapsed < 2.0
        assert srv.max_in_flight >= 32


def test_close_wakes_delayed_answers() -> None:
    srv = OpenAIServer().start()
    srv.enqueue(ScriptedResponse.json({}, delay_s=30))
    errors: list[BaseException] = []

    def call() -> None:
        try:
            httpx.post(f"{srv.base_url}/chat/completions", json={}, timeout=10)
        except httpx.HTTPError as exc:
            errors.append(exc)

    thread = threading.Thread(target=call)
    thread.start()
    while srv.in_flight == 0:
        time.sleep(0.01)
    started = time.perf_counter()
    srv.close()
    thread.join(5)
    assert time.perf_counter() - started < 2
    assert len(errors) == 1
    with pytest.raises(RuntimeError):
        _ = srv.port
