"""LangChain messages as traceguard data: the request context, the audited output, redaction.

Pure functions over langchain-core message objects; no I/O. Image parts become
:class:`~traceguard.ImageRef` values that the auditor loads (or refuses) under its own
:class:`~traceguard.ImageAccess`: nothing here fetches a URL or decodes base64.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage

from traceguard._images import ImageRef
from traceguard._reasoning import extract_langchain_message
from traceguard._trace import ToolCall, Turn

from ._context import RequestContext, base64_image_ref, split_last_user, url_image_ref

__all__ = [
    "as_chunk",
    "output_of",
    "redact_message",
    "request_context",
]

_ROLES = {
    "human": "user",
    "ai": "assistant",
    "system": "system",
    "developer": "system",
    "tool": "tool",
    "function": "tool",
}
# Content blocks that carry reasoning rather than answer text, in the forms LangChain providers use.
_REASONING_BLOCKS = frozenset({"reasoning", "thinking", "redacted_thinking"})
_TEXT_BLOCKS = frozenset({"text", "output_text"})
# additional_kwargs keys holding reasoning (langchain-deepseek, Ollama, Groq, xAI, Responses API).
_REASONING_KWARGS = ("reasoning_content", "reasoning", "reasoning_details", "thinking")
# Provider-raw tool calls kept beside ``tool_calls``; a refusal must not carry them either.
_RAW_TOOL_KWARGS = ("tool_calls", "function_call")


# -- the request ------------------------------------------------------------------------------


def _image_block(block: Mapping[str, Any]) -> ImageRef | str | None:
    """An image content block as a ref, or a text placeholder when it names a provider file."""
    kind = block.get("type")
    if kind == "image_url":  # OpenAI chat format
        return url_image_ref(block.get("image_url"))
    source = block.get("source")
    if isinstance(source, Mapping):  # Anthropic native format
        if source.get("type") == "base64":
            return base64_image_ref(source.get("data"), source.get("media_type"))
        return url_image_ref(source.get("url"))
    # langchain-core 1.x standard blocks, and the v0 form with ``source_type``/``data``.
    if block.get("base64") is not None:
        return base64_image_ref(block.get("base64"), block.get("mime_type"))
    if block.get("source_type") == "base64":
        return base64_image_ref(block.get("data"), block.get("mime_type"))
    if block.get("url") is not None:
        return url_image_ref(block.get("url"))
    file_id = block.get("file_id") or block.get("id")
    if block.get("source_type") == "id" or block.get("file_id") is not None:
        return f"[image file {file_id}]"
    return None


def _content(content: Any) -> tuple[str, tuple[ImageRef, ...]]:
    """The text and images of a non-AI message's content (a string or a list of blocks)."""
    if isinstance(content, str):
        return content, ()
    texts: list[str] = []
    images: list[ImageRef] = []
    for block in content if isinstance(content, Iterable) else ():
        if isinstance(block, str):
            texts.append(block)
            continue
        if not isinstance(block, Mapping):
            continue
        kind = block.get("type")
        if kind in _TEXT_BLOCKS and isinstance(block.get("text"), str):
            texts.append(block["text"])
        elif kind in ("image", "image_url"):
            found = _image_block(block)
            if isinstance(found, ImageRef):
                images.append(found)
            elif found is not None:
                texts.append(found)
    return "\n".join(texts), tuple(images)


def _tool_calls(message: AIMessage) -> tuple[ToolCall, ...]:
    calls = [
        ToolCall(name=call["name"], arguments=_dump_args(call["args"]), id=call.get("id"))
        for call in message.tool_calls
    ]
    # Calls whose arguments did not parse are still what the model said: audit them too.
    calls.extend(
        ToolCall(name=call.get("name") or "", arguments=call.get("args") or "", id=call.get("id"))
        for call in message.invalid_tool_calls
    )
    return tuple(calls)


def _dump_args(args: Any) -> str:
    try:
        return json.dumps(args, ensure_ascii=False, sort_keys=True)
    except (TypeError, ValueError):
        return str(args)


def _turn(message: BaseMessage) -> Turn:
    role = _ROLES.get(message.type, getattr(message, "role", None) or message.type)
    if isinstance(message, AIMessage):
        # Earlier thinking is left out: the auditor grades this turn's thinking, and the
        # conversation as the user saw it.
        _, response = extract_langchain_message(message)
        lines = [response] if response else []
        lines.extend(call.render() for call in _tool_calls(message))
        return Turn(role=role, content="\n".join(lines))
    text, images = _content(message.content)
    return Turn(role=role, content=text, images=images)


def request_context(
    messages: Sequence[BaseMessage],
    *,
    model: str | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> RequestContext:
    """The last human message is the query (with its images); every other message is history.

    In a tool-calling loop the history therefore holds the earlier model turns (with their tool
    calls) and the tool results, in order, so each model call is audited with the conversation
    so far.
    """
    return split_last_user([_turn(message) for message in messages], model=model, metadata=metadata)


# -- the output -------------------------------------------------------------------------------


def output_of(message: BaseMessage) -> tuple[str | None, str, tuple[ToolCall, ...]]:
    """``(thinking, response, tool_calls)`` of a model's output message."""
    thinking, response = extract_langchain_message(message)
    calls = _tool_calls(message) if isinstance(message, AIMessage) else ()
    return thinking, response, calls


def redact_message(message: AIMessage, response: str, *, refuse: bool) -> AIMessage:
    """A copy of ``message`` with the thinking removed and the text replaced by ``response``.

    Reasoning goes from every place LangChain keeps it: ``additional_kwargs`` keys, reasoning and
    thinking content blocks, and ``<think>`` tags (the text is replaced by the already split
    ``response``). With ``refuse`` the tool calls go too, so an agent cannot execute what the
    refusal was meant to stop.
    """
    dropped = set(_REASONING_KWARGS)
    if refuse:
        dropped.update(_RAW_TOOL_KWARGS)
    kwargs = {k: v for k, v in message.additional_kwargs.items() if k not in dropped}
    content: str | list[str | dict[str, Any]]
    if isinstance(message.content, str):
        content = response
    else:
        # Keep blocks that are neither text nor reasoning (tool-use blocks, say), unless
        # refusing; the text blocks become one block holding the redacted response.
        kept: list[str | dict[str, Any]] = []
        if response:
            kept.append({"type": "text", "text": response})
        for block in message.content:
            if isinstance(block, str):
                continue
            kind = block.get("type")
            if kind in _TEXT_BLOCKS or kind in _REASONING_BLOCKS:
                continue
            if refuse:
                continue
            kept.append(block)
        content = kept
    return AIMessage(
        content=content,
        additional_kwargs=kwargs,
        response_metadata=dict(message.response_metadata),
        tool_calls=[] if refuse else list(message.tool_calls),
        invalid_tool_calls=[] if refuse else list(message.invalid_tool_calls),
        usage_metadata=message.usage_metadata,
        id=message.id,
        name=message.name,
    )


def as_chunk(message: AIMessage) -> AIMessageChunk:
    """``message`` as a single stream chunk (tool calls as complete tool-call chunks)."""
    return AIMessageChunk(
        content=message.content,
        additional_kwargs=dict(message.additional_kwargs),
        response_metadata=dict(message.response_metadata),
        tool_call_chunks=[
            {
                "type": "tool_call_chunk",
                "name": call["name"],
                "args": _dump_args(call["args"]),
                "id": call.get("id"),
                "index": index,
            }
            for index, call in enumerate(message.tool_calls)
        ],
        usage_metadata=message.usage_metadata,
        id=message.id,
        name=message.name,
        chunk_position="last",
    )
