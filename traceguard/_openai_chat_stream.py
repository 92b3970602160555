"""Streamed Chat Completions: reading ``ChatCompletionChunk`` objects and rewriting them.

The :class:`~traceguard._streaming.StreamAdapter` for ``chat.completions.create(stream=True)``.
Every choice index is tracked on its own, since each is output the caller could read.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from traceguard._chat import RequestContext
from traceguard._openai_result import REASONING_FIELDS, output_trace
from traceguard._reasoning import ReasoningStream
from traceguard._streaming import Edit
from traceguard._trace import Stage, ToolCall, Trace

__all__ = ["ChatStreamAdapter"]


class _Choice:
    """One choice of a streamed chat completion."""

    __slots__ = ("calls", "early_done", "first_content", "increments", "reasoning")

    def __init__(self) -> None:
        self.reasoning = ReasoningStream()
        self.calls: dict[int, list[str]] = {}  # index -> [id, name, arguments]
        self.early_done = False
        self.first_content: int | None = None
        # Response text added by each fed chunk, so a redacted replay can keep the chunking;
        # None once the response stopped growing by appending (then the replay is one delta).
        self.increments: dict[int, str] | None = {}


class ChatStreamAdapter:
    """Reads and rewrites ``ChatCompletionChunk`` streams.

    ``structured``: the caller asked for JSON output, so a refusal is sent as ``delta.refusal``
    and ends with ``stop`` (the SDK's stream helper parses content, and raises on
    ``content_filter`` when a response format is given).
    """

    def __init__(
        self, context: RequestContext, *, track_increments: bool, structured: bool = False
    ) -> None:
        self.context = context
        self._track = track_increments
        self._structured = structured
        self._choices: dict[int, _Choice] = {}
        self._count = 0
        self._first: Any = None
        self.usage: Any = None
        """The usage the stream reported (a final chunk, with ``include_usage``)."""

    def feed(self, chunk: Any) -> None:
        if self._first is None:
            self._first = chunk
        if getattr(chunk, "usage", None) is not None:
            self.usage = chunk.usage
        position = self._count
        self._count += 1
        for choice in chunk.choices:
            state = self._choices.setdefault(choice.index, _Choice())
            delta = choice.delta
            if state.first_content is None and delta.content is not None:
                state.first_content = position
            before = state.reasoning.response if self._track else ""
            state.reasoning.feed_chat_delta(delta)
            if self._track and state.increments is not None:
                after = state.reasoning.response
                if after.startswith(before):
                    if len(after) > len(before):
                        state.increments[position] = after[len(before) :]
                else:
                    state.increments = None
            for call in delta.tool_calls or ():
                entry = state.calls.setdefault(call.index, ["", "", ""])
                if call.id:
                    entry[0] = call.id
                if call.function is not None:
                    entry[1] += call.function.name or ""
                    entry[2] += call.function.arguments or ""
            if delta.function_call is not None:
                entry = state.calls.setdefault(-1, ["", "", ""])
                entry[1] += delta.function_call.name or ""
                entry[2] += delta.function_call.arguments or ""

    def _trace(self, index: int, state: _Choice, *, stage: Stage) -> Trace:
        thinking, response = state.reasoning.result()
        calls = tuple(
            ToolCall(name=name, arguments=args, id=call_id or None)
            for _, (call_id, name, args) in sorted(state.calls.items())
        )
        if stage is Stage.THINKING:
            response, calls = "", ()
        elif stage is Stage.CHECKPOINT:
            calls = ()  # arguments still being written
        return output_trace(
            self.context,
            response=response,
            thinking=thinking,
            tool_calls=calls,
            stage=stage,
            choice=index,
        )

    def thinking_finished(self) -> list[Trace]:
        traces = []
        for index, state in self._choices.items():
            if not state.early_done and state.reasoning.thinking_done:
                state.early_done = True
                traces.append(self._trace(index, state, stage=Stage.THINKING))
        return traces

    def reasoning_streams(self) -> Mapping[int, ReasoningStream]:
        return {index: state.reasoning for index, state in self._choices.items()}

    def checkpoint_traces(self, choices: Sequence[int]) -> list[Trace]:
        return [self._trace(i, self._choices[i], stage=Stage.CHECKPOINT) for i in choices]

    def final_traces(self) -> list[Trace]:
        if not self._choices:
            # Nothing but metadata arrived; the query alone is still audited, never skipped.
            return [output_trace(self.context, response="", thinking=None)]
        return [self._trace(i, s, stage=Stage.FINAL) for i, s in sorted(self._choices.items())]

    def edited(self, chunks: Sequence[Any], edits: Mapping[int, Edit]) -> list[Any]:
        out: list[Any] = []
        pending_refusal = {i for i, e in edits.items() if e.replacement is not None}
        for position, chunk in enumerate(chunks):
            choices = []
            for choice in chunk.choices:
                edit = edits.get(choice.index, Edit())
                if edit.noop:
                    choices.append(choice)
                    continue
                if edit.replacement is not None and choice.finish_reason is not None:
                    out.append(self._synthetic(choice.index, edit.replacement, None))
                    pending_refusal.discard(choice.index)
                choices.append(self._edit_choice(choice, position, edit))
            if choices or not chunk.choices:
                edited = chunk.model_copy(update={"choices": choices})
                if position == 0 or not chunk.choices or any(_carries(c) for c in choices):
                    out.append(edited)
        for index in sorted(pending_refusal):
            out.append(self._synthetic(index, edits[index].replacement or "", "stop"))
        return out

    def _edit_choice(self, choice: Any, position: int, edit: Edit) -> Any:
        state = self._choices[choice.index]
        delta = choice.delta
        if edit.replacement is not None:
            update: dict[str, Any] = {"content": None, "tool_calls": None, "function_call": None}
            finish = "stop" if choice.finish_reason is not None else None
        else:
            update = {}
            if delta.content is not None:
                update["content"] = _response_piece(state, position)
            finish = choice.finish_reason
        new_delta = delta.model_copy(update=update)
        if new_delta.__pydantic_extra__ is not None:
            for name in REASONING_FIELDS:
                new_delta.__pydantic_extra__.pop(name, None)
        return choice.model_copy(update={"delta": new_delta, "finish_reason": finish})

    def _synthetic(self, index: int, text: str, finish: str | None) -> Any:
        from openai.types.chat import ChatCompletionChunk

        first = self._first
        field = "refusal" if self._structured else "content"
        return ChatCompletionChunk.model_validate(
            {
                "id": getattr(first, "id", "chatcmpl-traceguard"),
                "object": "chat.completion.chunk",
                "created": getattr(first, "created", 0),
                "model": getattr(first, "model", self.context.model or ""),
                "choices": [
                    {
                        "index": index,
                        "delta": {"role": "assistant", field: text},
                        "finish_reason": finish,
                    }
                ],
            }
        )

    def refusal(self, text: str) -> list[Any]:
        indices = sorted(self._choices) or [0]
        finish = "stop" if self._structured else "content_filter"
        return [self._synthetic(i, text, finish) for i in indices]


def _response_piece(state: _Choice, position: int) -> str | None:
    """The response text chunk ``position`` of a choice carries once its thinking is removed."""
    response = state.reasoning.response
    if state.increments is not None and "".join(state.increments.values()) == response:
        return state.increments.get(position)
    # The split moved text between thinking and response after the fact (a late </think>):
    # replay the whole response as the first content delta instead.
    return response if position == state.first_content else None


def _carries(choice: Any) -> bool:
    """True when a chat chunk choice still says something after editing."""
    delta = choice.delta
    return bool(
        choice.finish_reason is not None
        or delta.content
        or delta.role
        or delta.tool_calls
        or delta.function_call
        or delta.refusal
        or delta.__pydantic_extra__
    )
