"""Secrets never reach logs, sinks or the review queue (issue 13, fault 12).

httpx logs every request URL at INFO, so a webhook's path and query secrets and a password in
the auditor URL landed in the application's logs. And a password in the auditor URL goes out
as HTTP Basic auth: a 401 body echoing the ``Authorization`` header was stored, base64-encoded,
in the JSONL sink and the review queue.
"""

from __future__ import annotations

import base64
import json
import logging
import socket
from pathlib import Path
from typing import Any

import pytest

from traceguard import (
    Guard,
    GuardTraceAuditor,
    JsonlSink,
    ReviewQueue,
    Trace,
    WebhookSink,
    backends,
)
from traceguard.cli import main
from traceguard.testing.openai_server import OpenAIServer, RecordedRequest, ScriptedResponse

USER, PASSWORD = "probeuser", "Pr0bePassw0rd"
BASIC = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
PATH_SECRET, QUERY_SECRET = "T0PSECRETPATH", "QUERYSECRET99"
SECRETS = (PASSWORD, BASIC, f"{USER}:{PASSWORD}", PATH_SECRET, QUERY_SECRET)


def _echo_credentials(request: RecordedRequest) -> ScriptedResponse:
    if request.path.startswith("/hooks/"):
        return ScriptedResponse.json({"ok": True})
    shown = request.headers.get("authorization", "none")
    return ScriptedResponse.error(401, f"invalid credentials {shown!r} for {request.query}")


def _with_password(server: OpenAIServer) -> str:
    return f"http://{USER}:{PASSWORD}@127.0.0.1:{server.port}/v1"


def _leaks(text: str) -> list[str]:
    return [secret for secret in SECRETS if secret in text]


@pytest.mark.probe("secrets in logs, sinks and stores")
def test_request_logs_show_no_url_secrets(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    with OpenAIServer(responder=_echo_credentials) as server:
        auditor = GuardTraceAuditor(backends.served(_with_password(server), "guard", max_retries=0))
        webhook = WebhookSink(
            f"{server.url}/hooks/{PATH_SECRET}?token={QUERY_SECRET}",
            allow_private=True,
            spill_dir=False,
        )
        guard = Guard(auditor, sinks=[webhook], raise_on_block=False)
        guard.check(Trace(query="q", response="a"))
        guard.close()
        auditor.close()
    # Every record of this process but the receiving server's own access log.
    ours = [r for r in caplog.records if not r.name.startswith("traceguard.testing")]
    shown = "\n".join(record.getMessage() for record in ours)
    assert "HTTP Request" in shown  # httpx still logs its requests, without the secrets
    assert _leaks(shown) == []


@pytest.mark.probe("secrets in logs, sinks and stores")
def test_a_401_echoing_basic_auth_is_stored_without_it(tmp_path: Path) -> None:
    jsonl, queue_path = tmp_path / "audit.jsonl", tmp_path / "queue.sqlite"
    with OpenAIServer(responder=_echo_credentials) as server:
        auditor = GuardTraceAuditor(backends.served(_with_password(server), "guard", max_retries=0))
        queue = ReviewQueue(queue_path)
        guard = Guard(auditor, sinks=[JsonlSink(jsonl), queue], raise_on_block=False)
        decision = guard.check(Trace(query="q", response="a"))
        guard.close()
        auditor.close()
        assert server.requests[0].headers["authorization"] == f"Basic {BASIC}"  # it was sent
    assert decision.verdict.error is not None
    assert _leaks(repr(decision)) == []
    stored: list[Any] = [jsonl.read_bytes()]
    stored += [p.read_bytes() for p in tmp_path.iterdir() if p.name.startswith("queue.sqlite")]
    assert "401" in stored[0].decode()
    for blob in stored:
        assert _leaks(blob.decode("utf-8", "replace")) == []


@pytest.mark.probe("secrets in logs, sinks and stores")
async def test_the_async_path_sends_url_credentials_and_stores_none(tmp_path: Path) -> None:
    # The async path has a lean client for plain-HTTP auditors; a URL with credentials must
    # still go out with its Basic auth (through httpx), and its 401 echo must be scrubbed too.
    jsonl = tmp_path / "audit.jsonl"
    with OpenAIServer(responder=_echo_credentials) as server:
        auditor = GuardTraceAuditor(backends.served(_with_password(server), "guard", max_retries=0))
        guard = Guard(auditor, sinks=[JsonlSink(jsonl)], raise_on_block=False)
        decision = await guard.acheck(Trace(query="q", response="a"))
        await guard.aclose()
        await auditor.aclose()
        assert server.requests[0].headers["authorization"] == f"Basic {BASIC}"
    assert decision.verdict.error is not None and "401" in decision.verdict.error.message
    assert _leaks(repr(decision) + jsonl.read_text(encoding="utf-8")) == []


@pytest.mark.probe("secrets in logs, sinks and stores")
async def test_failover_to_a_url_with_credentials_sends_them(tmp_path: Path) -> None:
    # One endpoint with credentials keeps the whole list on httpx (one kind of pool per backend):
    # the lean client would have posted to it without its Basic auth.
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{closed.getsockname()[1]}/v1"
    jsonl = tmp_path / "audit.jsonl"
    with OpenAIServer(responder=_echo_credentials) as server:
        backend = backends.served([dead, _with_password(server)], "guard", max_retries=0)
        auditor = GuardTraceAuditor(backend)
        guard = Guard(auditor, sinks=[JsonlSink(jsonl)], raise_on_block=False)
        decision = await guard.acheck(Trace(query="q", response="a"))
        await guard.aclose()
        await auditor.aclose()
        assert [r.headers.get("authorization") for r in server.requests] == [f"Basic {BASIC}"]
    assert decision.verdict.error is not None and "401" in decision.verdict.error.message
    assert _leaks(repr(decision) + repr(backend) + jsonl.read_text(encoding="utf-8")) == []


@pytest.mark.probe("secrets in logs, sinks and stores")
def test_image_url_secrets_stay_out_of_verdicts_and_the_report(tmp_path: Path) -> None:
    # Issue 13, fault 1: user:password and query tokens of image URLs were written out.
    urls = [
        f"https://{USER}:{PASSWORD}@images.example/a.png",
        f"https://images.example/b.png?sig={QUERY_SECRET}&token={PATH_SECRET}",
        f"https://images.example/{PATH_SECRET}.png#frag={QUERY_SECRET}",
    ]
    log = tmp_path / "chats.jsonl"
    with log.open("w", encoding="utf-8") as fh:
        for i, url in enumerate(urls):
            content = [
                {"type": "text", "text": "look"},
                {"type": "image_url", "image_url": {"url": url}},
            ]
            messages = [
                {"role": "user", "content": content},
                {"role": "assistant", "content": "ok"},
            ]
            fh.write(json.dumps({"id": f"i{i}", "messages": messages}) + "\n")
    out, report = tmp_path / "out.jsonl", tmp_path / "report.html"
    main(["audit", str(log), "--out", str(out), "--report", str(report), "-q", "--no-cache"])
    written = out.read_text(encoding="utf-8") + report.read_text(encoding="utf-8")
    assert "images.example" in written  # the images are named, without their secrets
    assert [s for s in (PASSWORD, QUERY_SECRET, f"{USER}:") if s in written] == []
