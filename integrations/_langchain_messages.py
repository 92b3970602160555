"""LangChain messages as traceguard data: the request context, the audited output, redaction.

Pure functions over langchain-core message objects; no I/O. Image parts become
:class:`~traceguard.ImageRef` values that the auditor loads (or refuses) under its own
:class:`~traceguard.ImageAccess`: nothing here fetches a URL or decodes base64.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage

from traceguard._chat import (
    RequestContext,
    arguments_text,
    langchain_message,
    langchain_tool_calls,
    split_last_user,
)
from traceguard._reasoning import extract_langchain_message
from traceguard._trace import ToolCall

__all__ = [
    "as_chunk",
    "output_of",
    "redact_message",
    "request_context",
]

# Content blocks that carry reasoning rather than answer text, in the forms LangChain providers use.
_REASONING_BLOCKS = frozenset({"reasoning", "thinking", "redacted_thinking"})
_TEXT_BLOCKS = frozenset({"text", "output_text"})
# additional_kwargs keys holding reasoning (langchain-deepseek, Ollama, Groq, xAI, Responses API).
_REASONING_KWARGS = ("reasoning_content", "reasoning", "reasoning_details", "thinking")
# Provider-raw tool calls kept beside ``tool_calls``; a refusal must not carry them either.
_RAW_TOOL_KWARGS = ("tool_calls", "function_call")


# -- the request ------------------------------------------------------------------------------


def request_context(
    messages: Sequence[BaseMessage],
    *,
    model: str | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> RequestContext:
    """The last human message is the query (with its images); every other message is history.

    Messages are read by :mod:`traceguard._chat`, the parser every path shares, in lenient
    mode: the provider accepted them already, so a block it cannot read is named, never raised.
    """
    turns = [langchain_message(message.type, message, strict=False) for message in messages]
    return split_last_user(turns, model=model, metadata=metadata)


# -- the output -------------------------------------------------------------------------------


def output_of(message: BaseMessage) -> tuple[str | None, str, tuple[ToolCall, ...]]:
    """``(thinking, response, tool_calls)`` of a model's output message."""
    thinking, response = extract_langchain_message(message)
    calls = langchain_tool_calls(message) if isinstance(message, AIMessage) else ()
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
                "args": arguments_text(call["args"]),
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
