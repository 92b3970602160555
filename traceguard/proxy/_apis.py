"""What the proxy knows about each guarded API: how to read a request, a result and a stream
chunk, and how to write an edited one back. No I/O.

The readers are the ones the Python wrapper uses (:mod:`traceguard._chat` for requests, the
``openai`` SDK's pydantic types and :mod:`traceguard.integrations._openai_result` for results,
the stream adapters for chunks), so a completion is audited as the same trace whichever way it
travelled. That is why the ``[proxy]`` extra includes ``openai``: only its types are used, never
its HTTP client.

Results are read as the SDK reads them: validated when they match its types exactly (the fast
path), else built leniently the way the SDK's own client builds them (a server that omits a
field a newer SDK made required is still readable). What the guard reads (choices, messages,
deltas, output items) must then have the right shape, or the answer is refused
(``upstream_unreadable``) and never passed on unaudited. Unknown Responses stream event types
(the API grows) carry no output the adapter reads, and pass as they came.
"""

from __future__ import annotations

import json
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, TypeVar

from openai.types.chat import ChatCompletion, ChatCompletionChunk, ChatCompletionMessage
from openai.types.chat.chat_completion import Choice
from openai.types.chat.chat_completion_chunk import Choice as ChunkChoice
from openai.types.chat.chat_completion_chunk import ChoiceDelta
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError

from traceguard._chat import RequestContext, chat_message, responses_input, split_last_user
from traceguard._openai_chat_stream import ChatStreamAdapter
from traceguard._openai_responses_stream import ResponsesStreamAdapter
from traceguard._openai_result import (
    chat_traces,
    edit_chat,
    edit_response,
    response_trace,
)
from traceguard._streaming import Edit, StreamAdapter
from traceguard._trace import Trace

from ._errors import ProxyError

__all__ = ["API_BY_PATH", "ChatApi", "GuardedApi", "ResponsesApi", "Unreadable"]


class Unreadable(ValueError):
    """An upstream body or chunk the SDK types cannot read."""


class GuardedApi(Protocol):
    """One guarded endpoint's formats."""

    name: ClassVar[str]
    done_frame: ClassVar[bytes | None]
    """The SSE frame that ends a successful stream (``data: [DONE]``), if the API sends one."""

    def context(self, body: Mapping[str, Any], metadata: Mapping[str, Any]) -> RequestContext:
        """What the client asked. Raises :class:`ProxyError` (``invalid_body``)."""

    def read(self, payload: bytes) -> Any:
        """The upstream's JSON result as an SDK object. Raises :class:`Unreadable`."""

    def traces(self, context: RequestContext, result: Any) -> list[Trace]:
        """One trace per output of ``result``."""

    def edited(self, result: Any, traces: Sequence[Trace], edits: Sequence[Edit]) -> Any:
        """``result`` with the edits applied (the same object when none changes anything)."""

    def adapter(self, context: RequestContext, *, buffer: bool) -> StreamAdapter[Any]:
        """A fresh stream adapter."""

    def read_chunk(self, data: str) -> Any:
        """One SSE ``data`` payload as an SDK chunk. Raises :class:`Unreadable`."""

    def chunk_frame(self, chunk: Any) -> bytes:
        """A chunk the proxy made or edited, as an SSE frame."""


def dump(model: BaseModel) -> bytes:
    """An SDK object as JSON, keeping the upstream's shape: fields it did not send stay out."""
    return model.model_dump_json(exclude_unset=True, by_alias=True, warnings=False).encode()


M = TypeVar("M", bound=BaseModel)


def _object(payload: str | bytes, what: str) -> dict[str, Any]:
    try:
        value = json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        raise Unreadable(f"{what}: not JSON") from None
    if not isinstance(value, dict):
        raise Unreadable(f"{what}: not a JSON object")
    return value


def _read(model: type[M], payload: str | bytes, what: str) -> M:
    """``payload`` as ``model``: validated, or else built leniently as the SDK's client does."""
    try:
        return model.model_validate_json(payload)
    except ValidationError:
        return model.construct(**_object(payload, what))


def _choices_readable(choices: object, choice: type, field: str, inner: type) -> bool:
    return isinstance(choices, list) and all(
        isinstance(c, choice)
        and isinstance(getattr(c, "index", None), int)
        and isinstance(getattr(c, field, None), inner)
        for c in choices
    )


def _model_name(body: Mapping[str, Any]) -> str | None:
    model = body.get("model")
    return model if isinstance(model, str) else None


