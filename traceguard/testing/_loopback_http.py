"""A real HTTP/1.1 server on 127.0.0.1 that sends :class:`ScriptedResponse` values.

:class:`LoopbackHTTPServer` runs a threading ``http.server`` in a background thread (keep-alive,
chunked SSE streams, one thread per connection so slow answers never serialise other clients). It
does no scripting of its own: for each request it asks ``answer(request)``, a context manager
whose value is sent and which stays open while it is sent (so the caller can count requests in
flight). Scripted delays wake early when the server closes.
"""

from __future__ import annotations

import contextlib
import json
import logging
import select
import socket
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from traceguard.testing._openai_payloads import SSEEvent
from traceguard.testing._scripted_http import RecordedRequest, ScriptedResponse, StreamControl

__all__ = ["Answer", "LoopbackHTTPServer"]

_log = logging.getLogger("traceguard.testing.openai_server")

Answer = Callable[[RecordedRequest], AbstractContextManager[ScriptedResponse]]
"""What the server asks for each request: the response to send, held open while it is sent."""


class LoopbackHTTPServer:
    """Serves ``answer`` on ``127.0.0.1:port`` (0 picks a free port) in a background thread."""

    def __init__(self, answer: Answer, *, port: int = 0) -> None:
        self.answer = answer
        self.stopping = threading.Event()
        """Set by :meth:`close`: scripted delays end early and drop their connection."""
        self._port = port
        self._lock = threading.Lock()
        self._connections: set[socket.socket] = set()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        """Whether the server is bound and serving."""
        return self._server is not None

    @property
    def port(self) -> int:
        """The bound port (the server must be started)."""
        if self._server is None:
            raise RuntimeError("the loopback server is not running")
        return int(self._server.server_address[1])

    def start(self) -> None:
        """Bind and serve in a background thread; a no-op when already running."""
        if self._server is not None:
            return
        self.stopping.clear()
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

    def close(self) -> None:
        """Stop serving, wake delayed answers and close every open connection."""
        server, self._server = self._server, None
        if server is None:
            return
        self.stopping.set()
        server.shutdown()
        server.server_close()
        with self._lock:
            connections = list(self._connections)
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        if self._thread is not None:
            self._thread.join(timeout=5)

    def track(self, conn: socket.socket, *, add: bool) -> None:
        """Called by the handler threads as connections open and close."""
        with self._lock:
            if add:
                self._connections.add(conn)
            else:
                self._connections.discard(conn)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes; with Nagle's algorithm on, the second waits
    # for the client's delayed ACK (~40 ms on Linux), which would dwarf any scripted delay.
    disable_nagle_algorithm = True
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.server.owner.track(self.connection, add=True)

    def finish(self) -> None:
        with contextlib.suppress(OSError):
            super().finish()
        self.server.owner.track(self.connection, add=False)

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
        try:
            with owner.answer(request) as scripted:
                self._answer(scripted)
        except (BrokenPipeError, ConnectionResetError):
            # The client gave up (its timeout, a test closing early): nothing to answer.
            self.close_connection = True

    def _answer(self, scripted: ScriptedResponse) -> None:
        owner = self.server.owner
        if scripted.delay_s and owner.stopping.wait(scripted.delay_s):
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
        control = scripted.control
        try:
            for index, event in enumerate(events):
                if scripted.drop_after is not None and index >= scripted.drop_after:
                    self.close_connection = True
                    self.wfile.flush()
                    with contextlib.suppress(OSError):
                        self.connection.shutdown(socket.SHUT_RDWR)
                    return
                if control is not None and not self._controlled_wait(control, index, scripted):
                    self.close_connection = True
                    return
                if scripted.event_delay_s and control is None:
                    if owner.stopping.wait(scripted.event_delay_s):
                        self.close_connection = True
                        return
                data = event.encode()
                self.wfile.write(b"%X\r\n%s\r\n" % (len(data), data))
                self.wfile.flush()
                if control is not None:
                    control.note_sent()
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            if control is not None:
                control.disconnected.set()
            raise
        finally:
            if control is not None:
                control.finished.set()

    def _controlled_wait(
        self, control: StreamControl, index: int, scripted: ScriptedResponse
    ) -> bool:
        """Wait before event ``index`` as ``control`` and the delay say; False: stop sending."""
        owner = self.server.owner
        awaited = control.waits_before(index)
        if awaited is not None:
            deadline = time.monotonic() + control.hold_s
            while not awaited.is_set():
                if owner.stopping.is_set() or self._client_left(0.02):
                    control.disconnected.set()
                    return False
                if time.monotonic() >= deadline:
                    control.gave_up.append(index)
                    break
            if awaited is control.released:
                control.release()  # held once: the rest goes out as scripted
            return True
        if scripted.event_delay_s and self._client_left(scripted.event_delay_s):
            control.disconnected.set()
            return False
        return not owner.stopping.is_set()

    def _client_left(self, wait_s: float) -> bool:
        """Wait up to ``wait_s`` for the client to close the connection; True if it did."""
        deadline = time.monotonic() + wait_s
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            readable, _, _ = select.select([self.connection], [], [], left)
            if not readable:
                return False
            try:
                peeked = self.connection.recv(1, socket.MSG_PEEK)
            except OSError:
                return True
            if not peeked:
                return True
            # The client sent something (it should not, mid-response): wait out the delay.
            time.sleep(max(0.0, deadline - time.monotonic()))
            return False


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # Bursts of concurrent clients (benchmarks open dozens of connections at once).
    request_queue_size = 256
    owner: LoopbackHTTPServer

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that vanished mid-request is routine here (timeouts and drops are scripted).
        _log.debug("loopback: connection error from %s", client_address, exc_info=True)
