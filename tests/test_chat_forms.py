"""Every content-block form, through every path that reads conversations, gives the same trace.

Rows are the ways the APIs write a question with an image (OpenAI chat, Responses, Anthropic,
LangChain v0 and v1) and the ways they write tool calls (each API's own, or Anthropic
``tool_use``/``tool_result`` blocks). Columns are the paths: the offline ``openai`` and
``langchain`` readers (real files), the OpenAI wrapper's chat and Responses request contexts
with real SDK result objects, and the LangChain message conversion on real langchain-core
messages. Each cell must produce the expected trace: query, image identities, history, tool calls.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
    messages_to_dict,
)
from openai.types.chat import ChatCompletion
from openai.types.responses import Response

from traceguard import Trace
from traceguard.audit import LogReader
from traceguard.integrations._langchain_messages import output_of, request_context
from traceguard.integrations._openai_request import (
    chat_request_context,
    responses_request_context,
)
from traceguard.integrations._openai_result import chat_traces, response_trace

PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\0" * 16).decode()
DATA_URI = f"data:image/png;base64,{PNG}"
URL = "https://images.example.test/cat.png"
BYTES_ID = "sha256:" + hashlib.sha256(base64.b64decode(PNG)).hexdigest()
URL_ID = f"url:{URL}"
QUESTION = "What is in this picture?"

LOOKUP = {"q": "cats"}
SAVE = {"label": "cat"}


@dataclass(frozen=True)
class Form:
    """How one API writes the question (text + image) and an assistant's text."""

    name: str
    question: Any
    images: tuple[str, ...]
    answer_type: str = "text"


def _ask(text_type: str, image: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"type": text_type, "text": QUESTION}, image]


FORMS = [
    Form("plain string", QUESTION, ()),
    Form(
        "openai chat image_url URL",
        _ask("text", {"type": "image_url", "image_url": {"url": URL, "detail": "low"}}),
        (URL_ID,),
    ),
    Form(
        "openai chat image_url data URI",
        _ask("text", {"type": "image_url", "image_url": {"url": DATA_URI}}),
        (BYTES_ID,),
    ),
    Form(
        "responses input_image URL",
        _ask("input_text", {"type": "input_image", "image_url": URL, "detail": "auto"}),
        (URL_ID,),
        answer_type="output_text",
    ),
    Form(
        "responses input_image data URI",
        _ask("input_text", {"type": "input_image", "image_url": DATA_URI}),
        (BYTES_ID,),
        answer_type="output_text",
    ),
    Form(
        "anthropic image base64",
        _ask(
            "text",
            {
                "type": "image",
                "source": {"type": "base64", "media_type": "image/png", "data": PNG},
            },
        ),
        (BYTES_ID,),
    ),
    Form(
        "anthropic image url",
        _ask("text", {"type": "image", "source": {"type": "url", "url": URL}}),
        (URL_ID,),
    ),
    Form(
        "langchain v0 base64",
        _ask(
            "text",
            {"type": "image", "source_type": "base64", "data": PNG, "mime_type": "image/png"},
        ),
        (BYTES_ID,),
    ),
    Form(
        "langchain v0 url",
        _ask("text", {"type": "image", "source_type": "url", "url": URL}),
        (URL_ID,),
    ),
    Form(
        "langchain v1 base64",
        _ask("text", {"type": "image", "base64": PNG, "mime_type": "image/png"}),
        (BYTES_ID,),
    ),
    Form("langchain v1 url", _ask("text", {"type": "image", "url": URL}), (URL_ID,)),
    Form(
        "every image form at once",
        [
            {"type": "input_text", "text": QUESTION},
            {"type": "image_url", "image_url": URL},
            {"type": "input_image", "image_url": DATA_URI},
            {"type": "image", "source": {"type": "url", "url": URL}},
            {"type": "image", "source_type": "base64", "data": PNG},
            {"type": "image", "url": URL},
        ],
        (URL_ID, BYTES_ID, URL_ID, BYTES_ID, URL_ID),
    ),
]


