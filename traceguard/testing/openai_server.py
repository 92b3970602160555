"""A scripted OpenAI-compatible HTTP server on loopback, for tests and benchmarks.

It is a real HTTP/1.1 server (keep-alive, chunked SSE streams) running in a background thread,
so clients under test go through their whole network stack: the ``openai`` SDK, httpx,
LangChain's ``ChatOpenAI`` or traceguard's own ``OpenAICompatibleBackend``::

    from traceguard.testing.openai_server import OpenAIServer, ScriptedResponse, chat_completion

    with OpenAIServer() as server:
        server.enqueue(
            ScriptedResponse.error(500),                      # first request: a server error
            ScriptedResponse.json(chat_completion("hello")),  # second request: a completion
        )
        client = openai.OpenAI(base_url=server.base_url, api_key="x")
        ...
        assert server.requests[-1].json["model"] == "m"

How a request is answered, first match wins:

1. the queue of its path (``enqueue(..., path="/v1/responses")``), consumed in order;
2. the shared queue (``enqueue(...)`` without a path), consumed in order;
3. ``server.responder(request)``, if set, for dynamic answers;
4. in ``fixed_delay`` mode, a GuardTrace-style completion after a fixed delay (benchmarks);
5. otherwise a 500 error, and the request is also listed in ``server.unexpected`` so a test can
   assert that nothing unscripted happened.

Each connection gets its own thread, so slow answers never serialise other clients.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import threading
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

from traceguard.testing._openai_payloads import (
    DEFAULT_MODEL,
    SSEEvent,
    ToolCallSpec,
    chat_completion,
    chat_completion_chunks,
    guardtrace_output,
    responses_events,
    responses_response,
    top_logprobs_completion,
)

__all__ = [
    "DEFAULT_MODEL",
    "OpenAIServer",
    "RecordedRequest",
    "Responder",
    "SSEEvent",
    "ScriptedResponse",
    "ToolCallSpec",
    "chat_completion",
    "chat_completion_chunks",
    "guardtrace_output",
    "responses_events",
    "responses_response",
    "top_logprobs_completion",
]

_log = logging.getLogger(__name__)


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


Responder = Callable[[RecordedRequest], ScriptedResponse]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes; with Nagle's algorithm on, the second waits
    # for the client's delayed ACK (~40 ms on Linux), which would dwarf any scripted delay.
    disable_nagle_algorithm = True
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.server.owner._track(self.connection, add=True)

    def finish(self) -> None:
        with contextlib.suppress(OSError):
            super().finish()
        self.server.owner._track(self.connection, add=False)

    def log_message(self, format: str, *args: Any) -> None:
        _log.debug("loopback %s", format % args)

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def do_DELETE(self) -> None:
        self._serve()

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            parts: list[bytes] = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    return b"".join(parts)
                parts.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _serve(self) -> None:
        owner = self.server.owner
        body = self._read_body()
        try:
            parsed = json.loads(body) if body else None
        except ValueError:
            parsed = None
        url = urlsplit(self.path)
        request = RecordedRequest(
            method=self.command,
            path=url.path,
            query=url.query,
            headers={k.lower(): v for k, v in self.headers.items()},
            body=body,
            json=parsed,
        )
        owner._enter(request)
        try:
            self._answer(owner._resolve(request))
        except (BrokenPipeError, ConnectionResetError):
            # The client gave up (its timeout, a test closing early): nothing to answer.
            self.close_connection = True
        finally:
            owner._leave()

    def _answer(self, scripted: ScriptedResponse) -> None:
        owner = self.server.owner
        if scripted.delay_s and owner._stopping.wait(scripted.delay_s):
            scripted = ScriptedResponse.dropped()
        if scripted.drop:
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
            return
        if scripted.events is not None:
            self._stream(scripted)
            return
        if scripted.raw is not None:
            payload = scripted.raw
            content_type = "application/octet-stream"
        else:
            payload = json.dumps(scripted.body).encode()
            content_type = "application/json"
        self.send_response(scripted.status)
        headers = {"Content-Type": content_type, **scripted.headers}
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)
        self.wfile.flush()

    def _stream(self, scripted: ScriptedResponse) -> None:
        owner = self.server.owner
        self.send_response(scripted.status)
        headers = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        for name, value in {**headers, **scripted.headers}.items():
            self.send_header(name, value)
        # Chunked encoding keeps the connection reusable, and makes a mid-stream drop an error
        # the client can see (a close-delimited body would just look finished).
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        events = list(scripted.events or ())
        if scripted.done:
            events.append(SSEEvent("[DONE]"))
        for index, event in enumerate(events):
            if scripted.drop_after is not None and index >= scripted.drop_after:
                self.close_connection = True
                self.wfile.flush()
                with contextlib.suppress(OSError):
                    self.connection.shutdown(socket.SHUT_RDWR)
                return
            if scripted.event_delay_s and owner._stopping.wait(scripted.event_delay_s):
                self.close_connection = True
                return
            data = event.encode()
            self.wfile.write(b"%X\r\n%s\r\n" % (len(data), data))
            self.wfile.flush()
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # Bursts of concurrent clients (benchmarks open dozens of connections at once).
    request_queue_size = 256
    owner: OpenAIServer

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that vanished mid-request is routine here (timeouts and drops are scripted).
        _log.debug("loopback: connection error from %s", client_address, exc_info=True)


class OpenAIServer:
    """A scripted OpenAI-compatible server on ``127.0.0.1`` (see the module docstring).

    Args:
        responder: answers requests no queue answers (also settable as ``server.responder``).
        fixed_delay_s: benchmark mode. Every ``POST .../chat/completions`` not otherwise
            scripted is answered after this many seconds with ``fixed_content`` (or, when the
            request asks for ``logprobs``, with a one-token distribution over the judgments).
            Each connection sleeps in its own thread, so concurrent requests overlap.
        fixed_content: the completion text of fixed-delay mode.
        port: 0 picks a free port.
    """

    def __init__(
        self,
        *,
        responder: Responder | None = None,
        fixed_delay_s: float | None = None,
        fixed_content: str | None = None,
        port: int = 0,
    ) -> None:
        self.responder = responder
        self.fixed_delay_s = fixed_delay_s
        self.fixed_content = fixed_content if fixed_content is not None else guardtrace_output()
        self._port = port
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._queues: dict[str | None, deque[ScriptedResponse]] = {}
        self._requests: list[RecordedRequest] = []
        self._unexpected: list[RecordedRequest] = []
        self._connections: set[socket.socket] = set()
        self._in_flight = 0
        self._max_in_flight = 0
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> OpenAIServer:
        """Bind and serve in a background thread. Returns self."""
        if self._server is not None:
            return self
        self._stopping.clear()
        server = _Server(("127.0.0.1", self._port), _Handler)
        server.owner = self
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"traceguard-loopback-{server.server_address[1]}",
            daemon=True,
        )
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop serving, wake delayed answers and close every open connection."""
        server, self._server = self._server, None
        if server is None:
            return
        self._stopping.set()
        server.shutdown()
        server.server_close()
        with self._lock:
            connections = list(self._connections)
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> OpenAIServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- addresses -------------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The bound port (the server must be started)."""
        if self._server is None:
            raise RuntimeError("the loopback server is not running")
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT`` (no path)."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        """The OpenAI base URL: ``http://127.0.0.1:PORT/v1``."""
        return f"{self.url}/v1"

    # -- scripting -------------------------------------------------------------------------

    def enqueue(self, *responses: ScriptedResponse, path: str | None = None) -> None:
        """Queue answers, consumed in order; with ``path`` only by requests to that path."""
        with self._lock:
            self._queues.setdefault(path, deque()).extend(responses)

    @property
    def pending(self) -> int:
        """Queued answers not consumed yet, over every queue."""
        with self._lock:
            return sum(len(q) for q in self._queues.values())

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every request received so far, in arrival order (a copy)."""
        with self._lock:
            return list(self._requests)

    @property
    def unexpected(self) -> list[RecordedRequest]:
        """Requests that found no scripted answer (they got a 500)."""
        with self._lock:
            return list(self._unexpected)

    @property
    def in_flight(self) -> int:
        """Requests being answered right now."""
        with self._lock:
            return self._in_flight

    @property
    def max_in_flight(self) -> int:
        """The most requests answered at the same time since start or :meth:`reset`."""
        with self._lock:
            return self._max_in_flight

    def reset(self) -> None:
        """Forget recorded requests, queued answers and the in-flight maximum."""
        with self._lock:
            self._queues.clear()
            self._requests.clear()
            self._unexpected.clear()
            self._max_in_flight = self._in_flight

    # -- used by the handler threads -------------------------------------------------------

    def _track(self, conn: socket.socket, *, add: bool) -> None:
        with self._lock:
            if add:
                self._connections.add(conn)
            else:
                self._connections.discard(conn)

    def _enter(self, request: RecordedRequest) -> None:
        with self._lock:
            self._requests.append(request)
            self._in_flight += 1
            self._max_in_flight = max(self._max_in_flight, self._in_flight)

    def _leave(self) -> None:
        with self._lock:
            self._in_flight -= 1

    def _resolve(self, request: RecordedRequest) -> ScriptedResponse:
        with self._lock:
            for key in (request.path, None):
                queue = self._queues.get(key)
                if queue:
                    return queue.popleft()
            responder = self.responder
        if responder is not None:
            return responder(request)
        if self.fixed_delay_s is not None and request.path.endswith("/chat/completions"):
            return self._fixed_answer(request)
        with self._lock:
            self._unexpected.append(request)
        _log.warning("loopback: no scripted answer for %s %s", request.method, request.path)
        return ScriptedResponse.error(
            500, f"loopback server: no scripted answer for {request.method} {request.path}"
        )

    def _fixed_answer(self, request: RecordedRequest) -> ScriptedResponse:
        body = request.json if isinstance(request.json, dict) else {}
        model = str(body.get("model") or DEFAULT_MODEL)
        if body.get("logprobs"):
            dist = {"0": -0.05, "1": -3.5, ".": -4.0}
            payload = top_logprobs_completion(dist, model=model)
        else:
            payload = chat_completion(self.fixed_content, model=model)
        return ScriptedResponse.json(payload, delay_s=self.fixed_delay_s or 0.0)


def _main() -> None:
    # `python -m traceguard.testing.openai_server --fixed-delay 0.05` serves in the foreground,
    # so a benchmark can keep the server out of the client's process (and its GIL).
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--fixed-delay", type=float, default=0.05, help="seconds per answer")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    server = OpenAIServer(fixed_delay_s=args.fixed_delay, port=args.port).start()
    print(server.base_url, flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.close()


if __name__ == "__main__":
    _main()
