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
    """Reads and rewrites Responses API stream events.

    A refusal is a well-formed item lifecycle (``output_item.added``, its content part, the
    text or refusal delta, ``done`` events, ``response.completed``), so the SDK's
    ``responses.stream`` helper, which checks that every event belongs to an item it saw added,
    accepts it. ``buffered``: nothing was shown before the refusal, so it starts with
    ``response.created``; ``structured``: the caller asked for JSON output, so the refusal is a
    ``refusal`` content part, which the SDK's parsing leaves unparsed.
    """

    def __init__(
        self, context: RequestContext, *, buffered: bool = False, structured: bool = False
    ) -> None:
        self.context = context
        self._buffered = buffered
        self._structured = structured
        self._reasoning = ReasoningStream()
        self._response: Any = None  # the latest full Response an event carried
        self._created: Any = None  # the response.created event's response
        self._done_items: list[Any] = []
        self._early_done = False
        self._count = 0
        self._next_index = 0  # one past the highest output_index seen

    @property
    def usage(self) -> Any:
        """The usage the stream reported (on ``response.completed``), if any."""
        return getattr(self._response, "usage", None)

    def feed(self, event: Any) -> None:
        self._count += 1
        index = getattr(event, "output_index", None)
        if isinstance(index, int):
            self._next_index = max(self._next_index, index + 1)
        if getattr(event, "type", None) == "response.created":
            self._created = event.response
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
        from openai._models import construct_type
        from openai.types.responses import ResponseStreamEvent

        edit = Edit(replacement=text, drop_thinking=True)
        base = self._response
        output = edit_output(getattr(base, "output", None) or [], edit, structured=self._structured)
        item = output[-1]  # the refusal message
        index = len(output) - 1 if self._buffered else self._next_index
        payloads: list[dict[str, Any]] = []
        if self._buffered and self._created is not None:
            payloads.append({"type": "response.created", "response": _dump(self._created)})
        ids = {"item_id": item.id, "output_index": index, "content_index": 0}
        part = item.content[0].to_dict()
        empty = {**part, "text": ""} if part["type"] == "output_text" else {**part, "refusal": ""}
        kind = "response.output_text" if part["type"] == "output_text" else "response.refusal"
        payloads += [
            {
                "type": "response.output_item.added",
                "output_index": index,
                "item": {**item.to_dict(), "status": "in_progress", "content": []},
            },
            {"type": "response.content_part.added", **ids, "part": empty},
            {"type": f"{kind}.delta", **ids, "delta": text, "logprobs": []},
            {"type": f"{kind}.done", **ids, "logprobs": [], **_done_text(part, text)},
            {"type": "response.content_part.done", **ids, "part": part},
            {"type": "response.output_item.done", "output_index": index, "item": item.to_dict()},
        ]
        if base is not None:  # without any response event there is no response to complete
            final = base.model_copy(update={"output": output, "status": "completed"})
            payloads.append({"type": "response.completed", "response": _dump(final)})
        events = []
        for number, payload in enumerate(payloads, start=self._count):
            payload["sequence_number"] = number
            events.append(construct_type(type_=ResponseStreamEvent, value=payload))
        return events


def _dump(response: Any) -> dict[str, Any]:
    dumped: dict[str, Any] = response.to_dict()
    return dumped


def _done_text(part: dict[str, Any], text: str) -> dict[str, Any]:
    return {"text": text} if part["type"] == "output_text" else {"refusal": text}
