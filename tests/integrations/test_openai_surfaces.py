"""No silent bypass: every way of reaching Chat Completions or the Responses API is audited.

The real ``openai`` SDK, sync and async, against the loopback server. The upstream answers carry
a marker (``HARM-7``) that the scripted auditor grades harmful wherever it appears; each surface
must either refuse the call or hand back an object of its usual type in which the marker does
not appear. ``parse``, the ``stream`` helpers, ``with_raw_response``, ``with_streaming_response``,
derived clients, strict mode and the decisions on results are covered here; plain ``create`` in
``test_openai_wrapper.py`` and ``test_openai_streams.py``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from _openai_support import call
from openai.types.chat import ParsedChatCompletion
from openai.types.responses import ParsedResponse
from pydantic import BaseModel

from traceguard import Action, Blocked, Guard, Policy, Trace
from traceguard.integrations.openai import (
    GuardedAsyncStream,
    GuardedStream,
    UnauditedCallError,
    decisions_of,
    guard_openai,
    last_decision,
)
from traceguard.testing import ScriptedAuditor, Step
from traceguard.testing.openai_server import (
    OpenAIServer,
    ScriptedResponse,
    chat_completion,
    chat_completion_chunks,
    responses_events,
    responses_response,
)

HARM = "HARM-7"
USER = [{"role": "user", "content": "Tell me something."}]
REFUSAL = "Declined by policy."


class Answer(BaseModel):
    text: str


def grade(trace: Trace) -> Step:
    """Harmful wherever the marker shows; thinking marked RISKY is potentially harmful."""
    seen = f"{trace.thinking or ''}\n{trace.response_with_tools}"
    if HARM in seen:
        return Step(risk=1.0)
    return Step(risk=0.5 if "RISKY" in (trace.thinking or "") else 0.0)


def guarded(client: Any, **options: Any) -> ScriptedAuditor:
    auditor = ScriptedAuditor(rule=grade)
    guard_openai(client, Guard(auditor, Policy()), **options)
    return auditor


def chat(server: OpenAIServer, content: str | None, **kwargs: Any) -> None:
    server.enqueue(ScriptedResponse.json(chat_completion(content, **kwargs)))


def chat_sse(server: OpenAIServer, content: str, **kwargs: Any) -> None:
    server.enqueue(ScriptedResponse.sse(chat_completion_chunks(content, **kwargs)))


def responses(server: OpenAIServer, text: str, **kwargs: Any) -> None:
    server.enqueue(ScriptedResponse.json(responses_response(text, **kwargs)), path="/v1/responses")


def responses_sse(server: OpenAIServer, text: str, **kwargs: Any) -> None:
    server.enqueue(
        ScriptedResponse.sse(responses_events(text, **kwargs), done=False), path="/v1/responses"
    )


async def events_of(manager: Any) -> tuple[list[Any], Any]:
    """Every event of a stream helper (sync or async), and its final object."""
    if hasattr(manager, "__aenter__"):
        async with manager as stream:
            events = [event async for event in stream]
            final = (
                stream.get_final_completion
                if hasattr(stream, "get_final_completion")
                else (stream.get_final_response)
            )
            return events, await final()
    with manager as stream:
        events = list(stream)
        final = getattr(stream, "get_final_completion", None) or stream.get_final_response
        return events, final()


# -- chat.completions.parse / responses.parse -------------------------------------------------


async def test_chat_parse_allowed_keeps_its_parsed_type(server: OpenAIServer, client: Any) -> None:
    auditor = guarded(client)
    chat(server, '{"text": "Bread needs flour."}', reasoning_content="A baking question.")
    result = await call(
        client.chat.completions.parse, model="m", messages=USER, response_format=Answer
    )
    assert isinstance(result, ParsedChatCompletion)
    assert result.choices[0].message.parsed == Answer(text="Bread needs flour.")
    assert auditor.seen[0].thinking == "A baking question."
    (decision,) = decisions_of(result)
    assert decision.action is Action.ALLOW
    # (warnings=False: the SDK's own generic ``parsed`` field warns when serialised)
    assert "traceguard" not in result.model_dump_json(warnings=False)


async def test_chat_parse_harmful_raises_or_refuses_in_the_refusal_field(
    server: OpenAIServer, client: Any
) -> None:
    guarded(client)
    chat(server, f'{{"text": "{HARM}"}}')
    with pytest.raises(Blocked):
        await call(client.chat.completions.parse, model="m", messages=USER, response_format=Answer)

    client_refusing = client.copy()
    from traceguard.integrations.openai import unguard_openai

    unguard_openai(client_refusing)
    guarded(client_refusing, on_block="refusal", refusal=REFUSAL)
    chat(server, f'{{"text": "{HARM}"}}')
    result = await call(
        client_refusing.chat.completions.parse, model="m", messages=USER, response_format=Answer
    )
    message = result.choices[0].message
    assert isinstance(result, ParsedChatCompletion)
    assert (message.parsed, message.content, message.refusal) == (None, None, REFUSAL)
    assert HARM not in result.model_dump_json(warnings=False)


async def test_chat_parse_redaction_drops_the_thinking_and_still_parses(
    server: OpenAIServer, client: Any
) -> None:
    guarded(client)
    chat(server, '{"text": "fine"}', reasoning_content="RISKY plan")
    result = await call(
        client.chat.completions.parse, model="m", messages=USER, response_format=Answer
    )
    assert result.choices[0].message.parsed == Answer(text="fine")
    assert "RISKY" not in result.model_dump_json(warnings=False)
    assert decisions_of(result)[0].action is Action.REDACT


async def test_responses_parse_allowed_blocked_and_refused(
    server: OpenAIServer, client: Any
) -> None:
    guarded(client)
    responses(server, '{"text": "ok"}', reasoning_summary="Simple.")
    allowed = await call(client.responses.parse, model="m", input="q", text_format=Answer)
    assert isinstance(allowed, ParsedResponse)
    assert allowed.output_parsed == Answer(text="ok")
    assert decisions_of(allowed)[0].action is Action.ALLOW

    responses(server, f'{{"text": "{HARM}"}}')
    with pytest.raises(Blocked):
        await call(client.responses.parse, model="m", input="q", text_format=Answer)

    refusing = client.copy()
    from traceguard.integrations.openai import unguard_openai

    unguard_openai(refusing)
    guarded(refusing, on_block="refusal", refusal=REFUSAL)
    responses(server, f'{{"text": "{HARM}"}}')
    refused = await call(refusing.responses.parse, model="m", input="q", text_format=Answer)
    assert isinstance(refused, ParsedResponse)
    assert refused.output_parsed is None
    assert [part.type for part in refused.output[-1].content] == ["refusal"]
    assert HARM not in refused.model_dump_json(warnings=False)


# -- stream helpers -----------------------------------------------------------------------------


async def test_chat_stream_helper_keeps_its_event_api(server: OpenAIServer, client: Any) -> None:
    guarded(client)
    chat_sse(server, "Hello there.", reasoning_content="Plain greeting.")
    events, final = await events_of(client.chat.completions.stream(model="m", messages=USER))
    assert "content.delta" in [e.type for e in events]
    assert final.choices[0].message.content == "Hello there."
    decision = last_decision()
    assert decision is not None and decision.action is Action.ALLOW


async def test_chat_stream_helper_never_shows_a_harmful_answer(
    server: OpenAIServer, client: Any
) -> None:
    guarded(client)
    chat_sse(server, f"Here it is: {HARM}.")
    seen: list[Any] = []
    with pytest.raises(Blocked):
        manager = client.chat.completions.stream(model="m", messages=USER)
        if hasattr(manager, "__aenter__"):
            async with manager as stream:
                async for event in stream:
                    seen.append(event)
        else:
            with manager as stream:
                seen.extend(stream)
    assert HARM not in repr(seen)
    decision = last_decision()
    assert decision is not None and decision.blocked


async def test_structured_stream_refusal_goes_in_the_refusal_field(
    server: OpenAIServer, client: Any
) -> None:
    guarded(client, on_block="refusal", refusal=REFUSAL)
    chat_sse(server, f'{{"text": "{HARM}"}}')
    manager = client.chat.completions.stream(model="m", messages=USER, response_format=Answer)
    events, final = await events_of(manager)  # no ContentFilterFinishReasonError, no parse error
    message = final.choices[0].message
    assert (message.refusal, message.parsed) == (REFUSAL, None)
    assert HARM not in repr(events)


async def test_responses_stream_helper_allow_block_and_refusal(
    server: OpenAIServer, client: Any
) -> None:
    guarded(client)
    responses_sse(server, "Four.", reasoning_summary="Two and two.")
    events, final = await events_of(client.responses.stream(model="m", input="2+2?"))
    assert events[-1].type == "response.completed"
    assert final.output_text == "Four."

    responses_sse(server, f"Do {HARM}.")
    with pytest.raises(Blocked):
        await events_of(client.responses.stream(model="m", input="q"))

    refusing = client.copy()
    from traceguard.integrations.openai import unguard_openai

    unguard_openai(refusing)
    guarded(refusing, on_block="refusal", refusal=REFUSAL)
    responses_sse(server, f"Do {HARM}.", reasoning_summary="Plan.")
    events, final = await events_of(refusing.responses.stream(model="m", input="q"))
    assert final.output_text == REFUSAL
    assert [e.type for e in events][:2] == ["response.created", "response.output_item.added"]
    assert HARM not in repr(events)


# -- with_raw_response / with_streaming_response ----------------------------------------------


async def test_raw_response_is_the_sdk_wrapper_over_the_audited_body(
    server: OpenAIServer, client: Any
) -> None:
    auditor = guarded(client)
    chat(server, "Knead it.", reasoning_content="RISKY musing")
    raw = await call(client.chat.completions.with_raw_response.create, model="m", messages=USER)
    assert type(raw).__name__ == "LegacyAPIResponse"
    assert "RISKY" not in raw.http_response.text  # the bytes themselves are the audited answer
    parsed = await call(raw.parse)
    assert type(parsed) is openai.types.chat.ChatCompletion
    assert parsed.choices[0].message.content == "Knead it."
    assert "RISKY" not in parsed.model_dump_json()
    assert [d.action for d in decisions_of(raw)] == [Action.REDACT]
    assert [d.action for d in decisions_of(parsed)] == [Action.REDACT]
    assert auditor.seen[0].thinking == "RISKY musing"

    chat(server, f"Sure: {HARM}")
    with pytest.raises(Blocked):
        await call(client.chat.completions.with_raw_response.create, model="m", messages=USER)


async def test_raw_streamed_body_is_audited_as_bytes(server: OpenAIServer, client: Any) -> None:
    guarded(client)
    chat_sse(server, "All fine here.")
    raw = await call(
        client.chat.completions.with_raw_response.create, model="m", messages=USER, stream=True
    )
    stream = await call(raw.parse)
    chunks = [c async for c in stream] if isinstance(stream, openai.AsyncStream) else list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == (
        "All fine here."
    )
    assert [d.action for d in decisions_of(raw)] == [Action.ALLOW]

    chat_sse(server, f"Sure: {HARM}")
    raw = await call(
        client.chat.completions.with_raw_response.create, model="m", messages=USER, stream=True
    )
    stream = await call(raw.parse)
    shown: list[Any] = []
    with pytest.raises(Blocked):
        if isinstance(stream, openai.AsyncStream):
            async for chunk in stream:
                shown.append(chunk)
        else:
            shown.extend(stream)
    assert HARM not in repr(shown)


async def test_streaming_response_reads_only_audited_bytes(
    server: OpenAIServer, client: Any, flavor: str
) -> None:
    guarded(client, on_block="refusal", refusal=REFUSAL)
    chat(server, f"Sure: {HARM}")
    manager = client.chat.completions.with_streaming_response.create(model="m", messages=USER)
    if flavor == "sync":
        with manager as response:
            body = response.json()
            parsed = response.parse()
    else:
        async with manager as response:
            body = await response.json()
            parsed = await response.parse()
    assert body["choices"][0]["message"]["content"] == REFUSAL
    assert parsed.choices[0].message.content == REFUSAL
    assert decisions_of(response)[0].blocked

    chat_sse(server, f"Sure: {HARM}")
    manager = client.chat.completions.with_streaming_response.create(
        model="m", messages=USER, stream=True
    )
    if flavor == "sync":
        with manager as response:
            lines = list(response.iter_lines())
    else:
        async with manager as response:
            lines = [line async for line in response.iter_lines()]
    text = "\n".join(lines)
    assert HARM not in text
    assert REFUSAL in text and [line for line in lines if line][-1] == "data: [DONE]"


async def test_responses_raw_access_is_audited(server: OpenAIServer, client: Any) -> None:
    guarded(client)
    responses(server, f"Do {HARM}.")
    with pytest.raises(Blocked):
        await call(client.responses.with_raw_response.create, model="m", input="q")
    responses(server, "Fine.")
    raw = await call(client.responses.with_raw_response.create, model="m", input="q")
    parsed = await call(raw.parse)
    assert parsed.output_text == "Fine."


async def test_client_post_is_audited(server: OpenAIServer, client: Any) -> None:
    guarded(client)
    chat(server, f"Sure: {HARM}")
    with pytest.raises(Blocked):
        await call(
            client.post,
            "/chat/completions",
            cast_to=openai.types.chat.ChatCompletion,
            body={"model": "m", "messages": USER},
        )


# -- derived clients ----------------------------------------------------------------------------


async def test_with_options_and_copy_stay_guarded(server: OpenAIServer, client: Any) -> None:
    auditor = ScriptedAuditor(rule=grade)
    guard = Guard(auditor)
    handle = guard_openai(client, guard, on_block="refusal", refusal=REFUSAL, strict=True)
    derived = [client.with_options(timeout=5), client.copy(max_retries=1)]
    for other in derived:
        chat(server, f"Sure: {HARM}")
        result = await call(other.chat.completions.create, model="m", messages=USER)
        assert result.choices[0].message.content == REFUSAL
    assert [h.client for h in handle.derived] == derived
    assert all(
        h.guard is guard and h.options == handle.options and h.strict for h in handle.derived
    )
    grandchild = derived[0].with_options(max_retries=0)
    chat(server, f"Sure: {HARM}")
    result = await call(grandchild.chat.completions.create, model="m", messages=USER)
    assert result.choices[0].message.content == REFUSAL

    handle.restore()
    assert not any(h.active for h in handle.derived) and handle.derived == []
    chat(server, f"Sure: {HARM}")
    result = await call(derived[0].chat.completions.create, model="m", messages=USER)
    assert HARM in result.choices[0].message.content  # restored: the caller's own client again


# -- strict and unaudited surfaces --------------------------------------------------------------


async def test_strict_refuses_unaudited_calls_before_they_are_sent(
    server: OpenAIServer, client: Any
) -> None:
    guarded(client, strict=True)
    with pytest.raises(UnauditedCallError, match="POST /completions"):
        await call(client.completions.create, model="m", prompt="hi")
    with pytest.raises(UnauditedCallError, match="GET /responses/"):
        await call(client.responses.retrieve, "resp_abc123")
    with pytest.raises(UnauditedCallError, match="WebSocket"):
        client.realtime.connect(model="m")
    assert server.requests == []  # nothing reached the upstream

    server.enqueue(ScriptedResponse.json({"object": "list", "data": []}), path="/v1/models")
    models = await call(client.models.list)  # no generated content: allowed
    assert [m async for m in models] == [] if hasattr(models, "__aiter__") else list(models) == []


async def test_without_strict_unaudited_calls_pass_with_one_warning(
    server: OpenAIServer, client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="traceguard.integrations.openai"):
        guarded(client)
        assert "WebSocket sessions" in caplog.text and "realtime.connect" in caplog.text
        legacy = {
            "id": "cmpl-1",
            "object": "text_completion",
            "created": 0,
            "model": "m",
            "choices": [{"index": 0, "text": "x", "finish_reason": "stop", "logprobs": None}],
        }
        for _ in range(2):
            server.enqueue(ScriptedResponse.json(legacy), path="/v1/completions")
            await call(client.completions.create, model="m", prompt="hi")
    warnings = [r for r in caplog.records if "POST /completions is not audited" in r.message]
    assert len(warnings) == 1
    assert "strict=True" in warnings[0].message


# -- decisions on results -------------------------------------------------------------------


async def test_decisions_ride_on_the_sdk_objects(server: OpenAIServer, client: Any) -> None:
    guarded(client)
    chat(server, "Hi.", reasoning_content="Greeting.")
    result = await call(client.chat.completions.create, model="m", messages=USER)
    assert type(result) is openai.types.chat.ChatCompletion
    assert [d.action for d in result.traceguard_decisions] == [Action.ALLOW]
    assert "traceguard" not in result.model_dump_json()
    assert result == openai.types.chat.ChatCompletion.model_validate(result.model_dump())

    chat_sse(server, "Hi.")
    stream = await call(client.chat.completions.create, model="m", messages=USER, stream=True)
    assert isinstance(stream, GuardedStream | GuardedAsyncStream)
    if isinstance(stream, openai.AsyncStream):
        [c async for c in stream]
    else:
        list(stream)
    assert [d.action for d in decisions_of(stream)] == [Action.ALLOW]


async def test_hidden_reasoning_is_named_once_with_the_fix(
    server: OpenAIServer, client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    guarded(client)
    payload = chat_completion("The answer is 4.")
    payload["usage"]["completion_tokens_details"] = {"reasoning_tokens": 512}
    with caplog.at_level(logging.WARNING, logger="traceguard.integrations.openai"):
        for _ in range(2):
            server.enqueue(ScriptedResponse.json(payload))
            await call(client.chat.completions.create, model="m", messages=USER)
    hidden = [r for r in caplog.records if "reasoning tokens" in r.message]
    assert len(hidden) == 1
    assert "512" in hidden[0].message and "--reasoning-parser" in hidden[0].message
    assert "<think>" in hidden[0].message


async def test_exposed_reasoning_gives_no_warning(
    server: OpenAIServer, client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    guarded(client)
    payload = chat_completion("4.", reasoning_content="2+2")
    payload["usage"]["completion_tokens_details"] = {"reasoning_tokens": 3}
    server.enqueue(ScriptedResponse.json(payload))
    with caplog.at_level(logging.WARNING, logger="traceguard.integrations.openai"):
        await call(client.chat.completions.create, model="m", messages=USER)
    assert "reasoning tokens" not in caplog.text


# -- last_decision under concurrency ------------------------------------------------------------


def _echo(request: Any) -> ScriptedResponse:
    """Answers ``n`` with a harmful text for odd ``n``, a safe one for even ``n``."""
    n = int(request.json["messages"][-1]["content"])
    return ScriptedResponse.json(
        chat_completion(f"{HARM} {n}" if n % 2 else f"fine {n}"), delay_s=0.01 * (n % 3)
    )


@pytest.fixture
def echo(server: OpenAIServer) -> Iterator[None]:
    server.responder = _echo
    yield
    server.responder = None


def test_last_decision_is_per_thread(server: OpenAIServer, echo: None) -> None:
    import threading

    client = openai.OpenAI(base_url=server.base_url, api_key="test", max_retries=0)
    guarded(client, on_block="refusal", refusal=REFUSAL)
    barrier = threading.Barrier(8)
    seen: dict[int, tuple[Action, str]] = {}

    def run(n: int) -> None:
        barrier.wait()
        result = client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": str(n)}]
        )
        decision = last_decision()
        assert decision is not None
        seen[n] = (decision.disposition, result.choices[0].message.content)

    threads = [threading.Thread(target=run, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    client.close()
    assert seen == {
        n: (Action.BLOCK, REFUSAL) if n % 2 else (Action.ALLOW, f"fine {n}") for n in range(8)
    }


async def test_last_decision_is_per_task(server: OpenAIServer, echo: None) -> None:
    import asyncio

    client = openai.AsyncOpenAI(base_url=server.base_url, api_key="test", max_retries=0)
    guarded(client, on_block="refusal", refusal=REFUSAL)
    before = last_decision()

    async def run(n: int) -> tuple[Action, str]:
        result = await client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": str(n)}]
        )
        await asyncio.sleep(0.01 * ((n + 1) % 3))  # let the other tasks finish their calls
        decision = last_decision()
        assert decision is not None
        return decision.disposition, result.choices[0].message.content

    results = await asyncio.gather(*(run(n) for n in range(8)))
    await client.close()
    assert results == [
        (Action.BLOCK, REFUSAL) if n % 2 else (Action.ALLOW, f"fine {n}") for n in range(8)
    ]
    assert last_decision() is before  # the tasks' contexts are their own
