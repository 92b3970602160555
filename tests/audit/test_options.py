"""AuditOptions: one options object for run_audit / arun_audit, and decisions sent to sinks."""

from __future__ import annotations

import dataclasses
import inspect
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, get_type_hints

import pytest

from traceguard import (
    AuditOptions,
    AuditRecord,
    ConfigurationError,
    JsonlSink,
    Policy,
    ReviewQueue,
    Sink,
    WebhookSink,
    arun_audit,
    run_audit,
)
from traceguard.audit import runner

from ._helpers import chat, scripted, write_jsonl
from .test_runner import read, stable


def test_keywords_are_exactly_the_options_fields() -> None:
    fields = {f.name for f in dataclasses.fields(AuditOptions)}
    assert set(get_type_hints(runner._AuditKeywords)) == fields
    for function in (run_audit, arun_audit):
        parameters = list(inspect.signature(function).parameters)
        assert parameters == ["inputs", "out", "options", "keywords"]


async def test_an_options_object_and_keywords_give_the_same_run(tmp_path: Path) -> None:
    log = write_jsonl(tmp_path / "log.jsonl", [chat(i) for i in range(20)])
    options = AuditOptions(auditor=scripted(), concurrency=3, batch_size=2)
    by_options = run_audit(log, tmp_path / "a.jsonl", options)
    by_keywords = run_audit(
        log, tmp_path / "b.jsonl", auditor=scripted(), concurrency=3, batch_size=2
    )
    by_async = await arun_audit(log, tmp_path / "c.jsonl", options)
    assert stable(read(tmp_path / "a.jsonl")) == stable(read(tmp_path / "b.jsonl"))
    assert stable(read(tmp_path / "a.jsonl")) == stable(read(tmp_path / "c.jsonl"))
    assert by_options.auditor_calls == by_keywords.auditor_calls == by_async.auditor_calls == 10


def test_keywords_override_the_options_object(tmp_path: Path) -> None:
    log = write_jsonl(tmp_path / "log.jsonl", [chat(i) for i in range(6)])
    options = AuditOptions(auditor=scripted(), batch_size=3, policy=Policy(harmful="escalate"))
    summary = run_audit(log, tmp_path / "o.jsonl", options, batch_size=1)
    assert summary.auditor_calls == 6
    assert "block" not in summary.by_action  # the options' policy still applies


def test_a_misspelt_keyword_is_an_error(tmp_path: Path) -> None:
    log = write_jsonl(tmp_path / "log.jsonl", [chat(0)])
    with pytest.raises(TypeError, match="batchsize"):
        run_audit(log, tmp_path / "o.jsonl", batchsize=2)  # type: ignore[call-arg]
    with pytest.raises(ConfigurationError, match="concurrency must be at least 1"):
        run_audit(log, tmp_path / "o.jsonl", AuditOptions(concurrency=0))


# -- sinks ------------------------------------------------------------------------------------


def test_decisions_reach_the_sinks_and_escalations_the_review_queue(tmp_path: Path) -> None:
    log = write_jsonl(tmp_path / "log.jsonl", [chat(i) for i in range(9)] + ["{not json"])
    out = tmp_path / "out.jsonl"
    policy = Policy(potentially_harmful="escalate")
    sinks: list[Sink] = [JsonlSink(tmp_path / "sink.jsonl"), ReviewQueue(tmp_path / "q.sqlite")]
    summary = run_audit(log, out, auditor=scripted(), policy=policy, sinks=sinks, concurrency=3)
    records = read(out)
    assert len(records) == 10 and summary.sink_errors == 0
    logged = read(tmp_path / "sink.jsonl")
    # Sinks get decisions as audits finish (not in input order): one per output record.
    by_id = {r["trace_id"]: r["decision"]["action"] for r in logged}
    assert len(logged) == 10 and by_id == {r["id"]: r["action"] for r in records}
    # The unreadable line is escalated like any failed audit, and reaches the queue too.
    queue = ReviewQueue(tmp_path / "q.sqlite")
    try:
        pending = queue.pending()
    finally:
        queue.close()
    escalated = [r["id"] for r in records if r["action"] == "escalate"]
    assert sorted(e.trace_id or "" for e in pending) == sorted(escalated)
    assert records[-1]["status"] == "invalid_input" and records[-1]["id"] in escalated
    # The run closed the sinks it was given.
    with pytest.raises(Exception, match="closed"):
        sinks[0].emit(AuditRecord.from_decision(*_any_decision()))


def _any_decision() -> tuple[Any, Any]:
    from traceguard import Trace, Verdict

    trace = Trace(query="q", response="r")
    return trace, Policy().decide(Verdict.ok(auditor="a", risk=0.0), trace)


class _Broken(Sink):
    def emit(self, record: AuditRecord) -> None:
        raise OSError("disk on fire")


class _Recorder(BaseHTTPRequestHandler):
    bodies: list[dict[str, Any]] = []
    fail_first: int = 0

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if _Recorder.fail_first > 0:
            _Recorder.fail_first -= 1
            self.send_response(400)
        else:
            _Recorder.bodies.append(json.loads(body))
            self.send_response(204)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


async def test_sink_failures_are_counted_never_fatal_and_the_webhook_delivers(
    tmp_path: Path,
) -> None:
    log = write_jsonl(tmp_path / "log.jsonl", [chat(i) for i in range(5)])
    _Recorder.bodies, _Recorder.fail_first = [], 1
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        hook = WebhookSink(
            f"http://127.0.0.1:{server.server_address[1]}/hook",
            max_retries=0,
            allow_private=True,
            spill_dir=tmp_path / "spill",
        )
        summary = await arun_audit(
            log, tmp_path / "out.jsonl", auditor=scripted(), sinks=[_Broken(), hook]
        )
    finally:
        server.shutdown()
        server.server_close()
    assert summary.records == 5
    # Five records the broken sink refused, one the webhook receiver rejected (HTTP 400).
    assert summary.sink_errors == 6
    assert "sink errors" in summary.table()
    assert len(_Recorder.bodies) == 4
    assert all(body["decision"]["verdict"]["auditor"] == "scripted" for body in _Recorder.bodies)


def test_sinks_are_closed_when_the_run_cannot_start(tmp_path: Path) -> None:
    sink = JsonlSink(tmp_path / "sink.jsonl")
    with pytest.raises(ConfigurationError):
        run_audit(tmp_path / "absent.jsonl", tmp_path / "o.jsonl", sinks=[sink])
    with pytest.raises(Exception, match="closed"):
        sink.emit(AuditRecord.from_decision(*_any_decision()))
