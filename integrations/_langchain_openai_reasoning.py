"""``ReasoningChatOpenAI``: ``ChatOpenAI`` that keeps the reasoning OpenAI-compatible servers send.

``ChatOpenAI`` on Chat Completions reads only the official fields of an answer, so the
``reasoning_content`` / ``reasoning`` / ``reasoning_details`` that vLLM (``--reasoning-parser``),
SGLang, DeepSeek, OpenRouter or llama.cpp put beside the content is gone before any LangChain
hook runs: the guard would audit the answer without the thinking that led to it. This subclass
changes only that: the reasoning of each answer (and of each streamed delta) is kept in
``additional_kwargs["reasoning_content"]``, where every traceguard path reads it (and where a
redaction removes it). It is never sent back to the server in later requests, as with
``ChatOpenAI``. Everything else is ``ChatOpenAI``'s own behaviour.

It overrides the two conversion hooks that LangChain's own OpenAI-compatible provider packages
(``ChatDeepSeek``, ``ChatXAI``) override for the same purpose.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from langchain_core.messages import AIMessage, AIMessageChunk
from langchain_core.outputs import ChatGenerationChunk, ChatResult
from langchain_openai import ChatOpenAI

from traceguard._reasoning import reasoning_fields

__all__ = ["ReasoningChatOpenAI"]

_KEY = "reasoning_content"


class ReasoningChatOpenAI(ChatOpenAI):
    """``ChatOpenAI`` that keeps a Chat Completions answer's reasoning for the audit.

    ::

        model = ReasoningChatOpenAI(model="deepseek-r1", base_url="http://localhost:8000/v1")
        agent = create_agent(model, tools, middleware=[TraceguardMiddleware(guard)])

    Takes the same arguments as ``ChatOpenAI``. The reasoning of an answer goes to
    ``additional_kwargs["reasoning_content"]`` (several ``reasoning_details`` entries joined by
    blank lines), streamed deltas included, so the guard audits the thinking with the answer.
    """

    def _create_chat_result(
        self,
        response: dict[str, Any] | Any,
        generation_info: dict[str, Any] | None = None,
    ) -> ChatResult:
        result = super()._create_chat_result(response, generation_info)
        choices = _field(response, "choices")
        if not isinstance(choices, Sequence):
            return result
        # One generation per choice, in order (what ChatOpenAI builds).
        for generation, choice in zip(result.generations, choices, strict=False):
            parts = reasoning_fields(_field(choice, "message"))
            if parts and isinstance(generation.message, AIMessage):
                generation.message.additional_kwargs[_KEY] = "\n\n".join(parts)
        return result

    def _convert_chunk_to_generation_chunk(
        self,
        chunk: dict[str, Any],
        default_chunk_class: type,
        base_generation_info: dict[str, Any] | None,
    ) -> ChatGenerationChunk | None:
        generation = super()._convert_chunk_to_generation_chunk(
            chunk, default_chunk_class, base_generation_info
        )
        if generation is None:
            return None
        # The stream helper nests the chunk (``{"type": "chunk", "chunk": {...}}``).
        choices = chunk.get("choices") or (chunk.get("chunk") or {}).get("choices") or ()
        if choices and isinstance(generation.message, AIMessageChunk):
            parts = reasoning_fields(_field(choices[0], "delta"))
            if parts:
                # Chunks merge by concatenating string values: the pieces add up.
                generation.message.additional_kwargs[_KEY] = "".join(parts)
        return generation


def _field(obj: Any, key: str) -> Any:
    """``obj[key]`` of a dict, or the attribute of an SDK object; None when absent."""
    if isinstance(obj, Mapping):
        return obj.get(key)
    return getattr(obj, key, None)
