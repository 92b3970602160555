"""What a scripted HTTP server answers: :class:`ScriptedResponse`, and what it heard:
:class:`RecordedRequest`.

Plain values with no I/O: the loopback server (:mod:`traceguard.testing._loopback_http`) sends a
``ScriptedResponse`` as it says, and :class:`~traceguard.testing.openai_server.OpenAIServer`
decides which one answers a request. A :data:`Responder` answers requests no queue answers;
:func:`fixed_delay_responder` is the benchmark mode, one such responder.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from traceguard.testing._openai_payloads import (
    DEFAULT_MODEL,
    SSEEvent,
    chat_completion,
    top_logprobs_completion,
)

__all__ = [
    "RecordedRequest",
    "Responder",
    "ScriptedResponse",
    "StreamControl",
    "fixed_delay_responder",
]


class StreamControl:
    """Lets a test watch one scripted SSE stream and pace it.

    The server counts the events it wrote (:attr:`sent`) and notices when the client closes the
    connection (:attr:`disconnected`, checked while it waits: before each delayed event and while
    held or paused). With ``hold_at``, it sends events ``0 .. hold_at - 1`` and then waits, for
    the client to leave or the test to :meth:`release` it. ``pauses`` maps an event index to an
    event the server waits for before sending it: a stream paced by what the client (or anything
    else the test watches) has done, rather than by the clock. Every wait lasts at most
    ``hold_s`` seconds (a test that fails to stop or release the stream sees it run on, not
    hang); the indexes where a wait gave up are listed in :attr:`gave_up`.
    """

    def __init__(
        self,
        *,
        hold_at: int | None = None,
        hold_s: float = 10.0,
        pauses: Mapping[int, threading.Event] | None = None,
    ) -> None:
        self.hold_at = hold_at
        self.hold_s = hold_s
        self.pauses = dict(pauses or {})
        self.disconnected = threading.Event()
        """Set when the server saw the client close the connection."""
        self.released = threading.Event()
        self.finished = threading.Event()
        """Set when the server stopped sending (all sent, client gone, or server closing)."""
        self.gave_up: list[int] = []
        """Event indexes where a hold or pause ran out of ``hold_s`` and the stream went on."""
        self._sent = 0
        self._lock = threading.Lock()

    @property
    def sent(self) -> int:
        """Events written to the connection so far ([DONE] included)."""
        with self._lock:
            return self._sent

    def release(self) -> None:
        """Let a held stream go on."""
        self.released.set()

    def waits_before(self, index: int) -> threading.Event | None:
        """The event the server must see set before it sends event ``index``, if any."""
        if self.hold_at is not None and index >= self.hold_at and not self.released.is_set():
            return self.released
        return self.pauses.get(index)

    def note_sent(self) -> None:
        """Called by the server after each event it wrote."""
        with self._lock:
            self._sent += 1


@dataclass(frozen=True)
class ScriptedResponse:
    """One scripted answer. Build it with the class methods rather than by hand.

    Exactly one body kind applies: ``events`` (an SSE stream), ``raw`` (bytes sent as they are),
    or ``body`` (JSON). ``drop`` closes the connection without any response; ``drop_after``
    closes it mid-stream after that many events. ``delay_s`` waits before the status line (use
    it to provoke client timeouts); ``event_delay_s`` waits before each SSE event.
    """

    status: int = 200
    body: Any = None
    raw: bytes | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    events: tuple[SSEEvent, ...] | None = None
    event_delay_s: float = 0.0
    done: bool = True
    """Send ``data: [DONE]`` after the events (chat streams do; Responses streams do not)."""
    delay_s: float = 0.0
    drop: bool = False
    drop_after: int | None = None
    control: StreamControl | None = field(default=None, compare=False)
    """Watches and steers the stream from the test (see :class:`StreamControl`)."""

    @classmethod
    def json(
        cls,
        body: Any,
        *,
        status: int = 200,
        headers: Mapping[str, str] | None = None,
        delay_s: float = 0.0,
    ) -> ScriptedResponse:
        """A JSON body with a status and extra headers."""
        return cls(status=status, body=body, headers=dict(headers or {}), delay_s=delay_s)

    @classmethod
    def error(
        cls,
        status: int,
        message: str = "scripted error",
        *,
        headers: Mapping[str, str] | None = None,
        delay_s: float = 0.0,
    ) -> ScriptedResponse:
        """An OpenAI-style error body (``{"error": {...}}``), e.g. 500, or 429 + ``Retry-After``."""
        body = {"error": {"message": message, "type": "scripted", "param": None, "code": None}}
        return cls.json(body, status=status, headers=headers, delay_s=delay_s)

    @classmethod
    def sse(
        cls,
        events: Iterable[SSEEvent | Mapping[str, Any] | str],
        *,
        event_delay_s: float = 0.0,
        done: bool = True,
        drop_after: int | None = None,
        delay_s: float = 0.0,
        headers: Mapping[str, str] | None = None,
        control: StreamControl | None = None,
    ) -> ScriptedResponse:
        """An SSE stream; mappings and strings become ``data:`` payloads without an event name."""
        wrapped = tuple(e if isinstance(e, SSEEvent) else SSEEvent(e) for e in events)
        return cls(
            events=wrapped,
            event_delay_s=event_delay_s,
            done=done,
            drop_after=drop_after,
            delay_s=delay_s,
            headers=dict(headers or {}),
            control=control,
        )

    @classmethod
    def malformed(
        cls, raw: bytes = b'{"choices": [{"message": ', *, status: int = 200
    ) -> ScriptedResponse:
        """A body that claims to be JSON and is not."""
        return cls(status=status, raw=raw, headers={"Content-Type": "application/json"})

    @classmethod
    def dropped(cls, *, delay_s: float = 0.0) -> ScriptedResponse:
        """Close the connection without sending any response."""
        return cls(drop=True, delay_s=delay_s)


@dataclass(frozen=True)
class RecordedRequest:
    """A request the server received."""

    method: str
    path: str
    """The path without the query string, e.g. ``/v1/chat/completions``."""
    query: str
    headers: Mapping[str, str]
    """Header names in lower case."""
    body: bytes
    json: Any
    """The parsed JSON body, or None when the body is empty or not JSON."""


Responder = Callable[[RecordedRequest], ScriptedResponse | None]
"""Answers a request dynamically; None leaves it unanswered (the server then reports it as
unexpected and sends a 500)."""


def fixed_delay_responder(delay_s: float, content: str) -> Responder:
    """Benchmark mode: every ``POST .../chat/completions`` is answered after ``delay_s`` seconds
    with ``content`` (or, when the request asks for ``logprobs``, with a one-token distribution
    over the judgments); other paths are left unanswered."""

    def answer(request: RecordedRequest) -> ScriptedResponse | None:
        if not request.path.endswith("/chat/completions"):
            return None
        body = request.json if isinstance(request.json, dict) else {}
        model = str(body.get("model") or DEFAULT_MODEL)
        if body.get("logprobs"):
            dist = {"0": -0.05, "1": -3.5, ".": -4.0}
            payload = top_logprobs_completion(dist, model=model)
        else:
            payload = chat_completion(content, model=model)
        return ScriptedResponse.json(payload, delay_s=delay_s)

    return answer
