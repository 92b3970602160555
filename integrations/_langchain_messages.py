"""LangChain messages as traceguard data: the request context, the audited output, redaction.

Pure functions over langchain-core message objects; no I/O but one warning per model whose
reasoning the provider package dropped (:func:`warn_hidden_reasoning`). Image parts become
:class:`~traceguard.ImageRef` values that the auditor loads (or refuses) under its own
:class:`~traceguard.ImageAccess`: nothing here fetches a URL or decodes base64.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
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
from traceguard._decision import Decision
from traceguard._reasoning import extract_langchain_message
from traceguard._trace import Stage, ToolCall, Trace

__all__ = [
    "METADATA_KEY",
    "as_chunk",
    "bounded",
    "decision_metadata",
    "model_name",
    "output_of",
    "redact_message",
    "request_context",
    "warn_hidden_reasoning",
    "with_decision",
]

logger = logging.getLogger("traceguard.integrations.langchain")

METADATA_KEY = "traceguard"
"""Key of the decision summary in a guarded message's ``response_metadata``."""

# Content blocks that carry reasoning rather than answer text, in the forms LangChain providers use.
_REASONING_BLOCKS = frozenset({"reasoning", "thinking", "redacted_thinking"})
_TEXT_BLOCKS = frozenset({"text", "output_text"})
# additional_kwargs keys holding reasoning (langchain-deepseek, Ollama, Groq, xAI, Responses API).
_REASONING_KWARGS = ("reasoning_content", "reasoning", "reasoning_details", "thinking")
# Provider-raw tool calls kept beside ``tool_calls``; a refusal must not carry them either.
_RAW_TOOL_KWARGS = ("tool_calls", "function_call")


# -- the request ------------------------------------------------------------------------------


def model_name(model: Any) -> str | None:
    """The name of a chat model, or of the one a binding (``bind_tools``) wraps."""
    for candidate in (model, getattr(model, "bound", None)):
        for attr in ("model_name", "model"):
            value = getattr(candidate, attr, None)
            if isinstance(value, str):
                return value
    return None


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


def bounded(context: RequestContext, history_turns: int | None) -> RequestContext:
    """``context`` with at most the last ``history_turns`` earlier turns (None: all of them).

    A long agent loop would otherwise hand every sink and the review queue the whole thread;
    the auditor reads only the recent turns anyway.
    """
    if history_turns is None or len(context.history) <= history_turns:
        return context
    kept = context.history[len(context.history) - history_turns :] if history_turns else ()
    return dataclasses.replace(context, history=kept)


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


# -- decisions on results ---------------------------------------------------------------------


def decision_metadata(decision: Decision, trace: Trace | None = None) -> dict[str, Any]:
    """What a guarded result says about its decision (JSON-ready, no audited text).

    The auditor's analysis is left out on purpose: it may quote the very text that was held
    back, and this summary travels with the message to whoever reads it.
    """
    verdict = decision.verdict
    summary: dict[str, Any] = {
        "action": decision.action.value,
        "disposition": decision.disposition.value,
        "reason": decision.reason,
        "status": verdict.status.value,
        "risk": verdict.risk,
        "label": verdict.label.value if verdict.label is not None else None,
        "categories": list(verdict.categories),
        "auditor": verdict.auditor,
        "trace_id": decision.trace_id,
        "escalation_id": decision.escalation_id,
        "awaiting_review": decision.awaiting_review,
        "review": None if decision.review is None else decision.review.resolution,
    }
    if trace is not None:
        summary["stage"] = trace.stage.value
        if trace.tool_calls and trace.stage is Stage.TOOL_CALL:
            summary["tool"] = trace.tool_calls[0].name
    return summary


def with_decision(message: BaseMessage, summary: Mapping[str, Any]) -> Any:
    """A copy of ``message`` whose ``response_metadata`` carries ``summary`` under
    :data:`METADATA_KEY` (same type, same id)."""
    metadata = {**message.response_metadata, METADATA_KEY: dict(summary)}
    return message.model_copy(update={"response_metadata": metadata})


# -- reasoning the provider package dropped ---------------------------------------------------

_warned_models: set[str] = set()
_warned_lock = threading.Lock()


def _reasoning_tokens(message: BaseMessage) -> int:
    usage = getattr(message, "usage_metadata", None)
    if not isinstance(usage, Mapping):
        return 0
    details = usage.get("output_token_details")
    count = details.get("reasoning") if isinstance(details, Mapping) else None
    return count if isinstance(count, int) else 0


def warn_hidden_reasoning(message: BaseMessage, thinking: str | None, model: str | None) -> bool:
    """Log once per model when ``message`` reports reasoning tokens but carries no thinking.

    That is what ``ChatOpenAI`` on Chat Completions does with the ``reasoning_content`` /
    ``reasoning`` fields of DeepSeek, vLLM or OpenRouter: the tokens are billed, the text is
    dropped, and the audit sees only the answer. Returns True when it warned.
    """
    if thinking is not None:
        return False
    tokens = _reasoning_tokens(message)
    if tokens <= 0:
        return False
    key = model or "<unnamed model>"
    with _warned_lock:
        if key in _warned_models:
            return False
        _warned_models.add(key)
    logger.warning(
        "model %s reported %d reasoning tokens but its message carries no thinking, so "
        "traceguard audits the answer without the reasoning. The provider package dropped it "
        "(ChatOpenAI on Chat Completions does). To audit the reasoning: use "
        "traceguard.integrations.langchain.ReasoningChatOpenAI in place of ChatOpenAI (it keeps "
        "reasoning_content), or a provider package that keeps it (langchain-deepseek's "
        "ChatDeepSeek, or the Ollama, Groq and xAI packages), keep <think> tags in the content, "
        "or use ChatOpenAI(use_responses_api=True) with reasoning summaries. "
        "(Logged once per model.)",
        key,
        tokens,
    )
    return True
