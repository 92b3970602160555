"""Per-format parsing of one JSON record into messages (openai, sharegpt, langchain, guardtrace).

Each function takes one decoded JSON value and returns what :mod:`traceguard.audit.readers` needs;
a value of the wrong shape raises :class:`ShapeError`, which the reader turns into an
``invalid_input`` output line. Reasoning is separated from the answer by
:mod:`traceguard._reasoning`, the same code the live integrations use.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from traceguard._images import ImageRef
from traceguard._trace import ToolCall
from traceguard.audit._messages import ImageResolver, Message, ShapeError

__all__ = [
    "chat_message",
    "langchain_message",
    "sharegpt_messages",
]

_IMAGE_PLACEHOLDER = re.compile(r"<image>\n?")
_SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "model": "assistant",
    "system": "system",
    "function_call": "assistant",
    "observation": "tool",
    "tool": "tool",
}
_LANGCHAIN_ROLES = {
    "human": "user",
    "ai": "assistant",
    "system": "system",
    "tool": "tool",
    "function": "tool",
    "chat": "user",
}


def _require_mapping(value: Any, what: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ShapeError(f"{what} must be a JSON object, not {type(value).__name__}")
    return value


def _require_list(value: Any, what: str) -> Sequence[Any]:
    if not isinstance(value, list):
        raise ShapeError(f"{what} must be a JSON array, not {type(value).__name__}")
    return value


def _content_parts(
    content: Any, resolver: ImageResolver
) -> tuple[str, tuple[ImageRef, ...], tuple[str, ...]]:
    """Text, images and image names from OpenAI/LangChain-style content (string or parts)."""
    if content is None:
        return "", (), ()
    if isinstance(content, str):
        return content, (), ()
    texts: list[str] = []
    images: list[ImageRef] = []
    names: list[str] = []
    for part in _require_list(content, "message content"):
        if isinstance(part, str):
            texts.append(part)
            continue
        part = _require_mapping(part, "a content part")
        kind = part.get("type")
        if kind in ("text", "input_text", "output_text"):
            texts.append(str(part.get("text", "")))
        elif kind == "refusal":
            texts.append(str(part.get("refusal", "")))
        elif kind in ("image_url", "input_image", "image"):
            url = _image_source(part)
            ref, shown = resolver.resolve(url)
            images.append(ref)
            names.append(shown)
        elif kind in ("reasoning", "thinking"):
            # A reasoning block in content: the caller extracts it separately, not as text.
            continue
        else:
            raise ShapeError(f"unsupported content part type {kind!r}")
    return "\n".join(t for t in texts if t), tuple(images), tuple(names)


def _image_source(part: Mapping[str, Any]) -> Any:
    """The URL/path/data URI of an image part, across OpenAI and LangChain spellings."""
    value = part.get("image_url", part.get("url", part.get("image")))
    if isinstance(value, Mapping):
        value = value.get("url")
    if value is None and "base64" in part:
        mime = part.get("mime_type", "image/png")
        value = f"data:{mime};base64,{part['base64']}"
    return value


def _tool_calls(raw: Any) -> tuple[ToolCall, ...]:
    if raw is None:
        return ()
    calls: list[ToolCall] = []
    for call in _require_list(raw, "tool_calls"):
        call = _require_mapping(call, "a tool call")
        function = call.get("function")
        if isinstance(function, Mapping):  # OpenAI shape
            name, arguments = function.get("name"), function.get("arguments", "")
        else:  # LangChain shape: args already parsed
            name, arguments = call.get("name"), call.get("args", call.get("arguments", ""))
        if not isinstance(arguments, str):
            import json

            arguments = json.dumps(arguments, ensure_ascii=False, sort_keys=True)
        call_id = call.get("id")
        calls.append(
            ToolCall(
                name=str(name or "unknown"),
                arguments=arguments,
                id=str(call_id) if call_id is not None else None,
            )
        )
    return tuple(calls)


def chat_message(raw: Any, resolver: ImageResolver) -> Message:
    """One OpenAI chat message (``role``, ``content``, ``reasoning_content``, ``tool_calls``)."""
    from traceguard._reasoning import extract_chat_message

    message = _require_mapping(raw, "a message")
    role = message.get("role")
    if role == "developer":
        role = "system"
    if role == "function":
        role = "tool"
    if not isinstance(role, str):
        raise ShapeError("a message needs a string 'role'")
    if role != "assistant":
        text, images, names = _content_parts(message.get("content"), resolver)
        return Message(role=role, text=text, images=images, image_names=names)
    _, images, names = _content_parts(message.get("content"), resolver)
    thinking, response = extract_chat_message(message)
    return Message(
        role="assistant",
        text=response,
        thinking=thinking,
        tool_calls=_tool_calls(message.get("tool_calls")),
        images=images,
        image_names=names,
    )


def langchain_message(raw: Any, resolver: ImageResolver) -> Message:
    """One message as written by langchain-core's ``messages_to_dict``."""
    from traceguard._reasoning import extract_langchain_message

    message = _require_mapping(raw, "a LangChain message")
    kind = message.get("type")
    data = _require_mapping(message.get("data"), "a LangChain message's 'data'")
    role = _LANGCHAIN_ROLES.get(
        str(kind).lower().removesuffix("messagechunk").removesuffix("message")
    )
    if role is None:
        raise ShapeError(f"unknown LangChain message type {kind!r}")
    if role == "user" and kind == "chat":
        role = str(data.get("role", "user"))
    text, images, names = _content_parts(data.get("content"), resolver)
    if role != "assistant":
        return Message(role=role, text=text, images=images, image_names=names)
    thinking, response = extract_langchain_message(data)
    return Message(
        role="assistant",
        text=response,
        thinking=thinking,
        tool_calls=_tool_calls(data.get("tool_calls")),
        images=images,
        image_names=names,
    )


