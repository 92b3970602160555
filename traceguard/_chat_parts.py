"""Content parts and tool calls in every API's form, as traceguard data.

The lower half of :mod:`traceguard._chat` (which re-exports everything here): what one message's
``content`` holds (:func:`content_parts`) and what one tool call says (:func:`tool_call`),
whichever API wrote them. ``strict`` raises :class:`ShapeError` for a wrong shape (offline
logs); lenient names what it cannot show the auditor (live requests). Nothing here does I/O.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from traceguard._exceptions import InputError
from traceguard._images import ImageRef
from traceguard._trace import ToolCall

__all__ = [
    "TOOL_USE_PARTS",
    "Content",
    "ImageReader",
    "ShapeError",
    "arguments_text",
    "as_items",
    "as_mapping",
    "content_parts",
    "request_image",
    "tool_call",
    "tool_calls",
    "unique_calls",
]


class ShapeError(InputError):
    """A record that is valid JSON but not a conversation of the expected format."""


ImageReader = Callable[[str], tuple[ImageRef, str]]
"""Turns an image reference (URL, data URI, or a path where allowed) into a ref and the name
under which output records show it."""


def request_image(reference: str) -> tuple[ImageRef, str]:
    """An image named in request content: a data URI, else a URL; never a local path.

    The name is left empty: live paths write no output records, and naming a data URI would
    mean decoding it here, before the auditor's :class:`~traceguard.ImageAccess` size limit.
    """
    if reference[:5].lower() == "data:":
        # Decoding waits for ImageRef.load, so bad base64 becomes this trace's INVALID_INPUT
        # verdict instead of an exception inside the integration.
        return ImageRef.from_data_uri(reference), ""
    return ImageRef.from_url(reference), ""


# -- content parts ----------------------------------------------------------------------------

_TEXT_PARTS = frozenset({"text", "input_text", "output_text"})
_IMAGE_PARTS = frozenset({"image", "image_url", "input_image"})
TOOL_USE_PARTS = frozenset({"tool_use", "tool_call"})
# Reasoning is read by traceguard._reasoning, separately from the content it sits in.
_REASONING_PARTS = frozenset({"reasoning", "thinking", "redacted_thinking"})
# Media the auditor cannot see: named in the text, so the auditor knows something is there.
_UNSEEN_MEDIA = frozenset({"input_audio", "audio", "file", "input_file", "document", "video"})


@dataclass(frozen=True)
class Content:
    """What one message's content holds, whichever block forms it was written in."""

    text: str = ""
    images: tuple[ImageRef, ...] = ()
    image_names: tuple[str, ...] = ()
    """How output records show each image (a resolved path, a URL, a content hash); empty
    strings where the reader names none (:func:`request_image`)."""
    tool_calls: tuple[ToolCall, ...] = ()
    """Tool calls written as content blocks (Anthropic ``tool_use``, LangChain ``tool_call``)."""


def as_mapping(value: Any) -> Mapping[str, Any] | None:
    """Request items may be dicts or SDK pydantic objects (an earlier response passed back)."""
    if isinstance(value, Mapping):
        return value
    dump = getattr(value, "model_dump", None)
    if callable(dump):
        dumped = dump(exclude_none=True)
        if isinstance(dumped, Mapping):
            return dumped
    return None


def as_items(value: Any, what: str, *, strict: bool) -> list[Any]:
    """``value`` as a list of items; strict mode insists on a JSON array."""
    if isinstance(value, list):
        return value
    if strict:
        raise ShapeError(f"{what} must be a JSON array, not {type(value).__name__}")
    if isinstance(value, Mapping) or as_mapping(value) is not None:
        return [value]
    if isinstance(value, Iterable) and not isinstance(value, (str, bytes)):
        return list(value)
    return []


def _data_uri(data: Any, mime: Any) -> str | None:
    if not isinstance(data, str) or not data:
        return None
    media = mime if isinstance(mime, str) and mime else "application/octet-stream"
    return f"data:{media};base64,{data}"


