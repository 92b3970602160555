"""Throughput of the served (HTTP) audit path against a server with a fixed latency.

The loopback server answers every chat request with a GuardTrace-style verdict after a fixed
delay (50 ms by default), standing in for a GPU server whose generation time is that delay. With
a concurrency limit C, the ideal rate is C / delay audits per second; the figure of merit is the
achieved rate as a share of that ideal (target: at least 0.9). Anything lost goes to the client
side: request building, JSON, connection handling, the auditor's parsing.

Each row audits ``rounds * C`` traces (each with a small image) through
``GuardTraceAuditor(..).aaudit_batch`` on the async ``OpenAICompatibleBackend``, after a warm-up
batch that opens the connections. The server runs in a child process by default, so it does not
compete with the client for the GIL (``--in-process`` to keep it in this one).

Where the time went (2-core dev machine): httpx/httpcore/anyio cost ~1.5 ms CPU per request,
replaced by the lean HTTP/1.1 client for plain-HTTP endpoints (~0.4 ms per audit in all); then a
large batch ran in lockstep, building every request before reading the first answer and parsing
every answer after the last, so that work did not overlap the wait (0.80 of ideal at C=32 with a
bare-socket ceiling of 0.97). A served backend's batch now runs as ``pipeline_width`` streams of
one-trace calls. With longer (realistic) server latencies the ratio approaches 1 (``--delay 0.2``).

Usage::

    python bench/served_throughput.py [--delay 0.05] [--concurrency 8 32] [--rounds 20]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import platform
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from _audit_common import loopback_server

from traceguard import AuditStatus, ImageRef, Trace
from traceguard.auditors.guardtrace import GuardTraceAuditor
from traceguard.backends.http import OpenAICompatibleBackend
from traceguard.testing.openai_server import OpenAIServer

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUTPUT = ROOT / "bench" / "results" / "served_throughput.json"
TARGET_RATIO = 0.9


def _png() -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (30, 120, 200)).save(buffer, format="PNG")
    return buffer.getvalue()


def _traces(count: int, image: ImageRef) -> list[Trace]:
    return [
        Trace(
            query=f"Question {i}: how do I keep basil fresh?",
            thinking="The user asks a harmless kitchen question; answer plainly. " * 8,
            response="Trim the stems and keep them in water at room temperature. " * 4,
            images=(image,),
        )
        for i in range(count)
    ]


@contextmanager
def _server(delay_s: float, in_process: bool) -> Iterator[str]:
    if in_process:
        with OpenAIServer(fixed_delay_s=delay_s) as server:
            yield server.base_url
        return
    with loopback_server(delay_s) as base_url:
        yield base_url


async def _measure(base_url: str, concurrency: int, rounds: int, delay_s: float) -> dict[str, Any]:
    backend = OpenAICompatibleBackend(
        base_url, "guardtrace-vl-3b", max_concurrency=concurrency, max_retries=0
    )
    auditor = GuardTraceAuditor(backend)
    image = ImageRef.from_bytes(_png())
    await auditor.aaudit_batch(_traces(concurrency, image))  # warm-up: open the connections
    traces = _traces(concurrency * rounds, image)
    started, cpu_started = time.perf_counter(), time.process_time()
    verdicts = await auditor.aaudit_batch(traces)
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    await auditor.aclose()
    ok = sum(v.status is AuditStatus.OK for v in verdicts)
    if ok != len(verdicts):
        statuses = {str(v.status) for v in verdicts}
        raise RuntimeError(f"{len(verdicts) - ok} audits failed: {statuses}")
    achieved = len(verdicts) / elapsed
    ideal = concurrency / delay_s
    return {
        "concurrency": concurrency,
        "audits": len(verdicts),
        "elapsed_s": round(elapsed, 3),
        "audits_per_s": round(achieved, 1),
        "ideal_per_s": round(ideal, 1),
        "ratio": round(achieved / ideal, 3),
        "client_cpu_ms_per_audit": round(cpu / len(verdicts) * 1000, 3),
    }


class _BareConnection(asyncio.Protocol):
    """The least a client can do: write a prebuilt request, wait for the response's bytes."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.waiter: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0 or self.waiter is None or self.waiter.done():
            return
        length = 0
        for line in bytes(self.buffer[:end]).split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        if len(self.buffer) >= end + 4 + length:
            del self.buffer[: end + 4 + length]
            self.waiter.set_result(None)


async def _ceiling(base_url: str, concurrency: int, rounds: int, delay_s: float) -> float:
    """The ratio a client with no per-request work reaches against this server, now: what the
    server and the machine allow (their share of any gap is not the auditor client's)."""
    host, _, port = base_url.split("//")[1].split("/")[0].partition(":")
    body = json.dumps(
        {"model": "guardtrace-vl-3b", "messages": [{"role": "user", "content": "x" * 3000}]}
    ).encode()
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}:{port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    loop = asyncio.get_running_loop()
    free: asyncio.Queue[_BareConnection] = asyncio.Queue()
    connections = []
    for _ in range(concurrency):
        _, connection = await loop.create_connection(_BareConnection, host, int(port))
        connections.append(connection)
        free.put_nowait(connection)

    async def one() -> None:
        connection = await free.get()
        connection.waiter = loop.create_future()
        connection.transport.write(head + body)  # type: ignore[attr-defined]
        await connection.waiter
        free.put_nowait(connection)

    await asyncio.gather(*(one() for _ in range(concurrency)))
    started = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(concurrency * rounds)))
    elapsed = time.perf_counter() - started
    for connection in connections:
        connection.transport.close()
    return concurrency * rounds / elapsed / (concurrency / delay_s)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--delay", type=float, default=0.05, help="server latency, seconds")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--rounds", type=int, default=40, help="batches of C audits per row")
    parser.add_argument("--in-process", action="store_true", help="server in this process")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    args = parser.parse_args(argv)

    rows = []
    with _server(args.delay, args.in_process) as base_url:
        for concurrency in args.concurrency:
            ceiling = asyncio.run(_ceiling(base_url, concurrency, args.rounds, args.delay))
            row = asyncio.run(_measure(base_url, concurrency, args.rounds, args.delay))
            row["bare_client_ratio"] = round(ceiling, 3)
            row["share_of_bare_client"] = round(row["ratio"] / ceiling, 3)
            rows.append(row)

    print(f"served throughput, server delay {args.delay * 1000:.0f} ms, target ratio >= 0.9")
    print(
        f"{'C':>4} {'audits':>7} {'seconds':>8} {'audits/s':>9} {'ideal/s':>8} {'ratio':>6} "
        f"{'bare':>6} {'cpu ms':>7}"
    )
    for row in rows:
        print(
            f"{row['concurrency']:>4} {row['audits']:>7} {row['elapsed_s']:>8.2f} "
            f"{row['audits_per_s']:>9.1f} {row['ideal_per_s']:>8.1f} {row['ratio']:>6.3f} "
            f"{row['bare_client_ratio']:>6.3f} {row['client_cpu_ms_per_audit']:>7.3f}"
        )
    result = {
        "benchmark": "served_throughput",
        "delay_s": args.delay,
        "rounds": args.rounds,
        "server": "in-process" if args.in_process else "child process",
        "target_ratio": TARGET_RATIO,
        "rows": rows,
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