def sharegpt_messages(record: Mapping[str, Any], resolver: ImageResolver) -> list[Message]:
    """The messages of a ShareGPT/LLaVA record; ``<image>`` placeholders take the images in order.

    Images with no placeholder left to take them go to the first user turn, as LLaVA does.
    """
    from traceguard._reasoning import split_think_tags

    turns = _require_list(record.get("conversations"), "'conversations'")
    raw_images = record.get("images", record.get("image"))
    if raw_images is None:
        sources: list[Any] = []
    elif isinstance(raw_images, list):
        sources = list(raw_images)
    else:
        sources = [raw_images]
    resolved = [resolver.resolve(src) for src in sources]
    remaining = list(resolved)
    messages: list[Message] = []
    for turn in turns:
        turn = _require_mapping(turn, "a conversation turn")
        speaker = turn.get("from", turn.get("role"))
        role = _SHAREGPT_ROLES.get(str(speaker).lower())
        if role is None:
            raise ShapeError(f"unknown speaker {speaker!r} in 'conversations'")
        value = turn.get("value", turn.get("content", ""))
        if not isinstance(value, str):
            raise ShapeError("a conversation turn's 'value' must be a string")
        placeholders = len(_IMAGE_PLACEHOLDER.findall(value))
        taken = remaining[:placeholders]
        del remaining[:placeholders]
        text = _IMAGE_PLACEHOLDER.sub("", value).strip()
        if role == "assistant":
            thinking, response = split_think_tags(text)
            messages.append(Message(role=role, text=response, thinking=thinking))
        else:
            messages.append(
                Message(
                    role=role,
                    text=text,
                    images=tuple(ref for ref, _ in taken),
                    image_names=tuple(name for _, name in taken),
                )
            )
    if remaining:
        first_user = next((i for i, m in enumerate(messages) if m.role == "user"), None)
        if first_user is None:
            raise ShapeError("the record has images but no human turn to attach them to")
        m = messages[first_user]
        messages[first_user] = Message(
            role="user",
            text=m.text,
            images=m.images + tuple(ref for ref, _ in remaining),
            image_names=m.image_names + tuple(name for _, name in remaining),
        )
    return messages