@dataclass(frozen=True)
class Conversation:
    """One row: the question's form and the tool calls' form (``native`` or ``anthropic``)."""

    form: Form
    tools: str

    @property
    def answer(self) -> list[dict[str, Any]]:
        return [{"type": self.form.answer_type, "text": "Earlier answer."}]

    def anthropic_use(self, call_id: str, name: str, args: dict[str, Any]) -> dict[str, Any]:
        return {"type": "tool_use", "id": call_id, "name": name, "input": args}

    @property
    def tool_result(self) -> dict[str, Any]:
        return {"type": "tool_result", "tool_use_id": "call_1", "content": "cats are mammals"}


def _args(args: dict[str, Any]) -> str:
    return json.dumps(args)


def expected(row: Conversation) -> tuple[Any, ...]:
    tool_role = "tool" if row.tools == "native" else "user"
    return (
        QUESTION,
        row.form.images,
        (
            ("system", "Be brief.", ()),
            ("user", "Earlier question.", ()),
            ("assistant", f"Earlier answer.\n[tool call] lookup({_args(LOOKUP)})", ()),
            (tool_role, "cats are mammals", ()),
        ),
        (("save", _args(SAVE), "call_2"),),
        "It is a cat.",
        None,
    )


def observed(trace: Trace) -> tuple[Any, ...]:
    return (
        trace.query,
        tuple(image.identity() for image in trace.images),
        tuple((t.role, t.content, tuple(i.identity() for i in t.images)) for t in trace.history),
        tuple((c.name, c.arguments, c.id) for c in trace.tool_calls),
        trace.response,
        trace.thinking,
    )


# -- each path builds the conversation in its own API's terms ---------------------------------


def chat_messages(row: Conversation, *, with_output: bool) -> list[dict[str, Any]]:
    if row.tools == "native":
        earlier: dict[str, Any] = {
            "role": "assistant",
            "content": row.answer,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "lookup", "arguments": _args(LOOKUP)},
                }
            ],
        }
        result: dict[str, Any] = {
            "role": "tool",
            "tool_call_id": "call_1",
            "content": "cats are mammals",
        }
    else:
        use = row.anthropic_use("call_1", "lookup", LOOKUP)
        earlier = {"role": "assistant", "content": [*row.answer, use]}
        result = {"role": "user", "content": [row.tool_result]}
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Earlier question."},
        earlier,
        result,
        {"role": "user", "content": row.form.question},
    ]
    if with_output:
        messages.append(chat_output(row))
    return messages


def chat_output(row: Conversation) -> dict[str, Any]:
    if row.tools == "native":
        return {
            "role": "assistant",
            "content": "It is a cat.",
            "tool_calls": [
                {
                    "id": "call_2",
                    "type": "function",
                    "function": {"name": "save", "arguments": _args(SAVE)},
                }
            ],
        }
    return {
        "role": "assistant",
        "content": [
            {"type": "text", "text": "It is a cat."},
            row.anthropic_use("call_2", "save", SAVE),
        ],
    }


def langchain_messages(row: Conversation, *, with_output: bool) -> list[BaseMessage]:
    if row.tools == "native":
        calls = [{"name": "lookup", "args": LOOKUP, "id": "call_1"}]
        earlier = AIMessage(content=row.answer, tool_calls=calls)  # type: ignore[arg-type]
        result: BaseMessage = ToolMessage("cats are mammals", tool_call_id="call_1")
        output = AIMessage(
            content="It is a cat.", tool_calls=[{"name": "save", "args": SAVE, "id": "call_2"}]
        )
    else:
        use = row.anthropic_use("call_1", "lookup", LOOKUP)
        earlier = AIMessage(content=[*row.answer, use])  # type: ignore[list-item]
        result = HumanMessage(content=[row.tool_result])
        output = AIMessage(
            content=[
                {"type": "text", "text": "It is a cat."},
                row.anthropic_use("call_2", "save", SAVE),
            ]
        )
    messages = [
        SystemMessage("Be brief."),
        HumanMessage("Earlier question."),
        earlier,
        result,
        HumanMessage(content=row.form.question),
    ]
    return [*messages, output] if with_output else messages


