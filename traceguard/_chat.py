"""Conversations as traceguard data: the one parser every path reads messages with.

The offline log readers, the OpenAI and LangChain integrations, the proxy and the agent
middleware all reduce a conversation to :class:`Message` values here, so a content block means
the same thing wherever it passes:

- :func:`content_parts`: text, refusals, images in every form (OpenAI chat ``image_url``,
  Responses ``input_image``, Anthropic ``source``, LangChain v0 ``source_type`` and v1
  ``base64``/``url``/``file_id``), provider file ids, Anthropic ``tool_use`` / ``tool_result``;
- :func:`tool_call`: a tool call in the OpenAI chat, Responses, Anthropic or LangChain shape;
- :func:`chat_message`, :func:`responses_input`, :func:`langchain_message`: one message (or
  input list) of each API, dicts and SDK objects alike;
- :func:`split_last_user`: the last user message is the query, everything else is history.

Two modes. ``strict`` is for logs read offline: a record of the wrong shape raises
:class:`ShapeError`, which the reader turns into an ``invalid_input`` line. Lenient is for live
requests, which the provider already accepted: it never raises, and a part it cannot show the
auditor becomes a bracketed placeholder in the text instead of vanishing.

Where an image may be read from is the caller's decision (``images=``). Request content is
caller-controlled, so :func:`request_image` never reads a string as a local path: anything but a
data URI is a URL, which the auditor's :class:`~traceguard.ImageAccess` fetches or refuses. Only
the offline readers resolve paths, through their root-confined resolver. Nothing here does I/O.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from traceguard._exceptions import InputError
from traceguard._images import ImageRef
from traceguard._reasoning import extract_chat_message, extract_langchain_message
from traceguard._trace import Stage, ToolCall, Trace, Turn

__all__ = [
    "Content",
    "ImageReader",
    "Message",
    "RequestContext",
    "ShapeError",
    "arguments_text",
    "chat_message",
    "content_parts",
    "langchain_message",
    "langchain_tool_calls",
    "normalize_role",
    "request_image",
    "responses_input",
    "split_last_user",
    "tool_call",
    "tool_calls",
]


class ShapeError(InputError):
    """A record that is valid JSON but not a conversation of the expected format."""


ImageReader = Callable[[str], tuple[ImageRef, str]]
"""Turns an image reference (URL, data URI, or a path where allowed) into a ref and the name
under which output records show it."""


def request_image(reference: str) -> tuple[ImageRef, str]:
    """An image named in request content: a data URI, else a URL; never a local path."""
    if reference[:5].lower() == "data:":
        # Decoding waits for ImageRef.load, so bad base64 becomes this trace's INVALID_INPUT
        # verdict instead of an exception inside the integration.
        ref = ImageRef.from_data_uri(reference)
    else:
        ref = ImageRef.from_url(reference)
    return ref, ref.identity()


# -- roles ------------------------------------------------------------------------------------

ROLES = frozenset({"system", "user", "assistant", "tool"})
_ROLE_NAMES = {
    "system": "system",
    "developer": "system",
    "user": "user",
    "human": "user",
    "assistant": "assistant",
    "ai": "assistant",
    "tool": "tool",
    "function": "tool",
}


def normalize_role(raw: Any, *, strict: bool) -> str:
    """One of ``system``, ``user``, ``assistant``, ``tool`` for the names the APIs use.

    Lenient mode keeps an unknown role as written (a LangChain ``ChatMessage`` may carry any),
    and reads a missing one as ``user``, as the chat APIs do.
    """
    if isinstance(raw, str) and raw.lower() in _ROLE_NAMES:
        return _ROLE_NAMES[raw.lower()]
    if strict:
        if not isinstance(raw, str):
            raise ShapeError("a message needs a string 'role'")
        raise ShapeError(f"unknown message role {raw!r}")
    return raw if isinstance(raw, str) and raw else "user"


# -- content parts ----------------------------------------------------------------------------

_TEXT_PARTS = frozenset({"text", "input_text", "output_text"})
_IMAGE_PARTS = frozenset({"image", "image_url", "input_image"})
_TOOL_USE_PARTS = frozenset({"tool_use", "tool_call"})
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
    """How output records show each image (a resolved path, a URL, a content hash)."""
    tool_calls: tuple[ToolCall, ...] = ()
    """Tool calls written as content blocks (Anthropic ``tool_use``, LangChain ``tool_call``)."""


def _mapping(value: Any) -> Mapping[str, Any] | None:
    """Request items may be dicts or SDK pydantic objects (an earlier response passed back)."""
    if isinstance(value, Mapping):
        return value
    dump = getattr(value, "model_dump", None)
    if callable(dump):
        dumped = dump(exclude_none=True)
        if isinstance(dumped, Mapping):
            return dumped
    return None


def _items(value: Any, what: str, *, strict: bool) -> list[Any]:
    """``value`` as a list of items; strict mode insists on a JSON array."""
    if isinstance(value, list):
        return value
    if strict:
        raise ShapeError(f"{what} must be a JSON array, not {type(value).__name__}")
    if isinstance(value, Mapping) or _mapping(value) is not None:
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
        part = _mapping(raw)
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
        elif kind in _TOOL_USE_PARTS:
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
    for raw in _items(content, "message content", strict=strict):
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
    call = _mapping(raw)
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
    calls = _items(raw, "tool_calls", strict=strict)
    return tuple(tool_call(call, strict=strict) for call in calls)


def _joined(*groups: Sequence[ToolCall]) -> tuple[ToolCall, ...]:
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


# -- messages ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Message:
    """One message of a conversation, whatever API or log format it came from."""

    role: str
    text: str = ""
    """For the assistant: the answer without its thinking."""
    images: tuple[ImageRef, ...] = ()
    thinking: str | None = None
    tool_calls: tuple[ToolCall, ...] = ()
    image_names: tuple[str, ...] = field(default=(), compare=False)

    def turn(self) -> Turn:
        """This message as history: its text, then one line per tool call.

        An assistant's earlier thinking is left out: the auditor grades this turn's thinking
        against the conversation as the user saw it.
        """
        lines = [self.text] if self.text else []
        lines.extend(call.render() for call in self.tool_calls)
        return Turn(role=self.role, content="\n".join(lines), images=self.images)


def _get(fields: Any, key: str) -> Any:
    if isinstance(fields, Mapping):
        return fields.get(key)
    return getattr(fields, key, None)


def chat_message(raw: Any, *, strict: bool, images: ImageReader = request_image) -> Message:
    """One OpenAI-style chat message (``role``, ``content``, ``tool_calls``, reasoning fields).

    Also the shape of assistant outputs (``ChatCompletionMessage``) and of Responses input
    messages; a dict or an SDK object.
    """
    message = _mapping(raw)
    if message is None:
        if strict:
            raise ShapeError(f"a message must be a JSON object, not {type(raw).__name__}")
        message = {"role": "user", "content": f"[unreadable {type(raw).__name__} message]"}
    role = normalize_role(message.get("role"), strict=strict)
    content = content_parts(message.get("content"), strict=strict, images=images)
    if role != "assistant":
        return Message(
            role=role,
            text=content.text,
            images=content.images,
            tool_calls=content.tool_calls,
            image_names=content.image_names,
        )
    thinking, response = extract_chat_message(message)
    legacy = message.get("function_call")  # the deprecated single-function form
    return Message(
        role="assistant",
        text=response,
        thinking=thinking,
        tool_calls=_joined(
            tool_calls(message.get("tool_calls"), strict=strict),
            (tool_call(legacy, strict=strict),) if legacy is not None else (),
            content.tool_calls,
        ),
        images=content.images,
        image_names=content.image_names,
    )


_RESPONSES_CALLS = frozenset({"function_call", "custom_tool_call"})
_RESPONSES_RESULTS = frozenset({"function_call_output", "custom_tool_call_output"})


def responses_input(
    payload: Any, *, instructions: Any = None, images: ImageReader = request_image
) -> list[Message]:
    """The messages of a Responses API request (``instructions`` and ``input``); lenient.

    Reasoning items passed back, hosted tool calls and other items are earlier model output,
    not context the auditor grades this turn on, and are left out.
    """
    messages: list[Message] = []
    if isinstance(instructions, str) and instructions:
        messages.append(Message(role="system", text=instructions))
    if isinstance(payload, str):
        messages.append(Message(role="user", text=payload))
        return messages
    for raw in _items(payload, "input", strict=False) if payload is not None else ():
        item = _mapping(raw)
        if item is None:
            continue
        kind = item.get("type", "message")
        if kind == "message" or "role" in item:
            messages.append(chat_message(item, strict=False, images=images))
        elif kind in _RESPONSES_CALLS:
            call = tool_call(item)
            if messages and messages[-1].role == "assistant":
                # A response's message and the calls it made arrive as separate items; they are
                # one turn, as a chat message with tool_calls is.
                last = messages[-1]
                messages[-1] = dataclasses.replace(last, tool_calls=(*last.tool_calls, call))
            else:
                messages.append(Message(role="assistant", tool_calls=(call,)))
        elif kind in _RESPONSES_RESULTS:
            output = content_parts(item.get("output"), strict=False, images=images)
            messages.append(
                Message(
                    role="tool",
                    text=output.text,
                    images=output.images,
                    image_names=output.image_names,
                )
            )
    return messages


_LANGCHAIN_TYPES = {
    "human": "user",
    "ai": "assistant",
    "system": "system",
    "developer": "system",
    "tool": "tool",
    "function": "tool",
    "chat": "chat",
}


def langchain_tool_calls(fields: Any) -> tuple[ToolCall, ...]:
    """The tool calls of a LangChain AI message: parsed, invalid, and as content blocks."""
    content = _get(fields, "content")
    blocks = [
        tool_call(block)
        for block in (content if isinstance(content, list) else ())
        if isinstance(block, Mapping) and block.get("type") in _TOOL_USE_PARTS
    ]
    return _langchain_calls(fields, blocks, strict=False)


def _langchain_calls(
    fields: Any, blocks: Sequence[ToolCall], *, strict: bool
) -> tuple[ToolCall, ...]:
    return _joined(
        tool_calls(_get(fields, "tool_calls"), strict=strict),
        # Calls whose arguments did not parse are still what the model said: audit them too.
        tool_calls(_get(fields, "invalid_tool_calls"), strict=strict),
        blocks,
    )


def langchain_message(
    kind: Any, fields: Any, *, strict: bool, images: ImageReader = request_image
) -> Message:
    """One LangChain message, from its ``type`` and its fields.

    ``fields`` is a ``BaseMessage`` (live) or the ``data`` mapping written by langchain-core's
    ``messages_to_dict`` (offline); ``kind`` is ``message.type`` or the dump's ``type``.
    """
    base = str(kind).lower().removesuffix("messagechunk").removesuffix("message")
    role = _LANGCHAIN_TYPES.get(base)
    if role is None:
        if strict:
            raise ShapeError(f"unknown LangChain message type {kind!r}")
        role = normalize_role(_get(fields, "role") or str(kind), strict=False)
    elif role == "chat":
        role = normalize_role(_get(fields, "role") or "user", strict=strict)
    content = content_parts(_get(fields, "content"), strict=strict, images=images)
    if role != "assistant":
        return Message(
            role=role,
            text=content.text,
            images=content.images,
            tool_calls=content.tool_calls,
            image_names=content.image_names,
        )
    thinking, response = extract_langchain_message(fields)
    return Message(
        role="assistant",
        text=response,
        thinking=thinking,
        tool_calls=_langchain_calls(fields, content.tool_calls, strict=strict),
        images=content.images,
        image_names=content.image_names,
    )


# -- who asked what ---------------------------------------------------------------------------


@dataclass(frozen=True)
class RequestContext:
    """What the model was asked, and the conversation so far; outputs are added per trace."""

    query: str = ""
    images: tuple[ImageRef, ...] = ()
    history: tuple[Turn, ...] = ()
    model: str | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)
    image_names: tuple[str, ...] = field(default=(), compare=False)
    """How output records show the query's images (offline: resolved paths, URLs, hashes)."""

    def trace(
        self,
        *,
        response: str,
        thinking: str | None,
        tool_calls: tuple[ToolCall, ...] = (),
        trace_id: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        stage: Stage = Stage.FINAL,
    ) -> Trace:
        """The trace of one output of this request; ``metadata`` adds to the request's."""
        return Trace(
            query=self.query,
            response=response,
            thinking=thinking,
            images=self.images,
            tool_calls=tool_calls,
            history=self.history,
            id=trace_id,
            model=self.model,
            metadata={**self.metadata, **(metadata or {})},
            stage=stage,
        )


def split_last_user(
    messages: Sequence[Message],
    *,
    model: str | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> RequestContext:
    """The last user message is the query (with its images); every other one is history, in order.

    The one statement of this rule for every path. In a tool-calling loop the history therefore
    holds the earlier model turns and the tool results, so each model call is audited with the
    conversation so far; offline, each assistant turn is audited with the messages before it.
    """
    for index in range(len(messages) - 1, -1, -1):
        if messages[index].role == "user":
            query = messages[index]
            return RequestContext(
                query=query.turn().content,
                images=query.images,
                image_names=query.image_names,
                history=tuple(m.turn() for i, m in enumerate(messages) if i != index),
                model=model,
                metadata=dict(metadata or {}),
            )
    return RequestContext(
        history=tuple(m.turn() for m in messages), model=model, metadata=dict(metadata or {})
    )
