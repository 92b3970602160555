"""A guarded SSE stream as bytes: frames in, bytes and traces out. No I/O.

:class:`StreamRelay` puts an SSE skin on :class:`~traceguard._streaming.StreamState`, which holds
every stream rule (what to buffer, when to audit, what to release). The relay only turns frames
into SDK chunks and released chunks back into bytes: a chunk that passes unchanged goes out as
the very bytes it came in, a chunk the guard edited or made is written anew.

Protocol, driven by the I/O shell (``_stream_shell.py``): per upstream read, :meth:`feed`; per
frame, :meth:`on_frame` → send ``release``; if ``early`` holds traces, audit them *before*
sending and pass the decisions to :meth:`after_early` (bytes back: send them, close the upstream,
stop).
Otherwise audit :meth:`checkpoint_traces` in the background and hand the decisions to
:meth:`after_checkpoint` when they come (the same answer as :meth:`after_early`).
At the end :meth:`finish`, audit :meth:`final_traces`, send :meth:`after_final`. A stream cut
short audits :meth:`partial_traces` and records :meth:`after_partial`, as the wrapper does.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from traceguard._decision import Decision
from traceguard._streaming import StreamState
from traceguard._trace import Trace

from ._apis import GuardedApi, Unreadable
from ._sse import Frame, SSEDecoder

__all__ = ["Step", "StreamRelay", "UpstreamFailed"]


class UpstreamFailed(Exception):
    """The upstream ended its stream with an error event (forwarded as it came)."""

    def __init__(self, frame: bytes) -> None:
        super().__init__("the upstream sent an error event")
        self.frame = frame


class BufferFull(ValueError):
    """A stream outgrew ``max_response_bytes`` (what the final audit must hold: the chunks in
    buffer mode, their text in passthrough mode)."""


@dataclass
class Step:
    """What one frame asks of the shell."""

    release: bytes = b""
    early: list[Trace] = field(default_factory=list)


class StreamRelay:
    """The byte-level side of one guarded stream (see the module documentation)."""

    def __init__(self, api: GuardedApi, state: StreamState[Any], *, max_buffer_bytes: int) -> None:
        self.api = api
        self.state = state
        self.passthrough = state.options.mode == "passthrough"
        self.done = False
        """True once the upstream's ``[DONE]`` arrived."""
        self._done_frame = api.done_frame or b""  # the upstream's own, once it came
        self._decoder = SSEDecoder(max_frame_bytes=max_buffer_bytes)
        self._raw: dict[int, tuple[Any, bytes]] = {}  # id(chunk) -> (chunk, its bytes)
        self._buffered = 0
        self._max = max_buffer_bytes

    # -- reading ------------------------------------------------------------------------------

    def feed(self, data: bytes) -> list[Frame]:
        """The whole frames an upstream read completes."""
        return self._decoder.feed(data)

    def finish(self) -> list[Frame]:
        """A last frame the upstream did not end with a blank line."""
        return self._decoder.close()

    def on_frame(self, frame: Frame) -> Step:
        """Take one frame.

        Raises:
            UpstreamFailed: the frame is an error event.
            Unreadable: a chunk the SDK types cannot read (never forwarded unaudited).
            BufferFull: the held-back stream passed ``max_response_bytes``.
        """
        if self.done:
            return Step()
        data = frame.data
        if data is None:  # a comment or keep-alive: meaningless once buffered
            return Step(release=frame.raw if self.passthrough else b"")
        if data.strip() == "[DONE]":
            self.done = True
            self._done_frame = frame.raw
            return Step()
        chunk = self._chunk(frame, data)
        # Counted in both modes: a passthrough stream's text is held for the final audit too,
        # so an upstream that never stops must not grow it without bound.
        self._buffered += len(frame.raw)
        if self._buffered > self._max:
            raise BufferFull(f"the stream passed {self._max} bytes before its audit")
        if not self.passthrough:
            self._raw[id(chunk)] = (chunk, frame.raw)
        try:
            released = self.state.on_chunk(chunk)
            early = self.state.early_traces()
        except (AttributeError, TypeError, ValueError, KeyError) as exc:
            # A leniently built chunk whose parts have the wrong types: unreadable, not passed.
            raise Unreadable(f"a stream chunk could not be read ({type(exc).__name__})") from None
        if self.passthrough:
            # on_chunk returns the chunk itself: its own bytes go out.
            return Step(release=frame.raw if released else b"", early=early)
        return Step(release=self.encode(released), early=early)

    def _chunk(self, frame: Frame, data: str) -> Any:
        try:
            chunk = self.api.read_chunk(data)
        except Unreadable:
            if _is_error(data):
                raise UpstreamFailed(frame.raw) from None
            raise
        if getattr(chunk, "type", None) == "error" or _carries_error(chunk):
            raise UpstreamFailed(frame.raw)
        return chunk

    # -- deciding -----------------------------------------------------------------------------

    def after_early(self, decisions: Sequence[Decision]) -> bytes | None:
        """None to go on; else the bytes that end the stream (the upstream must be closed).
        Raises :class:`~traceguard.Blocked` when blocks are errors."""
        ending = self.state.after_early(decisions)
        if ending is None:
            return None
        return self.encode(ending) + (self.api.done_frame or b"")

    def checkpoint_traces(self) -> list[Trace]:
        """Partial output to audit in the background (none while a checkpoint is in flight)."""
        return self.state.checkpoint_traces()

    def after_checkpoint(self, decisions: Sequence[Decision]) -> bytes | None:
        """A checkpoint's decisions: None to go on; else the bytes that end the stream (the
        upstream must be closed). Raises :class:`~traceguard.Blocked` when blocks are errors."""
        ending = self.state.after_checkpoint(decisions)
        if ending is None:
            return None
        return self.encode(ending) + (self.api.done_frame or b"")

    def final_traces(self) -> list[Trace]:
        """The traces of the whole output."""
        return self.state.final_traces()

    def after_final(self, decisions: Sequence[Decision]) -> bytes:
        """The bytes to send once the whole output is decided (then the stream ends).
        Raises :class:`~traceguard.Blocked` when blocks are errors."""
        released = self.encode(self.state.after_final(decisions))
        self._raw.clear()
        if self.done or any(d.blocked for d in decisions):
            # A refusal ends the stream as [DONE] would have.
            released += self._done_frame
        return released

    def partial_traces(self, cause: Literal["closed", "upstream_error"]) -> list[Trace]:
        """What was shown of a stream cut short, to audit once (empty when nothing is owed)."""
        return self.state.partial_traces(cause)

    def after_partial(self, decisions: Sequence[Decision]) -> None:
        """Record the decisions on what was shown; never raises."""
        self.state.after_partial(decisions)

    # -- writing ------------------------------------------------------------------------------

    def encode(self, chunks: Sequence[Any]) -> bytes:
        """Chunks as SSE bytes: the upstream's own bytes when a chunk passes unchanged."""
        out = bytearray()
        for chunk in chunks:
            kept = self._raw.get(id(chunk))
            if kept is not None and kept[0] is chunk:
                out += kept[1]
            else:
                out += self.api.chunk_frame(chunk)
        return bytes(out)


def _is_error(data: str) -> bool:
    try:
        value = json.loads(data)
    except ValueError:
        return False
    return isinstance(value, dict) and bool(value.get("error"))


def _carries_error(chunk: Any) -> bool:
    # The SDKs raise on any data event with a truthy "error", whatever else it holds.
    extra = getattr(chunk, "__pydantic_extra__", None)
    return bool(extra and extra.get("error"))