def offline_openai(row: Conversation, tmp_path: Path) -> Trace:
    log = tmp_path / "chat.jsonl"
    log.write_text(json.dumps({"messages": chat_messages(row, with_output=True)}) + "\n")
    *_, item = LogReader(log, "openai").items()  # the earlier assistant turn is audited too
    assert item.trace is not None, item.problem
    return item.trace


def offline_langchain(row: Conversation, tmp_path: Path) -> Trace:
    log = tmp_path / "langchain.jsonl"
    dumped = messages_to_dict(langchain_messages(row, with_output=True))
    log.write_text(json.dumps(dumped) + "\n")
    *_, item = LogReader(log, "langchain").items()
    assert item.trace is not None, item.problem
    return item.trace


def openai_chat(row: Conversation, tmp_path: Path) -> Trace:
    messages = chat_messages(row, with_output=False)
    context = chat_request_context({"model": "m", "messages": messages})
    # A ChatCompletion's message holds a string: its tool calls are always the native ones.
    output = chat_output(Conversation(row.form, "native"))
    completion = ChatCompletion.model_validate(
        {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "created": 0,
            "model": "m",
            "choices": [{"index": 0, "finish_reason": "tool_calls", "message": output}],
        }
    )
    (trace,) = chat_traces(context, completion)
    return trace


def openai_responses(row: Conversation, tmp_path: Path) -> Trace:
    if row.tools == "native":
        earlier: list[dict[str, Any]] = [
            {"type": "message", "role": "assistant", "content": row.answer},
            {
                "type": "function_call",
                "call_id": "call_1",
                "name": "lookup",
                "arguments": _args(LOOKUP),
            },
            {"type": "function_call_output", "call_id": "call_1", "output": "cats are mammals"},
        ]
    else:
        use = row.anthropic_use("call_1", "lookup", LOOKUP)
        earlier = [
            {"type": "message", "role": "assistant", "content": [*row.answer, use]},
            {"role": "user", "content": [row.tool_result]},
        ]
    kwargs = {
        "model": "m",
        "instructions": "Be brief.",
        "input": [
            {"role": "user", "content": "Earlier question."},
            *earlier,
            {"role": "user", "content": row.form.question},
        ],
    }
    response = Response.model_validate(
        {
            "id": "resp_1",
            "object": "response",
            "created_at": 0,
            "model": "m",
            "status": "completed",
            "parallel_tool_calls": True,
            "tool_choice": "auto",
            "tools": [],
            "output": [
                {
                    "type": "message",
                    "id": "msg_1",
                    "role": "assistant",
                    "status": "completed",
                    "content": [{"type": "output_text", "text": "It is a cat.", "annotations": []}],
                },
                {
                    "type": "function_call",
                    "id": "fc_2",
                    "call_id": "call_2",
                    "name": "save",
                    "arguments": _args(SAVE),
                    "status": "completed",
                },
            ],
        }
    )
    return response_trace(responses_request_context(kwargs), response)


def langchain_live(row: Conversation, tmp_path: Path) -> Trace:
    *asked, answer = langchain_messages(row, with_output=True)
    thinking, response, calls = output_of(answer)
    return request_context(asked).trace(response=response, thinking=thinking, tool_calls=calls)


PATHS: dict[str, Callable[[Conversation, Path], Trace]] = {
    "offline openai reader": offline_openai,
    "offline langchain reader": offline_langchain,
    "openai wrapper chat": openai_chat,
    "openai wrapper responses": openai_responses,
    "langchain messages": langchain_live,
}
ROWS = [Conversation(form, tools) for form in FORMS for tools in ("native", "anthropic")]


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("row", ROWS, ids=[f"{r.form.name} / {r.tools} tools" for r in ROWS])
def test_every_form_through_every_path_gives_the_same_trace(
    row: Conversation, path: str, tmp_path: Path
) -> None:
    assert observed(PATHS[path](row, tmp_path)) == expected(row)
