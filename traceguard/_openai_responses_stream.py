"""Streamed Responses API calls: reading ``response.*`` events and rewriting them.

The :class:`~traceguard._streaming.StreamAdapter` for ``responses.create(stream=True)``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from traceguard._chat import RequestContext
from traceguard._openai_result import (
    edit_output,
    edit_response,
    output_trace,
    responses_tool_calls,
)
from traceguard._reasoning import ReasoningStream, extract_responses_output
from traceguard._streaming import Edit
from traceguard._trace import Stage, Trace

__all__ = ["ResponsesStreamAdapter"]

_RESPONSE_EVENTS = frozenset(
    {
        "response.created",
        "response.in_progress",
        "response.completed",
        "response.incomplete",
        "response.failed",
        "response.queued",
    }
)


class ResponsesStreamAdapter:
    """Reads and rewrites Responses API stream events."""

    def __init__(self, context: RequestContext) -> None:
        self.context = context
        self._reasoning = ReasoningStream()
        self._response: Any = None  # the latest full Response an event carried
        self._done_items: list[Any] = []
        self._early_done = False
        self._count = 0

    def feed(self, event: Any) -> None:
        self._count += 1
        kind = getattr(event, "type", None)
        self._reasoning.feed_responses_event(event)
        if kind in _RESPONSE_EVENTS:
            self._response = event.response
        elif kind == "response.output_item.done":
            self._done_items.append(event.item)

    def thinking_finished(self) -> list[Trace]:
        if self._early_done or not self._reasoning.thinking_done:
            return []
        self._early_done = True
        return [
            output_trace(
                self.context,
                response="",
                thinking=self._reasoning.thinking,
                stage=Stage.THINKING,
            )
        ]

    def reasoning_streams(self) -> Mapping[int, ReasoningStream]:
        return {0: self._reasoning}

    def checkpoint_traces(self, choices: Sequence[int]) -> list[Trace]:
        thinking, text = self._reasoning.result()
        return [
            output_trace(self.context, response=text, thinking=thinking, stage=Stage.CHECKPOINT)
            for _ in choices[:1]
        ]

    def final_traces(self) -> list[Trace]:
        output = getattr(self._response, "output", None)
        if getattr(self._response, "status", None) == "completed" and output:
            thinking, text = extract_responses_output(output)
            calls = responses_tool_calls(output)
        else:  # cut short: what the deltas said, plus the items that finished
            thinking, text = self._reasoning.result()
            calls = responses_tool_calls(self._done_items)
        return [output_trace(self.context, response=text, thinking=thinking, tool_calls=calls)]

    def edited(self, chunks: Sequence[Any], edits: Mapping[int, Edit]) -> list[Any]:
        edit = edits.get(0, Edit())
        if edit.replacement is not None:
            return self.refusal(edit.replacement)
        out = []
        for event in chunks:
            kind = str(getattr(event, "type", ""))
            if kind.startswith("response.reasoning"):
                continue
            item = getattr(event, "item", None)
            if item is not None and getattr(item, "type", None) == "reasoning":
                continue
            if kind in _RESPONSE_EVENTS:
                event = event.model_copy(update={"response": edit_response(event.response, edit)})
            out.append(event)
        return out

    def refusal(self, text: str) -> list[Any]:
        from openai.types.responses import ResponseCompletedEvent, ResponseTextDeltaEvent

        edit = Edit(replacement=text, drop_thinking=True)
        base = self._response
        events: list[Any] = [
            ResponseTextDeltaEvent(
                type="response.output_text.delta",
                item_id="msg_traceguard",
                output_index=0,
                content_index=0,
                delta=text,
                logprobs=[],
                sequence_number=self._count,
            )
        ]
        if base is None:  # no response.created arrived: the text delta is all there is to say
            return events
        final = base.model_copy(
            update={"output": edit_output(base.output or [], edit), "status": "completed"}
        )
        events.append(
            ResponseCompletedEvent(
                type="response.completed", response=final, sequence_number=self._count + 1
            )
        )
        return events
