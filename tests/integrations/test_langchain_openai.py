"""langchain-openai's ChatOpenAI against the loopback OpenAI-compatible server.

Documents what the integration sees from ``ChatOpenAI``: it drops ``reasoning_content`` (so the
audit has no thinking), while ``<think>`` tags in the content and Responses API reasoning
summaries come through; ``ReasoningChatOpenAI`` keeps the reasoning fields for the audit.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("langchain_core")
pytest.importorskip("langchain_openai")

from langchain_openai import ChatOpenAI
from pydantic import SecretStr

from traceguard import Blocked, Guard
from traceguard.integrations.langchain import (
    ReasoningChatOpenAI,
    TraceguardCallbackHandler,
    guard_runnable,
)
from traceguard.testing import ScriptedAuditor
from traceguard.testing.openai_server import (
    OpenAIServer,
    ScriptedResponse,
    chat_completion,
    chat_completion_chunks,
    responses_response,
)


@pytest.fixture
def server() -> Iterator[OpenAIServer]:
    with OpenAIServer() as srv:
        yield srv
        assert srv.unexpected == []


def chat(server: OpenAIServer, **kwargs: Any) -> ChatOpenAI:
    return ChatOpenAI(
        model="m", base_url=server.base_url, api_key=SecretStr("x"), max_retries=0, **kwargs
    )


def test_chat_openai_drops_reasoning_content_so_the_audit_has_no_thinking(
    server: OpenAIServer,
) -> None:
    server.enqueue(
        ScriptedResponse.json(chat_completion("Paris.", reasoning_content="the capital is Paris"))
    )
    auditor = ScriptedAuditor([0])
    model = chat(server)
    reply = model.invoke(
        "Capital of France?", config={"callbacks": [TraceguardCallbackHandler(Guard(auditor))]}
    )
    assert reply.content == "Paris."
    assert "reasoning_content" not in reply.additional_kwargs
    (trace,) = auditor.seen
    assert (trace.query, trace.thinking, trace.response) == ("Capital of France?", None, "Paris.")
    assert trace.model == "m"


def test_chat_openai_stream_is_stopped_by_the_handler(server: OpenAIServer) -> None:
    server.enqueue(
        ScriptedResponse.sse(chat_completion_chunks("<think>plan</think>do the harmful thing"))
    )
    auditor = ScriptedAuditor([1])
    model = chat(server)
    with pytest.raises(Blocked):
        for _ in model.stream(
            "q", config={"callbacks": [TraceguardCallbackHandler(Guard(auditor))]}
        ):
            pass
    assert auditor.seen[0].thinking == "plan"
    assert auditor.seen[0].response == "do the harmful thing"


def test_think_tags_kept_in_content_are_audited_and_redacted(server: OpenAIServer) -> None:
    server.enqueue(ScriptedResponse.json(chat_completion("<think>private plan</think>\nDone.")))
    auditor = ScriptedAuditor([0.5, 0])  # the redaction, then its check
    reply = guard_runnable(chat(server), Guard(auditor)).invoke("q")
    assert auditor.seen[0].thinking == "private plan"
    assert reply.content == "Done."


def test_responses_api_reasoning_summaries_are_audited_and_redacted(server: OpenAIServer) -> None:
    server.enqueue(
        ScriptedResponse.json(responses_response("Done.", reasoning_summary="summary of a plan")),
        path="/v1/responses",
    )
    auditor = ScriptedAuditor([0.5, 0])  # the redaction, then its check
    model = chat(server, use_responses_api=True)
    reply = guard_runnable(model, Guard(auditor)).invoke("q")
    assert auditor.seen[0].thinking == "summary of a plan"
    assert auditor.seen[0].response == "Done."
    assert all(block["type"] != "reasoning" for block in reply.content_blocks)
    assert reply.text == "Done."


# -- ReasoningChatOpenAI: the same model, with the reasoning kept ---------------------------------


def reasoning_chat(server: OpenAIServer, **kwargs: Any) -> ReasoningChatOpenAI:
    return ReasoningChatOpenAI(
        model="m", base_url=server.base_url, api_key=SecretStr("x"), max_retries=0, **kwargs
    )


def test_reasoning_chat_openai_keeps_each_reasoning_field_for_the_audit(
    server: OpenAIServer,
) -> None:
    server.enqueue(
        ScriptedResponse.json(chat_completion("Paris.", reasoning_content="the capital is Paris")),
        ScriptedResponse.json(chat_completion("Oslo.", reasoning="vLLM's field")),
    )
    auditor = ScriptedAuditor([0, 0])
    model = reasoning_chat(server)
    assert isinstance(model, ChatOpenAI)  # a drop-in replacement
    handler = TraceguardCallbackHandler(Guard(auditor))
    first = model.invoke("Capital of France?", config={"callbacks": [handler]})
    second = model.invoke("Capital of Norway?", config={"callbacks": [handler]})
    assert (first.content, first.additional_kwargs["reasoning_content"]) == (
        "Paris.",
        "the capital is Paris",
    )
    assert second.additional_kwargs["reasoning_content"] == "vLLM's field"
    assert [(t.thinking, t.response) for t in auditor.seen] == [
        ("the capital is Paris", "Paris."),
        ("vLLM's field", "Oslo."),
    ]


async def test_reasoning_chat_openai_streams_keep_the_reasoning_deltas(
    server: OpenAIServer,
) -> None:
    chunks = chat_completion_chunks(
        "Step 1: buy the parts.", reasoning_content="they want to hurt him", chunk_size=5
    )
    server.enqueue(ScriptedResponse.sse(chunks), ScriptedResponse.sse(chunks))
    auditor = ScriptedAuditor([1, 1])
    model = reasoning_chat(server)
    handler = TraceguardCallbackHandler(Guard(auditor))
    with pytest.raises(Blocked):
        for _ in model.stream("q", config={"callbacks": [handler]}):
            pass
    with pytest.raises(Blocked):
        async for _ in guard_runnable(model, Guard(auditor)).astream("q"):
            pass
    assert [(t.thinking, t.response) for t in auditor.seen] == [
        ("they want to hurt him", "Step 1: buy the parts."),
    ] * 2


def test_a_redaction_removes_the_kept_reasoning(server: OpenAIServer) -> None:
    server.enqueue(
        ScriptedResponse.json(chat_completion("Done.", reasoning_content="a risky private plan"))
    )
    auditor = ScriptedAuditor([0.5, 0])  # the redaction, then its check
    reply = guard_runnable(reasoning_chat(server), Guard(auditor)).invoke("q")
    assert auditor.seen[0].thinking == "a risky private plan"
    assert reply.content == "Done."
    assert "reasoning_content" not in reply.additional_kwargs
