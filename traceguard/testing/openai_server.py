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
3. ``server.responder(request)``, if set, for dynamic answers (None passes);
4. in ``fixed_delay`` mode, a GuardTrace-style completion after a fixed delay (benchmarks; a
   responder too, :func:`~traceguard.testing._scripted_http.fixed_delay_responder`);
5. otherwise a 500 error, and the request is also listed in ``server.unexpected`` so a test can
   assert that nothing unscripted happened.

The values are in :mod:`traceguard.testing._scripted_http`, the HTTP side in
:mod:`traceguard.testing._loopback_http`; this module decides which answer a request gets.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from types import TracebackType

from traceguard.testing._loopback_http import LoopbackHTTPServer
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
from traceguard.testing._scripted_http import (
    RecordedRequest,
    Responder,
    ScriptedResponse,
    StreamControl,
    fixed_delay_responder,
)

__all__ = [
    "DEFAULT_MODEL",
    "OpenAIServer",
    "RecordedRequest",
    "Responder",
    "SSEEvent",
    "ScriptedResponse",
    "StreamControl",
    "ToolCallSpec",
    "chat_completion",
    "chat_completion_chunks",
    "guardtrace_output",
    "responses_events",
    "responses_response",
    "top_logprobs_completion",
]

_log = logging.getLogger(__name__)


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
        self._fallback = (
            fixed_delay_responder(fixed_delay_s, self.fixed_content)
            if fixed_delay_s is not None
            else None
        )
        self._http = LoopbackHTTPServer(self._answer, port=port)
        self._lock = threading.Lock()
        self._queues: dict[str | None, deque[ScriptedResponse]] = {}
        self._requests: list[RecordedRequest] = []
        self._unexpected: list[RecordedRequest] = []
        self._in_flight = 0
        self._max_in_flight = 0

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> OpenAIServer:
        """Bind and serve in a background thread. Returns self."""
        self._http.start()
        return self

    def close(self) -> None:
        """Stop serving, wake delayed answers and close every open connection."""
        self._http.close()

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
        return self._http.port

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

    # -- answering (called on the handler threads) -----------------------------------------

    @contextmanager
    def _answer(self, request: RecordedRequest) -> Iterator[ScriptedResponse]:
        with self._lock:
            self._requests.append(request)
            self._in_flight += 1
            self._max_in_flight = max(self._max_in_flight, self._in_flight)
        try:
            yield self._resolve(request)
        finally:
            with self._lock:
                self._in_flight -= 1

    def _resolve(self, request: RecordedRequest) -> ScriptedResponse:
        with self._lock:
            for key in (request.path, None):
                queue = self._queues.get(key)
                if queue:
                    return queue.popleft()
            responder = self.responder
        for answer in (responder, self._fallback):
            scripted = answer(request) if answer is not None else None
            if scripted is not None:
                return scripted
        with self._lock:
            self._unexpected.append(request)
        _log.warning("loopback: no scripted answer for %s %s", request.method, request.path)
        return ScriptedResponse.error(
            500, f"loopback server: no scripted answer for {request.method} {request.path}"
        )


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
