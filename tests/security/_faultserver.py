"""A loopback HTTP server that misbehaves on purpose, at the socket level.

``traceguard.testing.OpenAIServer`` answers like a well-behaved (if scripted) server; the faults
here are those it cannot produce: bytes trickled below every per-read timeout, a connection
reset, a request that is never answered, a body cut short. Each connection is handled by
``behaviour(conn, request)`` in its own thread; :meth:`FaultServer.close` wakes them all.
"""

from __future__ import annotations

import contextlib
import json
import socket
import struct
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Any

from traceguard.testing.openai_server import chat_completion, guardtrace_output

Behaviour = Callable[["FaultServer", socket.socket, bytes], None]


def _read_request(conn: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    while len(body) < length:
        chunk = conn.recv(65536)
        if not chunk:
            break
        body += chunk
    return head + b"\r\n\r\n" + body


def response_bytes(
    status: int = 200,
    body: bytes | Any = b"",
    headers: dict[str, str] | None = None,
    *,
    length: int | None = None,
) -> bytes:
    """A whole HTTP/1.1 response (``Content-Length`` is ``length`` when given, to lie with)."""
    payload = body if isinstance(body, bytes) else json.dumps(body).encode()
    shown = {"Content-Type": "application/json", "Connection": "close", **(headers or {})}
    shown["Content-Length"] = str(len(payload) if length is None else length)
    head = f"HTTP/1.1 {status} Fault\r\n" + "".join(f"{k}: {v}\r\n" for k, v in shown.items())
    return head.encode() + b"\r\n" + payload


def verdict_body(judgment: str = "0", *, finish_reason: str = "stop") -> dict[str, Any]:
    """A GuardTrace completion with ``judgment``."""
    body = chat_completion(guardtrace_output(judgment))
    body["choices"][0]["finish_reason"] = finish_reason
    return body


# -- behaviours ------------------------------------------------------------------------------


def answer(raw: bytes) -> Behaviour:
    """Send ``raw`` at once and close."""

    def behave(server: FaultServer, conn: socket.socket, request: bytes) -> None:
        conn.sendall(raw)

    return behave


def trickle(raw: bytes, *, every_s: float = 0.25, step: int = 1, endless: bool = True) -> Behaviour:
    """Send ``raw`` ``step`` bytes at a time, a step every ``every_s`` seconds; then, when
    ``endless``, keep sending spaces (inside a body whose length is never reached)."""

    def behave(server: FaultServer, conn: socket.socket, request: bytes) -> None:
        data = raw
        while data or endless:
            piece, data = data[:step], data[step:]
            conn.sendall(piece or b" " * step)
            if server.stopping.wait(every_s):
                return

    return behave


def hang(server: FaultServer, conn: socket.socket, request: bytes) -> None:
    """Read the request and never answer."""
    server.stopping.wait()


def reset(server: FaultServer, conn: socket.socket, request: bytes) -> None:
    """Abort the connection with a TCP reset."""
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def close_silently(server: FaultServer, conn: socket.socket, request: bytes) -> None:
    """Close without any answer."""


class FaultServer:
    """Serves ``behaviour`` (or ``script[i]`` for the i-th connection, then the last) on
    127.0.0.1."""

    def __init__(self, *behaviours: Behaviour) -> None:
        if not behaviours:
            raise ValueError("give at least one behaviour")
        self.behaviours = list(behaviours)
        self.stopping = threading.Event()
        self.requests: list[bytes] = []
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0), backlog=64)
        self._threads: list[threading.Thread] = []
        self._conns: set[socket.socket] = set()
        self._acceptor = threading.Thread(target=self._accept, name="fault-accept", daemon=True)
        self._acceptor.start()

    @property
    def base_url(self) -> str:
        """The OpenAI-style base URL."""
        return f"http://127.0.0.1:{self._listener.getsockname()[1]}/v1"

    def _accept(self) -> None:
        self._listener.settimeout(0.05)  # a blocked accept() would not see close()
        while not self.stopping.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(None)
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            with self._lock:
                self._conns.add(conn)
                self._threads.append(thread)
            thread.start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            request = _read_request(conn)
            with self._lock:
                index = len(self.requests)
                self.requests.append(request)
            behaviour = self.behaviours[min(index, len(self.behaviours) - 1)]
            behaviour(self, conn, request)
        except OSError:
            pass  # the client gave up: that is what most behaviours provoke
        finally:
            with contextlib.suppress(OSError):
                conn.close()
            with self._lock:
                self._conns.discard(conn)

    def close(self) -> None:
        """Stop, wake every behaviour and wait for the threads."""
        self.stopping.set()
        with contextlib.suppress(OSError):
            self._listener.close()
        with self._lock:
            conns, threads = list(self._conns), list(self._threads)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        for thread in [self._acceptor, *threads]:
            thread.join(timeout=5)

    def __enter__(self) -> FaultServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
