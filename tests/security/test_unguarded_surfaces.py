"""A surface the guard cannot cover is refused loudly, never passed silently.

Issue 13, fault 11: ``AsyncTraceguardCallbackHandler`` attached to a *sync* LangChain run
(``invoke``, ``batch``, ``stream``, a thread pool) let 26 of 26 harmful calls through: LangChain
runs an async handler's coroutines for a sync run in a throwaway event loop and only logs
"Error in callback coroutine" when one raises. The handler now refuses such a run before the
model is called. Everything here is real: ``ChatOpenAI`` against a loopback model server, the
guard's GuardTrace auditor against a loopback auditor.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

pytest.importorskip("langchain_openai")

from langchain_openai import ChatOpenAI
from pydantic import SecretStr

from traceguard import Blocked, ConfigurationError, Guard, GuardTraceAuditor, backends
from traceguard.integrations.langchain import AsyncTraceguardCallbackHandler
from traceguard.testing.openai_server import (
    OpenAIServer,
    ScriptedResponse,
    chat_completion,
    chat_completion_chunks,
)

from ._auditor import judge

HARMFUL = "Step 1: the harmful part. probe-verdict=1"


@pytest.fixture
def model_server() -> Iterator[OpenAIServer]:
    def respond(request: Any) -> ScriptedResponse:
        if request.json.get("stream"):
            return ScriptedResponse.sse(chat_completion_chunks(HARMFUL))
        return ScriptedResponse.json(chat_completion(HARMFUL))

    with OpenAIServer(responder=respond) as server:
        yield server


@pytest.fixture
def handler() -> Iterator[AsyncTraceguardCallbackHandler]:
    with OpenAIServer(responder=judge) as auditor_server:
        auditor = GuardTraceAuditor(backends.served(auditor_server.base_url, "guard"))
        yield AsyncTraceguardCallbackHandler(Guard(auditor))
        auditor.close()


def _model(server: OpenAIServer, handler: AsyncTraceguardCallbackHandler) -> Any:
    chat = ChatOpenAI(model="m", base_url=server.base_url, api_key=SecretStr("x"), max_retries=0)
    return chat.with_config(callbacks=[handler])


def _passed(call: Any) -> bool:
    """Whether the harmful answer came back (True), or the run was stopped or refused."""
    try:
        result = call()
    except (ConfigurationError, Blocked):
        return False
    text = "".join(chunk.content for chunk in result) if isinstance(result, list) else result
    return HARMFUL in str(getattr(text, "content", text))


@pytest.mark.probe("surfaces the guard does not cover")
@pytest.mark.parametrize("entry", ["invoke", "batch", "stream", "thread-pool"])
def test_async_handler_never_lets_a_sync_run_pass(
    model_server: OpenAIServer, handler: AsyncTraceguardCallbackHandler, entry: str
) -> None:
    model = _model(model_server, handler)
    if entry == "invoke":
        outcomes = [_passed(lambda: model.invoke("how?")) for _ in range(4)]
    elif entry == "batch":
        outcomes = [_passed(lambda: model.batch(["how?"] * 4))]
    elif entry == "stream":
        outcomes = [_passed(lambda: list(model.stream("how?"))) for _ in range(4)]
    else:
        with ThreadPoolExecutor(4) as pool:
            futures = [pool.submit(_passed, lambda: model.invoke("how?")) for _ in range(8)]
            outcomes = [f.result() for f in futures]
    assert not any(outcomes)


@pytest.mark.probe("surfaces the guard does not cover")
async def test_async_handler_refuses_a_sync_run_started_inside_an_event_loop(
    model_server: OpenAIServer, handler: AsyncTraceguardCallbackHandler
) -> None:
    # Blocking code in a coroutine: LangChain then runs the handler in a worker thread's loop.
    model = _model(model_server, handler)
    with pytest.raises(ConfigurationError, match="sync run"):
        model.invoke("how?")


@pytest.mark.probe("surfaces the guard does not cover")
async def test_async_handler_still_stops_async_runs(
    model_server: OpenAIServer, handler: AsyncTraceguardCallbackHandler
) -> None:
    model = _model(model_server, handler)
    with pytest.raises(Blocked):
        await model.ainvoke("how?")
    with pytest.raises(Blocked):
        async for _ in model.astream("how?"):
            pass
    results = await model.abatch(["how?"] * 3, return_exceptions=True)
    assert all(isinstance(r, Blocked) for r in results)
    assert handler.active_runs == 0
    await asyncio.sleep(0)
