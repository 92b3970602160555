"""A hostile HTTP peer on 127.0.0.1: a raw TCP server whose every answer is a test's function.

The proxy's upstream in the probes: it can echo credentials, declare a gigabyte chunk, send
headers with bare line feeds, or never end a stream, things no well-behaved server (and so not
``OpenAIServer``) will do. Each connection's request bytes are recorded as they came, so a probe
can also check what the proxy sent on.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

__all__ = ["Connection", "HostileServer", "hostile_server", "json_response"]


@dataclass
class Connection:
    """One accepted connection: the request head the proxy sent, and the socket to answer on."""

    sock: socket.socket
    head: bytes
    sent: int = 0
    closed_by_peer: bool = False
    """True when the proxy closed the connection while the handler was still sending."""

    def send(self, data: bytes) -> bool:
        """Send ``data``; False (and ``closed_by_peer``) once the proxy has hung up."""
        try:
            self.sock.sendall(data)
        except OSError:
            self.closed_by_peer = True
            return False
        self.sent += len(data)
        return True


Handler = Callable[[Connection], None]


@dataclass
class HostileServer:
    port: int
    handler: Handler
    connections: list[Connection] = field(default_factory=list)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def heads(self) -> list[bytes]:
        """Every request head received, in order (pipelined requests split)."""
        out: list[bytes] = []
        for connection in self.connections:
            out += [part for part in connection.head.split(b"\r\n\r\n") if part]
        return out


def _read_head(sock: socket.socket) -> bytes:
    data = b""
    sock.settimeout(5)
    while b"\r\n\r\n" not in data:
        piece = sock.recv(65536)
        if not piece:
            break
        data += piece
    head, _, rest = data.partition(b"\r\n\r\n")
    # Keep what came after the head too (a body, or a smuggled second request).
    sock.settimeout(0.2)
    try:
        while True:
            piece = sock.recv(65536)
            if not piece:
                break
            rest += piece
    except OSError:
        pass
    return head + b"\r\n\r\n" + rest


@contextmanager
def hostile_server(handler: Handler) -> Iterator[HostileServer]:
    """Serve ``handler`` on an ephemeral loopback port until the block ends."""
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    server = HostileServer(port=listener.getsockname()[1], handler=handler)
    stop = threading.Event()

    def serve_one(sock: socket.socket) -> None:
        with sock:
            connection = Connection(sock=sock, head=_read_head(sock))
            server.connections.append(connection)
            sock.settimeout(10)
            try:
                handler(connection)
            except OSError:
                connection.closed_by_peer = True

    def accept() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                sock, _ = listener.accept()
            except OSError:
                continue
            threading.Thread(target=serve_one, args=(sock,), daemon=True).start()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        stop.set()
        thread.join(5)
        listener.close()


def json_response(status: int, body: bytes, *headers: tuple[str, str]) -> bytes:
    """A whole HTTP/1.1 response with ``Content-Length``."""
    lines = [f"HTTP/1.1 {status} X", "content-type: application/json"]
    lines += [f"{name}: {value}" for name, value in headers]
    lines.append(f"content-length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