@dataclass(frozen=True)
class ChatApi:
    """``POST /v1/chat/completions``."""

    name: ClassVar[str] = "chat.completions"
    done_frame: ClassVar[bytes | None] = b"data: [DONE]\n\n"

    def context(self, body: Mapping[str, Any], metadata: Mapping[str, Any]) -> RequestContext:
        raw = body.get("messages")
        if not isinstance(raw, list):
            raise ProxyError("invalid_body", "'messages' must be a list of messages")
        messages = [chat_message(message, strict=False) for message in raw]
        meta = {**metadata, "api": self.name}
        return split_last_user(messages, model=_model_name(body), metadata=meta)

    def read(self, payload: bytes) -> ChatCompletion:
        completion = _read(ChatCompletion, payload, "chat completion")
        if not _choices_readable(completion.choices, Choice, "message", ChatCompletionMessage):
            raise Unreadable("chat completion: its choices cannot be read")
        return completion

    def traces(self, context: RequestContext, result: Any) -> list[Trace]:
        return chat_traces(context, result)

    def edited(self, result: Any, traces: Sequence[Trace], edits: Sequence[Edit]) -> Any:
        return edit_chat(result, traces, edits)

    def adapter(self, context: RequestContext, *, buffer: bool) -> StreamAdapter[Any]:
        return ChatStreamAdapter(context, track_increments=buffer)

    def read_chunk(self, data: str) -> ChatCompletionChunk:
        chunk = _read(ChatCompletionChunk, data, "chat completion chunk")
        if not _choices_readable(chunk.choices, ChunkChoice, "delta", ChoiceDelta):
            raise Unreadable("chat completion chunk: its choices cannot be read")
        return chunk

    def chunk_frame(self, chunk: Any) -> bytes:
        return b"data: " + dump(chunk) + b"\n\n"


class _OtherEvent(BaseModel):
    """A Responses stream event of a type this SDK version does not know."""

    model_config = ConfigDict(extra="allow")
    type: str


_EVENTS: TypeAdapter[Any] = TypeAdapter(ResponseStreamEvent)


def _event_classes() -> dict[str, type[BaseModel]]:
    """Each known Responses stream event type, by its ``type`` value."""
    classes: dict[str, type[BaseModel]] = {}
    for member in typing.get_args(typing.get_args(ResponseStreamEvent)[0]):
        for value in typing.get_args(member.model_fields["type"].annotation):
            classes[value] = member
    return classes


_EVENT_CLASSES = _event_classes()


@dataclass(frozen=True)
class ResponsesApi:
    """``POST /v1/responses``."""

    name: ClassVar[str] = "responses"
    done_frame: ClassVar[bytes | None] = None

    def context(self, body: Mapping[str, Any], metadata: Mapping[str, Any]) -> RequestContext:
        payload = body.get("input")
        if payload is not None and not isinstance(payload, str | list):
            raise ProxyError("invalid_body", "'input' must be a string or a list of items")
        instructions = body.get("instructions")
        if instructions is not None and not isinstance(instructions, str):
            raise ProxyError("invalid_body", "'instructions' must be a string")
        messages = responses_input(payload, instructions=instructions)
        meta = {**metadata, "api": self.name}
        return split_last_user(messages, model=_model_name(body), metadata=meta)

    def read(self, payload: bytes) -> Response:
        response = _read(Response, payload, "response")
        if not isinstance(response.output, list):
            raise Unreadable("response: its output cannot be read")
        return response

    def traces(self, context: RequestContext, result: Any) -> list[Trace]:
        return [response_trace(context, result)]

    def edited(self, result: Any, traces: Sequence[Trace], edits: Sequence[Edit]) -> Any:
        return edit_response(result, edits[0])

    def adapter(self, context: RequestContext, *, buffer: bool) -> StreamAdapter[Any]:
        return ResponsesStreamAdapter(context)

    def read_chunk(self, data: str) -> Any:
        try:
            return _EVENTS.validate_json(data)
        except ValidationError:
            pass
        fields = _object(data, "Responses event")
        kind = fields.get("type")
        if not isinstance(kind, str):
            raise Unreadable("Responses event: no type")
        known = _EVENT_CLASSES.get(kind)
        if known is None:
            return _OtherEvent.construct(**fields)
        event = known.construct(**fields)
        response = getattr(event, "response", None)
        if response is not None and not (
            isinstance(response, Response) and isinstance(response.output, list)
        ):
            raise Unreadable(f"Responses event {kind}: its response cannot be read")
        return event

    def chunk_frame(self, chunk: Any) -> bytes:
        # A type is one token; anything else must not become a second SSE line.
        kind = "".join(c for c in str(getattr(chunk, "type", "")) if c.isprintable()).encode()
        return b"event: " + kind + b"\ndata: " + dump(chunk) + b"\n\n"


API_BY_PATH: dict[str, GuardedApi] = {
    "/v1/chat/completions": ChatApi(),
    "/v1/responses": ResponsesApi(),
}
