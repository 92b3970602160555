"""What the caller asked: the query, images and history of an OpenAI request, as plain data.

Chat Completions ``messages`` and Responses ``input`` both reduce to a :class:`RequestContext`.
Nothing here does I/O: image URLs become :class:`~traceguard.ImageRef` values that the auditor
loads (or refuses) under its own :class:`~traceguard.ImageAccess`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from traceguard._images import ImageRef
from traceguard._trace import Stage, ToolCall, Trace, Turn

from ._context import RequestContext, split_last_user, url_image_ref

__all__ = [
    "RequestContext",
    "chat_request_context",
    "output_trace",
    "responses_request_context",
]


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


def _as_mapping(value: Any) -> Mapping[str, Any]:
    """Request items may be dicts or SDK pydantic objects (an earlier response passed back)."""
    if isinstance(value, Mapping):
        return value
    dump = getattr(value, "model_dump", None)
    if callable(dump):
        dumped = dump(exclude_none=True)
        if isinstance(dumped, Mapping):
            return dumped
    return {}


def _content_parts(content: Any) -> tuple[str, tuple[ImageRef, ...]]:
    """Text and images of one message's content (a string or a list of typed parts)."""
    if content is None:
        return "", ()
    if isinstance(content, str):
        return content, ()
    texts: list[str] = []
    images: list[ImageRef] = []
    for raw in content if isinstance(content, Iterable) else ():
        part = _as_mapping(raw) if not isinstance(raw, str) else {"type": "text", "text": raw}
        kind = part.get("type")
        if kind in ("text", "input_text", "output_text") and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind in ("image_url", "input_image"):
            ref = url_image_ref(part.get("image_url"))
            if ref is not None:
                images.append(ref)
            elif part.get("file_id"):
                texts.append(f"[image file {part['file_id']}]")
        elif kind == "refusal" and isinstance(part.get("refusal"), str):
            texts.append(part["refusal"])
    return "\n".join(texts), tuple(images)


def _model_name(kwargs: Mapping[str, Any]) -> str | None:
    model = kwargs.get("model")
    return model if isinstance(model, str) else None


def chat_request_context(kwargs: Mapping[str, Any]) -> RequestContext:
    """The context of a ``chat.completions.create(**kwargs)`` call."""
    turns: list[Turn] = []
    for raw in kwargs.get("messages") or ():
        message = _as_mapping(raw)
        role = str(message.get("role", "user"))
        text, images = _content_parts(message.get("content"))
        calls = message.get("tool_calls") or ()
        lines = [text] if text else []
        for call in calls:
            function = _as_mapping(_as_mapping(call).get("function"))
            lines.append(f"[tool call] {function.get('name', '')}({function.get('arguments', '')})")
        turns.append(Turn(role=role, content="\n".join(lines), images=images))
    return split_last_user(turns, model=_model_name(kwargs), metadata={"api": "chat.completions"})


def _responses_item_turn(item: Mapping[str, Any]) -> Turn | None:
    kind = item.get("type", "message")
    if kind == "message" or "role" in item:
        text, images = _content_parts(item.get("content"))
        return Turn(role=str(item.get("role", "user")), content=text, images=images)
    if kind == "function_call":
        return Turn("assistant", f"[tool call] {item.get('name', '')}({item.get('arguments', '')})")
    if kind == "function_call_output":
        output = item.get("output")
        return Turn("tool", output if isinstance(output, str) else str(output))
    # Reasoning items passed back, web search calls, ...: earlier model output, not context the
    # auditor grades this turn on.
    return None


def responses_request_context(kwargs: Mapping[str, Any]) -> RequestContext:
    """The context of a ``responses.create(**kwargs)`` call."""
    turns: list[Turn] = []
    instructions = kwargs.get("instructions")
    if isinstance(instructions, str) and instructions:
        turns.append(Turn("system", instructions))
    payload = kwargs.get("input")
    if isinstance(payload, str):
        turns.append(Turn("user", payload))
    else:
        for raw in payload or ():
            turn = _responses_item_turn(_as_mapping(raw))
            if turn is not None:
                turns.append(turn)
    return split_last_user(turns, model=_model_name(kwargs), metadata={"api": "responses"})
