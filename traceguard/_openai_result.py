"""What the model answered: traces out of SDK results, and decisions applied back onto them.

Pure functions over the ``openai`` SDK's pydantic objects (``ChatCompletion``, ``Response``),
shared by the Python wrapper (:mod:`traceguard.integrations.openai`) and the proxy
(:mod:`traceguard.proxy`); the SDK is imported only where an object must be built.
Edits go through ``model_copy`` so a redacted result has the caller's expected type, and the
original object is never mutated (an allowed result is returned as the very same object).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from traceguard._chat import RequestContext, chat_message, tool_call
from traceguard._reasoning import extract_responses_output
from traceguard._streaming import Edit
from traceguard._trace import Stage, ToolCall, Trace

if TYPE_CHECKING:
    from openai.types.chat import ChatCompletion, ChatCompletionMessage
    from openai.types.responses import Response, ResponseOutputItem

__all__ = [
    "REASONING_FIELDS",
    "chat_traces",
    "edit_chat",
    "edit_message",
    "edit_output",
    "edit_response",
    "REFUSAL_ITEM_ID",
    "output_trace",
    "refusal_item",
    "response_trace",
    "responses_tool_calls",
]

REASONING_FIELDS = ("reasoning_content", "reasoning", "reasoning_details")
"""Provider extras on chat messages and deltas that carry the thinking."""


def output_trace(
    context: RequestContext,
    *,
    response: str,
    thinking: str | None,
    tool_calls: tuple[ToolCall, ...] = (),
    stage: Stage = Stage.FINAL,
    choice: int = 0,
) -> Trace:
    """The trace of one output at ``stage``; ``choice`` (its index) goes in the metadata."""
    return context.trace(
        response=response,
        thinking=thinking,
        tool_calls=tool_calls,
        stage=stage,
        metadata={"choice": choice},
    )


def chat_traces(context: RequestContext, completion: ChatCompletion) -> list[Trace]:
    """One trace per choice: every choice is output the caller could read."""
    traces = []
    for choice in completion.choices:
        # The request's parser reads the answer too: thinking, text, tool calls (function,
        # custom, and the deprecated function_call) come out as they would from a log.
        message = chat_message(choice.message, strict=False)
        traces.append(
            output_trace(
                context,
                response=message.text,
                thinking=message.thinking,
                tool_calls=message.tool_calls,
                choice=choice.index,
            )
        )
    return traces


def edit_message(
    message: ChatCompletionMessage, trace: Trace, edit: Edit, *, structured: bool = False
) -> ChatCompletionMessage:
    """``message`` with ``edit`` applied; the same object when the edit is a no-op.

    ``structured``: the caller asked for JSON output, so a replacement goes in the ``refusal``
    field (content None), where the SDK's ``parse`` looks for a refusal instead of parsing it.
    """
    if edit.noop:
        return message
    update: dict[str, Any] = {}
    if edit.replacement is not None:
        # A refusal stands alone: tool calls planned by a withheld answer must not run.
        update.update(tool_calls=None, function_call=None)
        if structured:
            update.update(content=None, refusal=edit.replacement)
        else:
            update["content"] = edit.replacement
    elif message.content is not None and message.content != trace.response:
        # The content held more than the response: inline <think> tags. Keep only the answer.
        update["content"] = trace.response
    copy = message.model_copy(update=update)
    # model_copy gives the copy its own extras dict, so the original keeps its fields.
    if copy.__pydantic_extra__ is not None:
        for name in REASONING_FIELDS:
            copy.__pydantic_extra__.pop(name, None)
    return copy


def edit_chat(
    completion: ChatCompletion,
    traces: Sequence[Trace],
    edits: Sequence[Edit],
    *,
    structured: bool = False,
) -> ChatCompletion:
    """The completion with each choice edited; the same object when nothing changes."""
    if all(edit.noop for edit in edits):
        return completion
    choices = [
        choice.model_copy(
            update={"message": edit_message(choice.message, trace, edit, structured=structured)}
        )
        for choice, trace, edit in zip(completion.choices, traces, edits, strict=True)
    ]
    return completion.model_copy(update={"choices": choices})


def responses_tool_calls(items: Sequence[Any]) -> tuple[ToolCall, ...]:
    """Function calls among Responses output items."""
    return tuple(
        tool_call(item)
        for item in items
        if getattr(item, "type", None) in ("function_call", "custom_tool_call")
    )


def response_trace(context: RequestContext, response: Response) -> Trace:
    """The trace of one Responses API result."""
    thinking, text = extract_responses_output(response.output)
    return output_trace(
        context, response=text, thinking=thinking, tool_calls=responses_tool_calls(response.output)
    )


REFUSAL_ITEM_ID = "msg_traceguard"


def refusal_item(text: str, *, structured: bool = False) -> ResponseOutputItem:
    """A Responses output message holding ``text`` (as a refusal part when ``structured``)."""
    from openai.types.responses import (
        ResponseOutputMessage,
        ResponseOutputRefusal,
        ResponseOutputText,
    )

    part: ResponseOutputText | ResponseOutputRefusal
    if structured:
        part = ResponseOutputRefusal(type="refusal", refusal=text)
    else:
        part = ResponseOutputText(type="output_text", text=text, annotations=[])
    return ResponseOutputMessage(
        id=REFUSAL_ITEM_ID,
        type="message",
        role="assistant",
        status="completed",
        content=[part],
    )


# Output items that make up the answer; a refusal replaces all of them, tool calls included.
# Hosted tool calls (web search, ...) already ran upstream and stay as a record.
_ANSWER_ITEMS = frozenset({"message", "function_call", "custom_tool_call", "reasoning"})


def edit_output(items: Sequence[Any], edit: Edit, *, structured: bool = False) -> list[Any]:
    """Responses output items with ``edit`` applied."""
    if edit.replacement is not None:
        kept = [item for item in items if getattr(item, "type", None) not in _ANSWER_ITEMS]
        return [*kept, refusal_item(edit.replacement, structured=structured)]
    return [item for item in items if getattr(item, "type", None) != "reasoning"]


def edit_response(response: Response, edit: Edit, *, structured: bool = False) -> Response:
    """``response`` with ``edit`` applied; the same object when the edit is a no-op."""
    if edit.noop:
        return response
    output = edit_output(response.output, edit, structured=structured)
    return response.model_copy(update={"output": output})
