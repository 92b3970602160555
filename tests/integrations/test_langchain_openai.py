"""langchain-openai's ChatOpenAI against the loopback OpenAI-compatible server.

Documents what the integration sees from ``ChatOpenAI``: it drops ``reasoning_content`` (so the
audit has no thinking), while ``<think>`` tags in the content and Responses API reasoning
summaries come through.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("langchain_core")
pytest.importorskip("langchain_openai")

from langchain_openai import ChatOpenAI
from pydantic import SecretStr

from traceguard import Blocked
from traceguard._guard import Guard
from traceguard.integrations.langchain import TraceguardCallbackHandler, guard_runnable
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
