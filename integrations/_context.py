"""The request side of an audited turn, as every integration builds it.

Each framework integration reduces its request format to :class:`~traceguard.Turn` values; the
steps after that are the same for all of them and live here: picking the query out of the
conversation, turning image parts into :class:`~traceguard.ImageRef` values, and building the
:class:`~traceguard.Trace` for one output. No I/O: image refs are loaded (or refused) later by the
auditor under its own :class:`~traceguard.ImageAccess`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from traceguard._images import ImageRef
from traceguard._trace import Stage, ToolCall, Trace, Turn

__all__ = ["RequestContext", "base64_image_ref", "split_last_user", "url_image_ref"]


@dataclass(frozen=True)
class RequestContext:
    """What the model was asked, and the conversation so far; outputs are added per trace."""

    query: str = ""
    images: tuple[ImageRef, ...] = ()
    history: tuple[Turn, ...] = ()
    model: str | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)

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
    turns: Sequence[Turn],
    *,
    model: str | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> RequestContext:
    """The last user turn is the query (with its images); every other turn is history, in order.

    In a tool-calling loop the history therefore holds the earlier model turns and the tool
    results, so each model call is audited with the conversation so far.
    """
    query = ""
    images: tuple[ImageRef, ...] = ()
    history = tuple(turns)
    for index in range(len(turns) - 1, -1, -1):
        if turns[index].role == "user":
            query, images = turns[index].content, turns[index].images
            history = (*turns[:index], *turns[index + 1 :])
            break
    return RequestContext(
        query=query, images=images, history=history, model=model, metadata=dict(metadata or {})
    )


def url_image_ref(url: Any) -> ImageRef | None:
    """An image part's URL (a string, or OpenAI's ``{"url": ..., "detail": ...}``) as a ref."""
    if isinstance(url, Mapping):
        url = url.get("url")
    if not isinstance(url, str) or not url:
        return None
    # Never ImageRef.parse: request content is caller- or user-controlled, and a bare string would
    # become a local *path*. Anything but a data URI is a URL the auditor's ImageAccess may refuse.
    return ImageRef.from_data_uri(url) if url[:5].lower() == "data:" else ImageRef.from_url(url)


def base64_image_ref(data: Any, mime: Any) -> ImageRef | None:
    """An image part holding raw base64 (with its media type, when given) as a ref."""
    if not isinstance(data, str) or not data:
        return None
    media = mime if isinstance(mime, str) and mime else "application/octet-stream"
    # A data URI defers decoding to ImageRef.load, so bad base64 becomes an INVALID_INPUT
    # verdict for this trace instead of an exception inside the integration.
    return ImageRef.from_data_uri(f"data:{media};base64,{data}")
