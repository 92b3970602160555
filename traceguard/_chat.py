"""Conversations as traceguard data: the one parser every path reads messages with.

The offline log readers, the OpenAI and LangChain integrations, the proxy and the agent
middleware all reduce a conversation to :class:`Message` values here, so a content block means
the same thing wherever it passes:

- :func:`content_parts`: text, refusals, images in every form (OpenAI chat ``image_url``,
  Responses ``input_image``, Anthropic ``source``, LangChain v0 ``source_type`` and v1
  ``base64``/``url``/``file_id``), provider file ids, Anthropic ``tool_use`` / ``tool_result``;
- :func:`tool_call`: a tool call in the OpenAI chat, Responses, Anthropic or LangChain shape;
- :func:`chat_message`, :func:`responses_input`, :func:`langchain_message`: one message (or
  input list) of each API, dicts and SDK objects alike;
- :func:`split_last_user`: the last user message is the query, everything else is history.

Two modes. ``strict`` is for logs read offline: a record of the wrong shape raises
:class:`ShapeError`, which the reader turns into an ``invalid_input`` line. Lenient is for live
requests, which the provider already accepted: it never raises, and a part it cannot show the
auditor becomes a bracketed placeholder in the text instead of vanishing.

Where an image may be read from is the caller's decision (``images=``). Request content is
caller-controlled, so :func:`request_image` never reads a string as a local path: anything but a
data URI is a URL, which the auditor's :class:`~traceguard.ImageAccess` fetches or refuses. Only
the offline readers resolve paths, through their root-confined resolver. Nothing here does I/O.

Content parts and tool calls are written in :mod:`traceguard._chat_parts` and re-exported here:
every caller imports from this module.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from traceguard._chat_parts import (
    TOOL_USE_PARTS,
    Content,
    ImageReader,
    ShapeError,
    arguments_text,
    as_items,
    as_mapping,
    content_parts,
    request_image,
    tool_call,
    tool_calls,
    unique_calls,
)
from traceguard._images import ImageRef
from traceguard._reasoning import extract_chat_message, extract_langchain_message
from traceguard._trace import Stage, ToolCall, Trace, Turn

__all__ = [
    "Content",
    "ImageReader",
    "Message",
    "RequestContext",
    "ShapeError",
    "arguments_text",
    "chat_message",
    "content_parts",
    "langchain_message",
    "langchain_tool_calls",
    "normalize_role",
    "request_image",
    "responses_input",
    "split_last_user",
    "tool_call",
    "tool_calls",
]


# -- roles ------------------------------------------------------------------------------------

_ROLE_NAMES = {
    "system": "system",
    "developer": "system",
    "user": "user",
    "human": "user",
    "assistant": "assistant",
    "ai": "assistant",
    "tool": "tool",
    "function": "tool",
}


def normalize_role(raw: Any, *, strict: bool) -> str:
    """One of ``system``, ``user``, ``assistant``, ``tool`` for the names the APIs use.

    Lenient mode keeps an unknown role as written (a LangChain ``ChatMessage`` may carry any),
    and reads a missing one as ``user``, as the chat APIs do.
    """
    if isinstance(raw, str) and raw.lower() in _ROLE_NAMES:
        return _ROLE_NAMES[raw.lower()]
    if strict:
        if not isinstance(raw, str):
            raise ShapeError("a message needs a string 'role'")
        raise ShapeError(f"unknown message role {raw!r}")
    return raw if isinstance(raw, str) and raw else "user"


# -- messages ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Message:
    """One message of a conversation, whatever API or log format it came from."""

    role: str
    text: str = ""
    """For the assistant: the answer without its thinking."""
    images: tuple[ImageRef, ...] = ()
    thinking: str | None = None
    tool_calls: tuple[ToolCall, ...] = ()
    image_names: tuple[str, ...] = field(default=(), compare=False)

    def turn(self) -> Turn:
        """This message as history: its text, then one line per tool call.

        An assistant's earlier thinking is left out: the auditor grades this turn's thinking
        against the conversation as the user saw it.
        """
        lines = [self.text] if self.text else []
        lines.extend(call.render() for call in self.tool_calls)
        return Turn(role=self.role, content="\n".join(lines), images=self.images)


def _get(fields: Any, key: str) -> Any:
    if isinstance(fields, Mapping):
        return fields.get(key)
    return getattr(fields, key, None)


def chat_message(raw: Any, *, strict: bool, images: ImageReader = request_image) -> Message:
    """One OpenAI-style chat message (``role``, ``content``, ``tool_calls``, reasoning fields).

    Also the shape of assistant outputs (``ChatCompletionMessage``) and of Responses input
    messages; a dict or an SDK object.
    """
    message = as_mapping(raw)
    if message is None:
        if strict:
            raise ShapeError(f"a message must be a JSON object, not {type(raw).__name__}")
        message = {"role": "user", "content": f"[unreadable {type(raw).__name__} message]"}
    role = normalize_role(message.get("role"), strict=strict)
    content = content_parts(message.get("content"), strict=strict, images=images)
    if role != "assistant":
        return Message(
            role=role,
            text=content.text,
            images=content.images,
            tool_calls=content.tool_calls,
            image_names=content.image_names,
        )
    thinking, response = extract_chat_message(message)
    legacy = message.get("function_call")  # the deprecated single-function form
    return Message(
        role="assistant",
        text=response,
        thinking=thinking,
        tool_calls=unique_calls(
            tool_calls(message.get("tool_calls"), strict=strict),
            (tool_call(legacy, strict=strict),) if legacy is not None else (),
            content.tool_calls,
        ),
        images=content.images,
        image_names=content.image_names,
    )


_RESPONSES_CALLS = frozenset({"function_call", "custom_tool_call"})
_RESPONSES_RESULTS = frozenset({"function_call_output", "custom_tool_call_output"})


def responses_input(
    payload: Any, *, instructions: Any = None, images: ImageReader = request_image
) -> list[Message]:
    """The messages of a Responses API request (``instructions`` and ``input``); lenient.

    Reasoning items passed back, hosted tool calls and other items are earlier model output,
    not context the auditor grades this turn on, and are left out.
    """
    messages: list[Message] = []
    if isinstance(instructions, str) and instructions:
        messages.append(Message(role="system", text=instructions))
    if isinstance(payload, str):
        messages.append(Message(role="user", text=payload))
        return messages
    for raw in as_items(payload, "input", strict=False) if payload is not None else ():
        item = as_mapping(raw)
        if item is None:
            continue
        kind = item.get("type", "message")
        if kind == "message" or "role" in item:
            messages.append(chat_message(item, strict=False, images=images))
        elif kind in _RESPONSES_CALLS:
            call = tool_call(item)
            if messages and messages[-1].role == "assistant":
                # A response's message and the calls it made arrive as separate items; they are
                # one turn, as a chat message with tool_calls is.
                last = messages[-1]
                messages[-1] = dataclasses.replace(last, tool_calls=(*last.tool_calls, call))
            else:
                messages.append(Message(role="assistant", tool_calls=(call,)))
        elif kind in _RESPONSES_RESULTS:
            output = content_parts(item.get("output"), strict=False, images=images)
            messages.append(
                Message(
                    role="tool",
                    text=output.text,
                    images=output.images,
                    image_names=output.image_names,
                )
            )
    return messages


_LANGCHAIN_TYPES = {
    "human": "user",
    "ai": "assistant",
    "system": "system",
    "developer": "system",
    "tool": "tool",
    "function": "tool",
    "chat": "chat",
}


def langchain_tool_calls(fields: Any) -> tuple[ToolCall, ...]:
    """The tool calls of a LangChain AI message: parsed, invalid, and as content blocks."""
    content = _get(fields, "content")
    blocks = [
        tool_call(block)
        for block in (content if isinstance(content, list) else ())
        if isinstance(block, Mapping) and block.get("type") in TOOL_USE_PARTS
    ]
    return _langchain_calls(fields, blocks, strict=False)


def _langchain_calls(
    fields: Any, blocks: Sequence[ToolCall], *, strict: bool
) -> tuple[ToolCall, ...]:
    return unique_calls(
        tool_calls(_get(fields, "tool_calls"), strict=strict),
        # Calls whose arguments did not parse are still what the model said: audit them too.
        tool_calls(_get(fields, "invalid_tool_calls"), strict=strict),
        blocks,
    )


def langchain_message(
    kind: Any, fields: Any, *, strict: bool, images: ImageReader = request_image
) -> Message:
    """One LangChain message, from its ``type`` and its fields.

    ``fields`` is a ``BaseMessage`` (live) or the ``data`` mapping written by langchain-core's
    ``messages_to_dict`` (offline); ``kind`` is ``message.type`` or the dump's ``type``.
    """
    base = str(kind).lower().removesuffix("messagechunk").removesuffix("message")
    role = _LANGCHAIN_TYPES.get(base)
    if role is None:
        if strict:
            raise ShapeError(f"unknown LangChain message type {kind!r}")
        role = normalize_role(_get(fields, "role") or str(kind), strict=False)
    elif role == "chat":
        role = normalize_role(_get(fields, "role") or "user", strict=strict)
    content = content_parts(_get(fields, "content"), strict=strict, images=images)
    if role != "assistant":
        return Message(
            role=role,
            text=content.text,
            images=content.images,
            tool_calls=content.tool_calls,
            image_names=content.image_names,
        )
    thinking, response = extract_langchain_message(fields)
    return Message(
        role="assistant",
        text=response,
        thinking=thinking,
        tool_calls=_langchain_calls(fields, content.tool_calls, strict=strict),
        images=content.images,
        image_names=content.image_names,
    )


# -- who asked what ---------------------------------------------------------------------------


@dataclass(frozen=True)
class RequestContext:
    """What the model was asked, and the conversation so far; outputs are added per trace."""

    query: str = ""
    images: tuple[ImageRef, ...] = ()
    history: tuple[Turn, ...] = ()
    model: str | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)
    image_names: tuple[str, ...] = field(default=(), compare=False)
    """How output records show the query's images (offline: resolved paths, URLs, hashes)."""

    def trace(
        self,
        *,
        response: str,
        thinking: str | None,
        tool_calls: tuple[ToolCall, ...] = (),
        trace_id: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        stage: Stage = Stage.FINAL,
    ) -> Trace:
        """The trace of one output of this request; ``metadata`` adds to the request's."""
        return Trace(
            query=self.query,
            response=response,
            thinking=thinking,
            images=self.images,
            tool_calls=tool_calls,
            history=self.history,
            id=trace_id,
            model=self.model,
            metadata={**self.metadata, **(metadata or {})},
            stage=stage,
        )


def split_last_user(
    messages: Sequence[Message],
    *,
    model: str | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> RequestContext:
    """The last user message is the query (with its images); every other one is history, in order.

    The one statement of this rule for every path. In a tool-calling loop the history therefore
    holds the earlier model turns and the tool results, so each model call is audited with the
    conversation so far; offline, each assistant turn is audited with the messages before it.
    """
    for index in range(len(messages) - 1, -1, -1):
        if messages[index].role == "user":
            query = messages[index]
            return RequestContext(
                query=query.turn().content,
                images=query.images,
                image_names=query.image_names,
                history=tuple(m.turn() for i, m in enumerate(messages) if i != index),
                model=model,
                metadata=dict(metadata or {}),
            )
    return RequestContext(
        history=tuple(m.turn() for m in messages), model=model, metadata=dict(metadata or {})
    )
