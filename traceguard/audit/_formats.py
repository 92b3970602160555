"""Per-format parsing of one JSON record into messages (openai, sharegpt, langchain).

Each function takes one decoded JSON value and returns what :mod:`traceguard.audit.readers` needs;
a value of the wrong shape raises :class:`ShapeError`, which the reader turns into an
``invalid_input`` output line. Messages are read by :mod:`traceguard._chat` in strict mode, the
parser the live integrations use too, so a content block means the same offline and live; only
the image reader differs (paths resolve under the reader's root here, never in a live request).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from traceguard import _chat
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


def _require_mapping(value: Any, what: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ShapeError(f"{what} must be a JSON object, not {type(value).__name__}")
    return value


def _require_list(value: Any, what: str) -> Sequence[Any]:
    if not isinstance(value, list):
        raise ShapeError(f"{what} must be a JSON array, not {type(value).__name__}")
    return value


def chat_message(raw: Any, resolver: ImageResolver) -> Message:
    """One OpenAI chat message (``role``, ``content``, ``reasoning_content``, ``tool_calls``)."""
    return _chat.chat_message(raw, strict=True, images=resolver.resolve)


def langchain_message(raw: Any, resolver: ImageResolver) -> Message:
    """One message as written by langchain-core's ``messages_to_dict``."""
    message = _require_mapping(raw, "a LangChain message")
    data = _require_mapping(message.get("data"), "a LangChain message's 'data'")
    return _chat.langchain_message(message.get("type"), data, strict=True, images=resolver.resolve)


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