def _url(value: Any) -> str | None:
    """A URL written as a string or as OpenAI's ``{"url": ..., "detail": ...}``."""
    if isinstance(value, Mapping):
        value = value.get("url")
    return value if isinstance(value, str) and value else None


def _image_source(part: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """``(reference, file_id)`` of an image part, across the spellings of every API."""
    source = part.get("source")
    if isinstance(source, Mapping):  # Anthropic: {"source": {"type": "base64"|"url"|"file"}}
        kind = source.get("type")
        if kind == "base64":
            return _data_uri(source.get("data"), source.get("media_type")), None
        if kind == "file":
            return None, _text_or_none(source.get("file_id"))
        return _url(source.get("url")), None
    source_type = part.get("source_type")  # LangChain v0: base64 / url / id
    if source_type == "base64":
        return _data_uri(part.get("data"), part.get("mime_type")), None
    if source_type == "id":
        return None, _text_or_none(part.get("id"))
    for key in ("image_url", "url", "image"):  # OpenAI chat / Responses, LangChain v1, Qwen-VL
        found = _url(part.get(key))
        if found is not None:
            return found, None
    if part.get("base64") is not None:  # LangChain v1
        return _data_uri(part.get("base64"), part.get("mime_type")), None
    return None, _text_or_none(part.get("file_id"))


def _text_or_none(value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        return None
    return str(value) or None


def _media_placeholder(kind: str, part: Mapping[str, Any]) -> str:
    """``[audio]``, ``[file file-abc]``: what the auditor is told about media it cannot see."""
    nested = part.get("file")
    names = [part.get("file_id"), part.get("id")]
    if isinstance(nested, Mapping):  # OpenAI chat: {"type": "file", "file": {"file_id"|...}}
        names += [nested.get("file_id"), nested.get("filename")]
    named = next((n for n in map(_text_or_none, names) if n is not None), None)
    return f"[{kind} {named}]" if named else f"[{kind}]"


class _Parts:
    """Collects one message's parts; ``strict`` decides whether bad parts raise or show."""

    def __init__(self, strict: bool, images: ImageReader) -> None:
        self.strict = strict
        self.read_image = images
        self.texts: list[str] = []
        self.images: list[ImageRef] = []
        self.names: list[str] = []
        self.calls: list[ToolCall] = []

    def unreadable(self, problem: str, placeholder: str) -> None:
        if self.strict:
            raise ShapeError(problem)
        self.texts.append(placeholder)

    def add(self, raw: Any) -> None:
        if isinstance(raw, str):
            self.texts.append(raw)
            return
        part = as_mapping(raw)
        if part is None:
            name = type(raw).__name__
            self.unreadable(
                f"a content part must be a JSON object or a string, not {name}",
                f"[{name} content part not shown to the auditor]",
            )
            return
        kind = part.get("type")
        if kind in _TEXT_PARTS:
            self.text(part.get("text"), kind)
        elif kind == "refusal":
            self.text(part.get("refusal"), kind)
        elif kind in _IMAGE_PARTS:
            self.image(part)
        elif kind in TOOL_USE_PARTS:
            self.calls.append(tool_call(part, strict=self.strict))
        elif kind == "tool_result":  # Anthropic: a tool's answer inside a user message
            inner = content_parts(part.get("content"), strict=self.strict, images=self.read_image)
            if inner.text:
                self.texts.append(inner.text)
            self.images.extend(inner.images)
            self.names.extend(inner.image_names)
        elif kind in _REASONING_PARTS:
            pass
        elif kind in _UNSEEN_MEDIA:
            self.texts.append(_media_placeholder(str(kind), part))
        else:
            self.unreadable(
                f"unsupported content part type {kind!r}",
                f"[{str(kind)[:40]} content part not shown to the auditor]",
            )

    def text(self, value: Any, kind: str) -> None:
        if isinstance(value, str):
            self.texts.append(value)
        elif value is not None:
            if self.strict:
                raise ShapeError(f"a {kind!r} part's text must be a string")
            self.texts.append(str(value))

    def image(self, part: Mapping[str, Any]) -> None:
        reference, file_id = _image_source(part)
        if reference is not None:
            ref, shown = self.read_image(reference)
            self.images.append(ref)
            self.names.append(shown)
        elif file_id is not None:
            # A file uploaded to the provider: not readable here, but the auditor is told.
            self.texts.append(f"[image file {file_id}]")
        else:
            self.unreadable(
                f"an image part of type {part.get('type')!r} names no image",
                "[image with no readable source, not shown to the auditor]",
            )

    def content(self) -> Content:
        return Content(
            text="\n".join(t for t in self.texts if t),
            images=tuple(self.images),
            image_names=tuple(self.names),
            tool_calls=tuple(self.calls),
        )


def content_parts(content: Any, *, strict: bool, images: ImageReader = request_image) -> Content:
    """The text, images and content-block tool calls of one message's ``content``.

    ``content`` is a string, None, or a list of parts (dicts or SDK objects) in any API's form.
    Text parts are joined by newlines; reasoning parts are left to :mod:`traceguard._reasoning`.
    """
    if content is None:
        return Content()
    if isinstance(content, str):
        return Content(text=content)
    parts = _Parts(strict, images)
    for raw in as_items(content, "message content", strict=strict):
        parts.add(raw)
    return parts.content()


# -- tool calls -------------------------------------------------------------------------------


def arguments_text(arguments: Any) -> str:
    """Tool arguments as the auditor reads them: a string as written, else canonical JSON."""
    if arguments is None:
        return ""
    if isinstance(arguments, str):
        return arguments
    try:
        return json.dumps(arguments, ensure_ascii=False, sort_keys=True)
    except (TypeError, ValueError):
        return str(arguments)


def tool_call(raw: Any, *, strict: bool = False) -> ToolCall:
    """One tool call, in any API's shape.

    OpenAI chat ``{"function": {"name", "arguments"}}`` and ``{"custom": {"name", "input"}}``;
    Responses ``function_call`` / ``custom_tool_call`` items (``call_id``); Anthropic
    ``tool_use`` blocks (``input``); LangChain ``{"name", "args"}`` (parsed, or the raw string of
    an invalid call); the deprecated chat ``function_call``.
    """
    call = as_mapping(raw)
    if call is None:
        if strict:
            raise ShapeError(f"a tool call must be a JSON object, not {type(raw).__name__}")
        return ToolCall(name="unknown", arguments=str(raw))
    body = call
    for key in ("function", "custom"):
        nested = call.get(key)
        if isinstance(nested, Mapping):
            body = nested
            break
    arguments: Any = None
    for key in ("arguments", "args", "input"):
        if body.get(key) is not None:
            arguments = body[key]
            break
    name = body.get("name")
    call_id = call.get("call_id", call.get("id"))
    return ToolCall(
        name=name if isinstance(name, str) and name else "unknown",
        arguments=arguments_text(arguments),
        id=str(call_id) if call_id is not None else None,
    )


def tool_calls(raw: Any, *, strict: bool = False) -> tuple[ToolCall, ...]:
    """A list of tool calls (None is none)."""
    if raw is None:
        return ()
    calls = as_items(raw, "tool_calls", strict=strict)
    return tuple(tool_call(call, strict=strict) for call in calls)


def unique_calls(*groups: Sequence[ToolCall]) -> tuple[ToolCall, ...]:
    """Tool calls from several places of one message, each call once.

    LangChain keeps an Anthropic call both in ``tool_calls`` and as a ``tool_use`` content block:
    the same id is the same call.
    """
    calls: list[ToolCall] = []
    seen: set[str] = set()
    for group in groups:
        for call in group:
            if call.id is not None:
                if call.id in seen:
                    continue
                seen.add(call.id)
            calls.append(call)
    return tuple(calls)
