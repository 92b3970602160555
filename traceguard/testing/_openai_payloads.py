"""Builders for OpenAI-style payloads: chat completions, their SSE chunks, Responses API objects.

Every payload is plain JSON-ready data shaped so that the real ``openai`` SDK parses it into its
own types (``ChatCompletion``, ``ChatCompletionChunk``, ``Response``, the ``response.*`` stream
events). Ids and timestamps are fixed so that tests can compare payloads.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "DEFAULT_MODEL",
    "SSEEvent",
    "ToolCallSpec",
    "chat_completion",
    "chat_completion_chunks",
    "guardtrace_output",
    "responses_events",
    "responses_response",
    "top_logprobs_completion",
]

DEFAULT_MODEL = "guardtrace-vl-3b"
_CREATED = 1_700_000_000

ToolCallSpec = Mapping[str, Any]
"""A tool call for the builders: ``{"name": str, "arguments": str | Mapping, "id": str?}``."""


@dataclass(frozen=True)
class SSEEvent:
    """One server-sent event: a ``data:`` payload and an optional ``event:`` name."""

    data: str | Mapping[str, Any]
    event: str | None = None

    def encode(self) -> bytes:
        """The event on the wire, terminated by its blank line."""
        data = self.data if isinstance(self.data, str) else json.dumps(self.data)
        lines = [f"event: {self.event}"] if self.event is not None else []
        lines += [f"data: {line}" for line in data.split("\n")]
        return ("\n".join(lines) + "\n\n").encode()


def guardtrace_output(judgment: str = "0", analysis: str | None = None) -> str:
    """A GuardTrace-style completion: the analysis line, then the judgment line (curly quotes)."""
    text = analysis if analysis is not None else "The query is benign and the answer is harmless."
    return f"\u201cAnalysis\u201d: {text}\n\u201cJudgment\u201d: {judgment}"


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def _arguments(spec: ToolCallSpec) -> str:
    args = spec.get("arguments", {})
    return args if isinstance(args, str) else json.dumps(args)


def _chat_tool_calls(tool_calls: Sequence[ToolCallSpec]) -> list[dict[str, Any]]:
    return [
        {
            "id": str(spec.get("id", f"call_{i}")),
            "type": "function",
            "function": {"name": str(spec["name"]), "arguments": _arguments(spec)},
        }
        for i, spec in enumerate(tool_calls)
    ]


def chat_completion(
    content: str | None,
    *,
    reasoning_content: str | None = None,
    reasoning: str | None = None,
    tool_calls: Sequence[ToolCallSpec] | None = None,
    model: str = DEFAULT_MODEL,
    logprobs: Mapping[str, Any] | None = None,
    finish_reason: str | None = None,
    prompt_tokens: int = 10,
    completion_tokens: int | None = None,
) -> dict[str, Any]:
    """A ``chat.completion`` object with one choice.

    ``reasoning_content`` (DeepSeek, older vLLM) and ``reasoning`` (newer vLLM, routers) are the
    two spellings of a reasoning field found in the wild; set either or both.
    """
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if reasoning_content is not None:
        message["reasoning_content"] = reasoning_content
    if reasoning is not None:
        message["reasoning"] = reasoning
    if tool_calls:
        message["tool_calls"] = _chat_tool_calls(tool_calls)
    if finish_reason is None:
        finish_reason = "tool_calls" if tool_calls else "stop"
    if completion_tokens is None:
        completion_tokens = max(1, len((content or "").split()))
    return {
        "id": "chatcmpl-loopback",
        "object": "chat.completion",
        "created": _CREATED,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": dict(logprobs) if logprobs is not None else None,
                "finish_reason": finish_reason,
            }
        ],
        "usage": _usage(prompt_tokens, completion_tokens),
    }


def top_logprobs_completion(
    dist: Mapping[str, float], *, model: str = DEFAULT_MODEL, as_probabilities: bool = False
) -> dict[str, Any]:
    """A one-token completion whose ``logprobs.content[0].top_logprobs`` is ``dist``.

    ``dist`` maps token strings to log-probabilities (or to probabilities when
    ``as_probabilities``). The generated token is the most likely one, as greedy decoding picks.
    """
    if not dist:
        raise ValueError("top_logprobs_completion needs at least one token")
    logprob_of = {
        token: (math.log(value) if as_probabilities else float(value))
        for token, value in dist.items()
    }
    ranked = sorted(logprob_of.items(), key=lambda item: item[1], reverse=True)
    top = [{"token": token, "logprob": lp, "bytes": list(token.encode())} for token, lp in ranked]
    chosen = top[0]
    logprobs = {"content": [{**chosen, "top_logprobs": top}], "refusal": None}
    return chat_completion(
        str(chosen["token"]),
        model=model,
        logprobs=logprobs,
        finish_reason="length",
        completion_tokens=1,
    )


def _pieces(text: str | Sequence[str] | None, size: int) -> list[str]:
    if text is None:
        return []
    if not isinstance(text, str):
        return list(text)
    return [text[i : i + size] for i in range(0, len(text), size)] or [""]


def chat_completion_chunks(
    content: str | Sequence[str] | None = None,
    *,
    reasoning_content: str | Sequence[str] | None = None,
    reasoning: str | Sequence[str] | None = None,
    tool_calls: Sequence[ToolCallSpec] | None = None,
    model: str = DEFAULT_MODEL,
    chunk_size: int = 8,
    finish_reason: str | None = None,
    usage: bool = True,
) -> list[dict[str, Any]]:
    """The ``chat.completion.chunk`` objects of a streamed completion, in order.

    Text given as a string is cut into ``chunk_size``-character deltas; a sequence of strings is
    used as the deltas themselves. Reasoning deltas come first, then content, then tool-call
    deltas (name first, arguments after), then the finish reason and, if ``usage``, a final
    chunk with no choices and the token counts (what ``stream_options.include_usage`` gives).
    """

    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {
            "id": "chatcmpl-loopback",
            "object": "chat.completion.chunk",
            "created": _CREATED,
            "model": model,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }

    chunks = [chunk({"role": "assistant", "content": ""})]
    chunks += [chunk({"reasoning_content": p}) for p in _pieces(reasoning_content, chunk_size)]
    chunks += [chunk({"reasoning": p}) for p in _pieces(reasoning, chunk_size)]
    content_pieces = _pieces(content, chunk_size)
    chunks += [chunk({"content": p}) for p in content_pieces]
    for i, call in enumerate(_chat_tool_calls(tool_calls or ())):
        head = {"index": i, "id": call["id"], "type": "function"}
        head["function"] = {"name": call["function"]["name"], "arguments": ""}
        chunks.append(chunk({"tool_calls": [head]}))
        for piece in _pieces(call["function"]["arguments"], chunk_size):
            chunks.append(chunk({"tool_calls": [{"index": i, "function": {"arguments": piece}}]}))
    if finish_reason is None:
        finish_reason = "tool_calls" if tool_calls else "stop"
    chunks.append(chunk({}, finish_reason))
    if usage:
        final = chunk({})
        final["choices"] = []
        final["usage"] = _usage(10, max(1, len(content_pieces)))
        chunks.append(final)
    return chunks


def _response_items(
    output_text: str | None,
    reasoning_summary: str | None,
    tool_calls: Sequence[ToolCallSpec],
) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    if reasoning_summary is not None:
        items.append(
            {
                "type": "reasoning",
                "id": "rs_loopback",
                "summary": [{"type": "summary_text", "text": reasoning_summary}],
            }
        )
    if output_text is not None:
        items.append(
            {
                "type": "message",
                "id": "msg_loopback",
                "status": "completed",
                "role": "assistant",
                "content": [
                    {"type": "output_text", "text": output_text, "annotations": [], "logprobs": []}
                ],
            }
        )
    for i, spec in enumerate(tool_calls):
        items.append(
            {
                "type": "function_call",
                "id": f"fc_{i}",
                "call_id": str(spec.get("id", f"call_{i}")),
                "name": str(spec["name"]),
                "arguments": _arguments(spec),
                "status": "completed",
            }
        )
    return items


def responses_response(
    output_text: str | None,
    *,
    reasoning_summary: str | None = None,
    tool_calls: Sequence[ToolCallSpec] | None = None,
    model: str = DEFAULT_MODEL,
    status: str = "completed",
) -> dict[str, Any]:
    """A Responses API ``response`` object: reasoning item, message item, function calls."""
    output = _response_items(output_text, reasoning_summary, tool_calls or ())
    output_tokens = max(1, len((output_text or "").split()))
    return {
        "id": "resp_loopback",
        "object": "response",
        "created_at": _CREATED,
        "status": status,
        "model": model,
        "output": output,
        "error": None,
        "incomplete_details": None,
        "instructions": None,
        "metadata": {},
        "parallel_tool_calls": True,
        "temperature": 1.0,
        "top_p": 1.0,
        "tool_choice": "auto",
        "tools": [],
        "usage": {
            "input_tokens": 10,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": output_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": 10 + output_tokens,
        },
    }


def responses_events(
    output_text: str | Sequence[str] | None,
    *,
    reasoning_summary: str | Sequence[str] | None = None,
    tool_calls: Sequence[ToolCallSpec] | None = None,
    model: str = DEFAULT_MODEL,
    chunk_size: int = 8,
) -> list[SSEEvent]:
    """The SSE events of a streamed Responses API call, ending with ``response.completed``.

    The sequence follows the API: ``response.created``, ``response.in_progress``, then per output
    item ``response.output_item.added``, its part/delta/done events
    (``response.reasoning_summary_text.delta``, ``response.output_text.delta``,
    ``response.function_call_arguments.delta``) and ``response.output_item.done``.
    """
    text_pieces = _pieces(output_text, chunk_size)
    summary_pieces = _pieces(reasoning_summary, chunk_size)
    full_text = "".join(text_pieces) if output_text is not None else None
    full_summary = "".join(summary_pieces) if reasoning_summary is not None else None
    final = responses_response(
        full_text, reasoning_summary=full_summary, tool_calls=tool_calls, model=model
    )
    events: list[SSEEvent] = []

    def emit(kind: str, **fields: Any) -> None:
        payload = {"type": kind, "sequence_number": len(events), **fields}
        events.append(SSEEvent(payload, event=kind))

    started = {**final, "status": "in_progress", "output": [], "usage": None}
    emit("response.created", response=started)
    emit("response.in_progress", response=started)
    for index, item in enumerate(final["output"]):
        ids = {"item_id": item["id"], "output_index": index}
        if item["type"] == "reasoning":
            emit("response.output_item.added", output_index=index, item={**item, "summary": []})
            summary_part: dict[str, Any] = {"type": "summary_text", "text": ""}
            emit("response.reasoning_summary_part.added", **ids, summary_index=0, part=summary_part)
            for piece in summary_pieces:
                emit("response.reasoning_summary_text.delta", **ids, summary_index=0, delta=piece)
            done_part = item["summary"][0]
            emit("response.reasoning_summary_text.done", **ids, summary_index=0, **done_part)
            emit("response.reasoning_summary_part.done", **ids, summary_index=0, part=done_part)
        elif item["type"] == "message":
            added = {**item, "status": "in_progress", "content": []}
            emit("response.output_item.added", output_index=index, item=added)
            text_part: dict[str, Any] = {"type": "output_text", "text": "", "annotations": []}
            text_part["logprobs"] = []
            emit("response.content_part.added", **ids, content_index=0, part=text_part)
            for piece in text_pieces:
                emit("response.output_text.delta", **ids, content_index=0, delta=piece, logprobs=[])
            emit("response.output_text.done", **ids, content_index=0, text=full_text, logprobs=[])
            emit("response.content_part.done", **ids, content_index=0, part=item["content"][0])
        else:
            added = {**item, "arguments": "", "status": "in_progress"}
            emit("response.output_item.added", output_index=index, item=added)
            for piece in _pieces(item["arguments"], chunk_size):
                emit("response.function_call_arguments.delta", **ids, delta=piece)
            emit("response.function_call_arguments.done", **ids, arguments=item["arguments"])
        emit("response.output_item.done", output_index=index, item=item)
    emit("response.completed", response=final)
    return events
