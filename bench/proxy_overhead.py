"""What ``traceguard serve`` adds on the wire: the proxy vs the same upstream called directly.

Three processes, so none competes with another for a GIL: the upstream, the proxy, and this
load generator. On the 2-core development machine they still share two cores, which is the
honest ceiling of every figure below.

- **Upstream**: a minimal asyncio HTTP/1.1 server speaking the Chat Completions shape (a JSON
  completion, or an SSE stream of ``--chunks`` chunks ``--chunk-delay`` apart). It echoes the
  request's marker (its user message) into every chunk, so a chunk that reached the wrong
  client is caught. A faster stand-in than the threaded test server, so the upstream is not
  what is measured.
- **Proxy**: the real app (``create_app`` on uvicorn), keyed, in ``passthrough`` stream mode
  (time to first chunk is then the proxy's own cost; ``buffer`` mode would add the whole
  generation), with an *instant* auditor (a safe verdict, no I/O) swapped in after building:
  the figures are the proxy's overhead, not an auditor's.
- **Load generator**: raw asyncio sockets (no HTTP library: httpx alone costs ≈ 1.5 ms per
  request and would be the bottleneck), keep-alive connections, one per concurrent client.

Rows: concurrency 1, 64 and 500. Non-streamed requests give latency (p50, p99) and
throughput; streamed ones give time to first chunk. At 500 concurrent streams every chunk's
marker is checked, and the proxy's RSS is read before, between and after two rounds.

Usage::

    python bench/proxy_overhead.py [--requests 400] [--out bench/results/proxy_overhead.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUTPUT = ROOT / "bench" / "results" / "proxy_overhead.json"
CLIENT_KEY = "bench-client-key"

# -- the upstream (child process) ----------------------------------------------------------------


def _completion(marker: str) -> bytes:
    return json.dumps(
        {
            "id": "chatcmpl-bench",
            "object": "chat.completion",
            "created": 1700000000,
            "model": "bench",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": f"answer for {marker}"},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8},
        }
    ).encode()


def _chunk(marker: str, index: int, finish: str | None = None) -> bytes:
    body = {
        "id": "chatcmpl-bench",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": "bench",
        "choices": [
            {
                "index": 0,
                "delta": {} if finish else {"content": f"[{marker}:{index}]"},
                "finish_reason": finish,
            }
        ],
    }
    data = b"data: " + json.dumps(body).encode() + b"\n\n"
    return b"%X\r\n%s\r\n" % (len(data), data)


async def _serve_upstream(port: int, chunks: int, delay: float, latency: float) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                body = json.loads(await reader.readexactly(length)) if length else {}
                if head.startswith(b"GET"):
                    payload = b'{"object":"list","data":[]}'
                    writer.write(
                        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                        b"content-length: %d\r\n\r\n%s" % (len(payload), payload)
                    )
                    continue
                marker = str(body["messages"][-1]["content"])
                if marker.startswith("slow-") and latency:
                    await asyncio.sleep(latency)  # a model server's generation time
                if not body.get("stream"):
                    payload = _completion(marker)
                    writer.write(
                        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                        b"content-length: %d\r\n\r\n%s" % (len(payload), payload)
                    )
                    continue
                writer.write(
                    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                    b"transfer-encoding: chunked\r\n\r\n"
                )
                for index in range(chunks):
                    writer.write(_chunk(marker, index))
                    await writer.drain()
                    if delay:
                        await asyncio.sleep(delay)
                writer.write(_chunk(marker, chunks, finish="stop"))
                done = b"data: [DONE]\n\n"
                writer.write(b"%X\r\n%s\r\n0\r\n\r\n" % (len(done), done))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=2048)
    async with server:
        await server.serve_forever()


# -- the proxy (child process) -------------------------------------------------------------------


def _serve_proxy(port: int, upstream_port: int) -> None:
    import hashlib

    import uvicorn

    from traceguard import Auditor, Verdict
    from traceguard.config import GuardConfig
    from traceguard.proxy import create_app

    class InstantAuditor(Auditor):
        """A safe verdict at once, without a thread hop: the proxy's cost alone is measured."""

        name = "instant"

        def audit_batch(self, traces: Sequence[Any]) -> list[Verdict]:
            return [Verdict.ok(auditor=self.name, risk=0.0) for _ in traces]

        async def aaudit_batch(self, traces: Sequence[Any]) -> list[Verdict]:
            return self.audit_batch(traces)

    config = GuardConfig.from_mapping(
        {
            "auditor": {"kind": "baseline"},
            "serve": {
                "upstream": {"url": f"http://127.0.0.1:{upstream_port}/v1"},
                "keys": [
                    {"name": "bench", "sha256": hashlib.sha256(CLIENT_KEY.encode()).hexdigest()}
                ],
                "stream": {"mode": "passthrough"},
                "limits": {"max_in_flight": 4096},
                "log_level": "warning",
            },
        }
    )
    app = create_app(config)
    app.state.proxy.guard.auditor = InstantAuditor()
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=port,
        log_level="warning",
        access_log=False,
        backlog=2048,
        timeout_graceful_shutdown=5,
    )


