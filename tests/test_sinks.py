"""Sinks: audit records, JSONL files, the webhook (against a real loopback server), background."""

from __future__ import annotations

import base64
import json
import logging
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from traceguard._images import ImageRef
from traceguard._policy import Policy
from traceguard._sinks import AuditRecord, BackgroundSink, JsonlSink, Sink, SinkError
from traceguard._trace import Trace
from traceguard._verdict import Verdict
from traceguard._webhook import WebhookSink

# A real PNG header (1×1) followed by a marker that must never reach a record.
PNG = (
    b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x02\x00\x00\x00"
    b"\x90wS\xde" + b"SECRET-PIXELS" * 20
)


def make_record(risk: float = 1.0, trace_id: str = "t-1") -> AuditRecord:
    trace = Trace(
        query="how?",
        thinking="hmm",
        response="answer",
        images=(ImageRef.from_bytes(PNG),),
        id=trace_id,
    )
    decision = Policy().decide(Verdict.ok(auditor="test", risk=risk), trace)
    return AuditRecord.from_decision(trace, decision)


# -- AuditRecord --------------------------------------------------------------------------------


def test_record_is_json_ready_and_never_holds_image_bytes() -> None:
    record = make_record()
    data = record.to_dict()
    line = record.to_json()
    assert json.loads(line) == data
    assert "\n" not in line
    assert data["trace_id"] == "t-1"
    assert data["decision"]["action"] == "block"
    assert data["decision"]["verdict"]["risk"] == 1.0
    assert len(data["content_hash"]) == 64
    assert data["trace"]["images"] and data["trace"]["query_chars"] == 4
    assert "SECRET-PIXELS" not in line
    assert base64.b64encode(PNG[:30]).decode()[:20] not in line
    assert record.verdict is record.decision.verdict
    assert data["timestamp"].endswith("+00:00")


def test_records_have_unique_ids() -> None:
    assert make_record().record_id != make_record().record_id


# -- JsonlSink ----------------------------------------------------------------------------------


