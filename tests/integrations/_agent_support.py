"""Shared pieces of the agent tests: ChatOpenAI on the loopback server, scripted replies, and tools
that record whether they ran."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from langchain.agents import create_agent
from langchain_core.tools import BaseTool, tool
from langchain_openai import ChatOpenAI
from pydantic import SecretStr

from traceguard import Guard, Trace
from traceguard.integrations.langchain import TraceguardMiddleware
from traceguard.testing.openai_server import (
    OpenAIServer,
    ScriptedResponse,
    chat_completion,
    chat_completion_chunks,
)

REFUSAL = "I can't help with that request."


def chat_model(server: OpenAIServer, **kwargs: Any) -> ChatOpenAI:
    """A real ChatOpenAI talking to the loopback server (no retries: a missing answer fails)."""
    return ChatOpenAI(
        model="m", base_url=server.base_url, api_key=SecretStr("x"), max_retries=0, **kwargs
    )


def reply(
    content: str,
    *,
    calls: Sequence[dict[str, Any]] = (),
    reasoning_tokens: int | None = None,
    reasoning_content: str | None = None,
) -> ScriptedResponse:
    """One chat completion (JSON); ``calls`` are ``{"name", "arguments", "id"}`` specs."""
    body = chat_completion(
        content, tool_calls=list(calls) or None, reasoning_content=reasoning_content
    )
    if reasoning_tokens is not None:
        body["usage"]["completion_tokens_details"] = {"reasoning_tokens": reasoning_tokens}
    return ScriptedResponse.json(body)


def streamed(content: str, *, calls: Sequence[dict[str, Any]] = ()) -> ScriptedResponse:
    """The same completion as an SSE stream (what ChatOpenAI asks for under streaming)."""
    return ScriptedResponse.sse(chat_completion_chunks(content, tool_calls=list(calls) or None))


class Recorder:
    """Tools that write down every call they get, so a test can say a tool never ran."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def tools(self) -> list[BaseTool]:
        @tool
        def shell(cmd: str) -> str:
            """Run a shell command on the user's machine."""
            self.calls.append(("shell", {"cmd": cmd}))
            return "ran"

        @tool
        def send_payment(to: str, amount: int) -> str:
            """Send money."""
            self.calls.append(("send_payment", {"to": to, "amount": amount}))
            return f"sent {amount} to {to}"

        @tool
        def get_weather(city: str) -> str:
            """The weather in a city."""
            self.calls.append(("get_weather", {"city": city}))
            return f"sunny in {city}"

        return [shell, send_payment, get_weather]

    def names(self) -> list[str]:
        return [name for name, _ in self.calls]


def call(name: str, arguments: dict[str, Any], call_id: str = "call-1") -> dict[str, Any]:
    return {"name": name, "arguments": arguments, "id": call_id}


def model_turns(traces: Sequence[Trace]) -> list[Trace]:
    return [t for t in traces if t.stage.value == "final"]


def tool_turns(traces: Sequence[Trace]) -> list[Trace]:
    return [t for t in traces if t.stage.value == "tool_call"]


def guarded_agent(
    server: OpenAIServer,
    recorder: Recorder,
    guard: Guard,
    *,
    checkpointer: Any = None,
    **options: Any,
) -> Any:
    """A ``create_agent`` agent on the loopback model with the recorder's tools and the
    middleware (``options`` go to ``TraceguardMiddleware``)."""
    return create_agent(
        chat_model(server),
        tools=recorder.tools(),
        middleware=[TraceguardMiddleware(guard, **options)],
        checkpointer=checkpointer,
    )