# -- the load generator --------------------------------------------------------------------------


class Connection:
    """One keep-alive HTTP/1.1 connection, speaking just enough of the protocol."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, port: int) -> Connection:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 20)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return cls(reader, writer)

    def send(self, body: bytes) -> None:
        self.writer.write(
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1\r\n"
            b"authorization: Bearer " + CLIENT_KEY.encode() + b"\r\n"
            b"content-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)
        )

    async def head(self) -> tuple[int, dict[bytes, bytes]]:
        raw = await self.reader.readuntil(b"\r\n\r\n")
        lines = raw.split(b"\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            if b":" in line:
                name, value = line.split(b":", 1)
                headers[name.strip().lower()] = value.strip()
        return status, headers

    async def body_chunks(self, headers: dict[bytes, bytes]) -> Any:
        if b"content-length" in headers:
            yield await self.reader.readexactly(int(headers[b"content-length"]))
            return
        while True:
            size = int((await self.reader.readline()).strip(), 16)
            if size == 0:
                await self.reader.readline()
                return
            data = await self.reader.readexactly(size)
            await self.reader.readline()
            yield data

    def close(self) -> None:
        self.writer.close()


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


async def _json_round(
    port: int, concurrency: int, total: int, *, prefix: str = "m"
) -> dict[str, Any]:
    connections = [await Connection.open(port) for _ in range(concurrency)]
    latencies: list[float] = []
    counter = iter(range(total))

    async def worker(conn: Connection) -> None:
        for index in counter:
            marker = f"{prefix}{index}"
            body = json.dumps({"model": "bench", "messages": [{"role": "user", "content": marker}]})
            started = time.perf_counter()
            conn.send(body.encode())
            status, headers = await conn.head()
            payload = b"".join([piece async for piece in conn.body_chunks(headers)])
            latencies.append(time.perf_counter() - started)
            if status != 200 or marker.encode() not in payload:
                raise RuntimeError(f"bad answer {status}")

    started = time.perf_counter()
    await asyncio.gather(*(worker(conn) for conn in connections))
    elapsed = time.perf_counter() - started
    for conn in connections:
        conn.close()
    return {
        "requests": total,
        "p50_ms": round(statistics.median(latencies) * 1000, 3),
        "p99_ms": round(_percentile(latencies, 0.99) * 1000, 3),
        "throughput_rps": round(total / elapsed, 1),
    }


async def _stream_round(port: int, concurrency: int, per_client: int) -> dict[str, Any]:
    connections = [await Connection.open(port) for _ in range(concurrency)]
    first_chunk: list[float] = []
    wrong = 0
    chunks_seen = 0

    async def worker(number: int, conn: Connection) -> None:
        nonlocal wrong, chunks_seen
        for round_index in range(per_client):
            marker = f"client{number}-r{round_index}"
            body = json.dumps(
                {
                    "model": "bench",
                    "stream": True,
                    "messages": [{"role": "user", "content": marker}],
                }
            )
            started = time.perf_counter()
            conn.send(body.encode())
            status, headers = await conn.head()
            if status != 200:
                raise RuntimeError(f"bad stream {status}")
            first = True
            buffer = b""
            async for piece in conn.body_chunks(headers):
                if first:
                    first_chunk.append(time.perf_counter() - started)
                    first = False
                buffer += piece
            for event in buffer.split(b"\n\n"):
                if not event.startswith(b"data: {"):
                    continue
                data = json.loads(event[6:])
                content = data["choices"][0]["delta"].get("content") if data["choices"] else None
                if content is None:
                    continue
                chunks_seen += 1
                if not content.startswith(f"[{marker}:"):
                    wrong += 1

    await asyncio.gather(*(worker(n, conn) for n, conn in enumerate(connections)))
    for conn in connections:
        conn.close()
    return {
        "streams": concurrency * per_client,
        "ttfc_p50_ms": round(statistics.median(first_chunk) * 1000, 3),
        "ttfc_p99_ms": round(_percentile(first_chunk, 0.99) * 1000, 3),
        "chunks_checked": chunks_seen,
        "chunks_at_wrong_client": wrong,
    }


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds the process has used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return float("nan")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_port(port: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listens on {port}")


async def _measure(args: argparse.Namespace, upstream: int, proxy: int, pid: int) -> dict[str, Any]:
    rows: dict[str, Any] = {}
    for concurrency in (1, 64, 500):
        total = max(args.requests, concurrency * 4)
        # Warm both paths (connections, caches), then measure direct and proxy alternately.
        await _json_round(upstream, min(concurrency, 64), 64)
        await _json_round(proxy, min(concurrency, 64), 64)
        direct = await _json_round(upstream, concurrency, total)
        cpu_before = _cpu_s(pid)
        proxied = await _json_round(proxy, concurrency, total)
        proxied["proxy_cpu_ms_per_request"] = round((_cpu_s(pid) - cpu_before) * 1000 / total, 3)
        streams_per_client = max(1, args.requests // (concurrency * 4))
        direct_stream = await _stream_round(upstream, concurrency, streams_per_client)
        proxied_stream = await _stream_round(proxy, concurrency, streams_per_client)
        rows[str(concurrency)] = {
            "direct": {**direct, **direct_stream},
            "proxy": {**proxied, **proxied_stream},
            "added_p50_ms": round(proxied["p50_ms"] - direct["p50_ms"], 3),
            "added_p99_ms": round(proxied["p99_ms"] - direct["p99_ms"], 3),
            "added_ttfc_p50_ms": round(
                proxied_stream["ttfc_p50_ms"] - direct_stream["ttfc_p50_ms"], 3
            ),
            "throughput_ratio": round(proxied["throughput_rps"] / direct["throughput_rps"], 3),
        }
        print(f"concurrency {concurrency}: {json.dumps(rows[str(concurrency)])}", flush=True)
    # The same at concurrency 64 against an upstream that takes --model-latency per answer, as a
    # model server does: what the proxy costs when the upstream is not free.
    direct = await _json_round(upstream, 64, args.requests * 2, prefix="slow-")
    cpu_before = _cpu_s(pid)
    proxied = await _json_round(proxy, 64, args.requests * 2, prefix="slow-")
    proxied["proxy_cpu_ms_per_request"] = round(
        (_cpu_s(pid) - cpu_before) * 1000 / (args.requests * 2), 3
    )
    rows["64_with_model_latency"] = {
        "model_latency_s": args.model_latency,
        "direct": direct,
        "proxy": proxied,
        "added_p50_ms": round(proxied["p50_ms"] - direct["p50_ms"], 3),
        "throughput_ratio": round(proxied["throughput_rps"] / direct["throughput_rps"], 3),
    }
    print(f"64 with model latency: {json.dumps(rows['64_with_model_latency'])}", flush=True)
    # Memory: two rounds of 500 concurrent streams; RSS before, between, after.
    rss = [_rss_mib(pid)]
    isolation = []
    for _ in range(2):
        result = await _stream_round(proxy, 500, 1)
        isolation.append(result)
        rss.append(_rss_mib(pid))
    rows["memory_500_streams"] = {
        "rss_mib_before_between_after": rss,
        "chunks_checked": sum(r["chunks_checked"] for r in isolation),
        "chunks_at_wrong_client": sum(r["chunks_at_wrong_client"] for r in isolation),
    }
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--chunks", type=int, default=20)
    parser.add_argument("--chunk-delay", type=float, default=0.005)
    parser.add_argument("--model-latency", type=float, default=0.1)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--role", choices=("upstream", "proxy"), help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--upstream-port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role == "upstream":
        asyncio.run(_serve_upstream(args.port, args.chunks, args.chunk_delay, args.model_latency))
        return
    if args.role == "proxy":
        _serve_proxy(args.port, args.upstream_port)
        return

    upstream_port, proxy_port = _free_port(), _free_port()
    me = [sys.executable, __file__]
    children = [
        subprocess.Popen(
            [
                *me,
                "--role",
                "upstream",
                "--port",
                str(upstream_port),
                "--chunks",
                str(args.chunks),
                "--chunk-delay",
                str(args.chunk_delay),
                "--model-latency",
                str(args.model_latency),
            ]
        ),
        subprocess.Popen(
            [
                *me,
                "--role",
                "proxy",
                "--port",
                str(proxy_port),
                "--upstream-port",
                str(upstream_port),
            ]
        ),
    ]
    try:
        _wait_port(upstream_port)
        _wait_port(proxy_port)
        rows = asyncio.run(_measure(args, upstream_port, proxy_port, children[1].pid))
    finally:
        for child in children:
            child.send_signal(signal.SIGTERM)
        for child in children:
            try:
                child.wait(20)
            except subprocess.TimeoutExpired:
                child.kill()
    result = {
        "benchmark": "proxy_overhead",
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "load_average_at_start": os.getloadavg(),
        },
        "settings": {
            "requests": args.requests,
            "stream_chunks": args.chunks,
            "chunk_delay_s": args.chunk_delay,
            "model_latency_s": args.model_latency,
            "proxy_stream_mode": "passthrough",
            "auditor": "instant (safe verdict, no I/O)",
            "load_generator": "raw asyncio sockets, keep-alive, separate process",
        },
        "goals": {"added_p50_ms_at_1": "< 1", "throughput_ratio_at_64": ">= 0.9"},
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