def test_jsonl_appends_one_line_per_record(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    with JsonlSink(path) as sink:
        sink.emit(make_record(1.0, "a"))
        sink.emit(make_record(0.0, "b"))
        # Unbuffered: the lines are on disk before close.
        assert len(path.read_text().splitlines()) == 2
    with JsonlSink(path) as sink:
        sink.emit(make_record(0.5, "c"))
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [line["trace_id"] for line in lines] == ["a", "b", "c"]
    assert path.stat().st_mode & 0o777 == 0o600


def test_jsonl_closed_sink_refuses(tmp_path: Path) -> None:
    sink = JsonlSink(tmp_path / "a.jsonl")
    sink.close()
    sink.close()  # idempotent
    with pytest.raises(SinkError, match="closed"):
        sink.emit(make_record())


def test_jsonl_threads_never_interleave(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    sink = JsonlSink(path)
    record = make_record()

    def work() -> None:
        for _ in range(100):
            sink.emit(record)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    sink.close()
    lines = path.read_text().splitlines()
    assert len(lines) == 400
    assert all(json.loads(line)["record_id"] == record.record_id for line in lines)


# A child process appends through its own JsonlSink; subprocesses rather than fork, because
# forking a process that runs threads is unsafe (and deprecated from Python 3.12).
_CHILD_APPEND = """
import sys
from traceguard._policy import Policy
from traceguard._sinks import AuditRecord, JsonlSink
from traceguard._trace import Trace
from traceguard._verdict import Verdict
trace = Trace(query="q", response="r" * 3000, id=sys.argv[2])
record = AuditRecord.from_decision(trace, Policy().decide(Verdict.ok(auditor="t", risk=1.0), trace))
sink = JsonlSink(sys.argv[1])
for _ in range(200):
    sink.emit(record)
sink.close()
"""


def test_jsonl_processes_never_interleave(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    children = [
        subprocess.Popen([sys.executable, "-c", _CHILD_APPEND, str(path), name])
        for name in ("a", "b")
    ]
    assert [child.wait(60) for child in children] == [0, 0]
    lines = path.read_text().splitlines()
    assert len(lines) == 400
    assert sorted(json.loads(line)["trace_id"] for line in lines) == ["a"] * 200 + ["b"] * 200


# -- a loopback webhook receiver ----------------------------------------------------------------


@dataclass
class Receiver:
    """Answers each POST with the next scripted (status, delay); 200 when the script is empty."""

    url: str = ""
    script: deque[tuple[int, float]] = field(default_factory=deque)
    bodies: list[dict[str, object]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    times: list[float] = field(default_factory=list)

    def answer(self, *steps: tuple[int, float] | int) -> None:
        for step in steps:
            self.script.append(step if isinstance(step, tuple) else (step, 0.0))


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    state = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["content-length"]))
            with state.lock:
                status, delay = state.script.popleft() if state.script else (200, 0.0)
                state.bodies.append(json.loads(body))
                state.times.append(time.monotonic())
                state.headers.append({k.lower(): v for k, v in self.headers.items()})
            time.sleep(delay)
            self.send_response(status)
            if status == 429:
                self.send_header("retry-after", "0.3")
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}/hooks/s3cr3t-path?token=qs-secret"
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


_SPILL = tempfile.mkdtemp(prefix="traceguard-test-spill-")


def webhook(url: str, **kwargs: object) -> WebhookSink:
    options: dict[str, object] = {
        "backoff": 0.01,
        "max_backoff": 0.05,
        "timeout": 5.0,
        "allow_private": True,
        "spill_dir": _SPILL,
        "close_timeout": 5.0,
    }
    options.update(kwargs)
    return WebhookSink(url, **options)  # type: ignore[arg-type]


# -- WebhookSink --------------------------------------------------------------------------------


def test_webhook_posts_the_record_with_headers(receiver: Receiver) -> None:
    record = make_record()
    with webhook(receiver.url, headers={"Authorization": "Bearer tok-123"}) as sink:
        sink.emit(record)
    assert receiver.bodies == [record.to_dict()]
    assert receiver.headers[0]["authorization"] == "Bearer tok-123"
    assert receiver.headers[0]["content-type"] == "application/json"
    assert (sink.delivered, sink.pending, sink.dropped, sink.rejected) == (1, 0, 0, 0)


def test_webhook_batches_post_json_arrays(receiver: Receiver) -> None:
    records = [make_record() for _ in range(5)]
    with webhook(receiver.url, batch_size=2) as sink:
        for record in records:
            sink.emit(record)
    received = [r for body in receiver.bodies for r in body]  # type: ignore[attr-defined]
    assert sorted(r["record_id"] for r in received) == sorted(r.record_id for r in records)
    assert all(isinstance(body, list) and len(body) <= 2 for body in receiver.bodies)


def test_webhook_retries_5xx_429_redirects_and_auth_errors_then_delivers(
    receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    receiver.answer(500, 503, 429, 302, 401, 404)
    with (
        caplog.at_level(logging.WARNING, logger="traceguard.sinks"),
        webhook(receiver.url, headers={"Authorization": "Bearer tok-123"}) as sink,
    ):
        sink.emit(make_record())
    assert len(receiver.bodies) == 7
    # The same record each time, so the receiver can deduplicate.
    assert len({body["record_id"] for body in receiver.bodies}) == 1
    assert sink.delivered == 1
    assert "retrying" in caplog.text
    for secret in ("tok-123", "s3cr3t-path", "qs-secret"):
        assert secret not in caplog.text


@pytest.mark.parametrize("status", [400, 409, 413, 415, 422])
def test_webhook_counts_refused_content_and_does_not_retry_it(
    receiver: Receiver, status: int, caplog: pytest.LogCaptureFixture
) -> None:
    receiver.answer(status)
    with caplog.at_level(logging.WARNING, logger="traceguard.sinks"):
        with webhook(receiver.url) as sink:
            sink.emit(make_record())
            sink.emit(make_record())
    assert len(receiver.bodies) == 2
    assert (sink.delivered, sink.rejected, sink.undelivered) == (1, 1, 1)
    assert "refused a record" in caplog.text and "s3cr3t-path" not in caplog.text


def test_webhook_finds_the_refused_record_in_a_batch(receiver: Receiver) -> None:
    receiver.answer(422)  # the batch of three is refused; then each alone: one is refused
    receiver.answer(200, 422, 200)
    with webhook(receiver.url, batch_size=3) as sink:
        for _ in range(3):
            sink.emit(make_record())
    assert (sink.delivered, sink.rejected) == (2, 1)


def test_webhook_connection_refused_keeps_the_records_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Bind then close a port: nothing listens there.
    import socket

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    url = f"http://127.0.0.1:{port}/hooks/s3cr3t-path"
    with caplog.at_level(logging.WARNING, logger="traceguard.sinks"):
        sink = webhook(url, max_retries=1, spill_dir=tmp_path, close_timeout=0.3)
        sink.emit(make_record())
        sink.close()
    assert (sink.delivered, sink.pending, sink.dropped) == (0, 1, 0)
    assert "1 not delivered" in caplog.text and "kept in" in caplog.text
    assert "s3cr3t-path" not in caplog.text and "s3cr3t-path" not in repr(sink)
    with pytest.raises(SinkError, match="closed"):
        sink.emit(make_record())


# -- BackgroundSink -----------------------------------------------------------------------------


def test_background_emit_returns_while_the_receiver_sleeps(receiver: Receiver) -> None:
    receiver.answer((200, 0.3))
    sink = BackgroundSink(webhook(receiver.url))
    started = time.perf_counter()
    sink.emit(make_record())
    elapsed = time.perf_counter() - started
    assert elapsed < 0.05
    assert sink.pending == 1
    assert sink.flush(timeout=5.0)
    assert len(receiver.bodies) == 1
    sink.close()


class _Gate(Sink):
    """An inner sink that waits for a gate before storing: lets a test fill the queue."""

    def __init__(self, fail: bool = False) -> None:
        self.gate = threading.Event()
        self.stored: list[AuditRecord] = []
        self.fail = fail
        self.closed = False

    def emit(self, record: AuditRecord) -> None:
        self.gate.wait(5.0)
        if self.fail:
            raise OSError("disk full")
        self.stored.append(record)

    def close(self) -> None:
        self.closed = True


def test_background_drops_when_full_without_blocking(caplog: pytest.LogCaptureFixture) -> None:
    inner = _Gate()
    sink = BackgroundSink(inner, maxsize=2)
    with caplog.at_level(logging.WARNING, logger="traceguard.sinks"):
        sink.emit(make_record())
        # Wait until the worker has taken the first record and is stuck on the gate.
        deadline = time.monotonic() + 5.0
        while sink.pending != 1 or sink._queue:
            assert time.monotonic() < deadline
            time.sleep(0.001)
        started = time.perf_counter()
        for _ in range(5):
            sink.emit(make_record())
        assert time.perf_counter() - started < 0.05
    assert sink.dropped == 3
    assert "queue full" in caplog.text
    inner.gate.set()
    assert sink.flush(5.0)
    assert len(inner.stored) == 3
    sink.close()
    assert inner.closed


def test_background_counts_inner_errors_and_keeps_going() -> None:
    inner = _Gate(fail=True)
    inner.gate.set()
    sink = BackgroundSink(inner)
    sink.emit(make_record())
    sink.emit(make_record())
    assert sink.flush(5.0)
    assert sink.errors == 2
    sink.close()


def test_background_close_delivers_queued_records_then_refuses(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    sink = BackgroundSink(JsonlSink(path))
    for _ in range(20):
        sink.emit(make_record())
    sink.close()
    sink.close()
    assert len(path.read_text().splitlines()) == 20
    with pytest.raises(SinkError, match="closed"):
        sink.emit(make_record())


def test_background_close_abandons_records_after_timeout(
    caplog: pytest.LogCaptureFixture,
) -> None:
    inner = _Gate()
    sink = BackgroundSink(inner)
    for _ in range(3):
        sink.emit(make_record())
    with caplog.at_level(logging.WARNING, logger="traceguard.sinks"):
        sink.close(timeout=0.05)
    assert "undelivered" in caplog.text
    inner.gate.set()


def test_webhook_honours_retry_after(receiver: Receiver) -> None:
    receiver.answer(429)  # the receiver asks for 0.3 s; the backoff alone would be ~0.01 s
    with webhook(receiver.url, max_backoff=1.0) as sink:
        sink.emit(make_record())
    assert len(receiver.times) == 2
    assert receiver.times[1] - receiver.times[0] >= 0.29
