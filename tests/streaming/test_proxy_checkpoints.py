"""Checkpoints in the proxy: a real uvicorn proxy in front of a loopback upstream, with a real
served GuardTrace auditor (another loopback server) in full mode for whole outputs, whose
score-mode twin audits the checkpoints. The configuration file says it all::

    auditor: {kind: guardtrace, mode: full, backend: {kind: served, ...}}
    checkpoints: {every_tokens: 16}

The scripted auditor grades by the marker ``HRM`` in what it is shown: judgment 1 with it, 0
without, as text (full mode) or as token probabilities (score mode).
"""

from __future__ import annotations

import hashlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
import yaml

from traceguard.proxy import create_app
from traceguard.testing.openai_server import (
    OpenAIServer,
    RecordedRequest,
    ScriptedResponse,
    StreamControl,
    chat_completion,
    chat_completion_chunks,
    guardtrace_output,
    top_logprobs_completion,
)

from .conftest import HARM, thinking_tokens

CLIENT_KEY = "tg-checkpoint-client-key"
KEY_DIGEST = hashlib.sha256(CLIENT_KEY.encode()).hexdigest()
EVERY = 16
USER = [{"role": "user", "content": "Plan a picnic."}]


def grade(request: RecordedRequest) -> ScriptedResponse:
    """GuardTrace by marker: text in full mode, token probabilities in score mode."""
    body = request.json or {}
    messages = body.get("messages") or []
    shown = json.dumps(messages[:2])  # system + user: the audited trace
    harmful = HARM.strip() in shown
    if not body.get("logprobs"):
        return ScriptedResponse.json(chat_completion(guardtrace_output("1" if harmful else "0")))
    prefix = str(messages[-1].get("content", "")) if messages[-1].get("role") == "assistant" else ""
    if prefix.endswith("0."):
        dist = {"5": 0.5, "0": 0.5}
    elif prefix.endswith("0"):
        dist = {"<|im_end|>": 0.98, ".": 0.02}
    else:
        dist = {"1": 0.97, "0": 0.03} if harmful else {"0": 0.97, "1": 0.03}
    return ScriptedResponse.json(top_logprobs_completion(dist, as_probabilities=True))


@pytest.fixture(scope="module")
def upstream() -> Iterator[OpenAIServer]:
    with OpenAIServer() as server:
        yield server


@pytest.fixture(scope="module")
def auditor() -> Iterator[OpenAIServer]:
    with OpenAIServer(responder=grade) as server:
        yield server


@pytest.fixture(autouse=True)
def _fresh(upstream: OpenAIServer, auditor: OpenAIServer) -> Iterator[None]:
    upstream.reset()
    auditor.reset()
    yield


class Running:
    def __init__(self, app: Any, server: uvicorn.Server, thread: threading.Thread, url: str):
        self.app, self.server, self.thread, self.url = app, server, thread, url

    def records(self) -> list[dict[str, Any]]:
        proxy = self.app.state.proxy
        proxy.guard.flush(5)
        path = Path(proxy.config.sinks[0].path)
        lines = path.read_text().splitlines() if path.exists() else []
        return [json.loads(line) for line in lines]


@pytest.fixture
def make_proxy(tmp_path: Path, upstream: OpenAIServer, auditor: OpenAIServer) -> Iterator[Any]:
    running: list[Running] = []

    def make(mode: str, **extra: Any) -> Running:
        config = {
            "auditor": {
                "kind": "guardtrace",
                "mode": "full",
                "backend": {
                    "kind": "served",
                    "base_url": auditor.base_url,
                    "model": "guardtrace-test",
                    "max_retries": 0,
                    "timeout": 5,
                },
            },
            "checkpoints": {"every_tokens": EVERY},
            "sinks": [{"kind": "jsonl", "path": "records.jsonl"}],
            "serve": {
                "upstream": {"url": upstream.base_url},
                "keys": [{"name": "team", "sha256": KEY_DIGEST}],
                "stream": {"mode": mode},
            },
            **extra,
        }
        path = tmp_path / "guard.yaml"
        path.write_text(yaml.safe_dump(config))
        app = create_app(path)
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, lifespan="on")
        )
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        deadline = time.monotonic() + 20
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "the proxy did not start"
            time.sleep(0.01)
        proxy = Running(app, server, thread, f"http://127.0.0.1:{port}/v1")
        running.append(proxy)
        return proxy

    yield make
    for proxy in running:
        proxy.server.should_exit = True
        proxy.thread.join(timeout=30)


def post_stream(proxy: Running) -> httpx.Response:
    return httpx.post(
        f"{proxy.url}/chat/completions",
        json={"model": "m", "messages": USER, "stream": True},
        headers={"authorization": f"Bearer {CLIENT_KEY}"},
        timeout=30,
    )


@pytest.mark.parametrize("mode", ["buffer", "passthrough"])
def test_a_harmful_stream_is_cut_at_a_checkpoint_and_the_upstream_closed(
    make_proxy: Any, upstream: OpenAIServer, auditor: OpenAIServer, mode: str
) -> None:
    proxy = make_proxy(mode)
    harmful_at = 2 * EVERY + 14
    last_allowed = harmful_at + 1 + EVERY  # events: the role chunk, then one per token
    control = StreamControl(hold_at=last_allowed)
    tokens = thinking_tokens(400, harmful_at=harmful_at)
    upstream.enqueue(
        ScriptedResponse.sse(
            chat_completion_chunks(reasoning_content=tokens, content="Done."), control=control
        )
    )
    response = post_stream(proxy)
    assert control.finished.wait(10)
    assert control.disconnected.is_set(), f"the upstream was not closed ({control.sent} sent)"
    assert control.sent == last_allowed
    if mode == "buffer":
        # Nothing was sent before the block: a plain HTTP error, as for a JSON answer.
        assert response.status_code == 400
        assert response.json()["error"]["code"] == "content_blocked"
    else:
        assert response.status_code == 200
        assert b"content_blocked" in response.content
        assert HARM.encode() not in response.content.split(b"content_blocked")[-1]
    records = proxy.records()
    assert records and {r["trace"]["stage"] for r in records} == {"checkpoint"}
    assert records[-1]["decision"]["action"] == "block"
    # Checkpoints were scored (one-token logprobs requests), never generated.
    assert auditor.requests and all(r.json.get("logprobs") for r in auditor.requests)


def test_a_safe_stream_passes_with_checkpoints_then_a_full_final_audit(
    make_proxy: Any, upstream: OpenAIServer, auditor: OpenAIServer
) -> None:
    proxy = make_proxy("passthrough")
    tokens = thinking_tokens(5 * EVERY)
    upstream.enqueue(
        ScriptedResponse.sse(chat_completion_chunks(reasoning_content=tokens, content="Done."))
    )
    response = post_stream(proxy)
    assert response.status_code == 200
    assert b"[DONE]" in response.content
    stages = [r["trace"]["stage"] for r in proxy.records()]
    assert stages[-2:] == ["thinking", "final"]
    assert stages[:-2] and set(stages[:-2]) == {"checkpoint"}
    full = [r for r in auditor.requests if not r.json.get("logprobs")]
    assert len(full) == 2  # the thinking-done and final audits generated their analysis
    metrics = httpx.get(f"{proxy.url.removesuffix('/v1')}/metrics", timeout=10).text
    assert 'stage="checkpoint"' in metrics


class GatedGrader:
    """:func:`grade`, except that the score requests of the first checkpoint wait for ``gate``
    (at most 10 s); records the most checkpoint texts being scored at once, and signals when
    the first checkpoint text (:attr:`arrived`) and any other (:attr:`next_arrived`) is asked
    for."""

    def __init__(self, gate: threading.Event) -> None:
        self.gate = gate
        self.first: str | None = None
        self.arrived = threading.Event()
        self.next_arrived = threading.Event()
        self.timeouts = 0
        self._lock = threading.Lock()
        self._scoring: dict[str, int] = {}
        self.most_texts_at_once = 0

    def __call__(self, request: RecordedRequest) -> ScriptedResponse:
        body = request.json or {}
        if not body.get("logprobs"):
            return grade(request)
        shown = json.dumps((body.get("messages") or [])[:2])
        with self._lock:
            if self.first is None:
                self.first = shown
            first = shown == self.first
            self._scoring[shown] = self._scoring.get(shown, 0) + 1
            self.most_texts_at_once = max(self.most_texts_at_once, len(self._scoring))
        try:
            if first:
                self.arrived.set()
                if not self.gate.wait(10):
                    self.timeouts += 1
            else:
                self.next_arrived.set()
            return grade(request)
        finally:
            with self._lock:
                self._scoring[shown] -= 1
                if not self._scoring[shown]:
                    del self._scoring[shown]


def test_a_safe_stream_flows_while_a_checkpoint_is_audited(
    make_proxy: Any, upstream: OpenAIServer, auditor: OpenAIServer
) -> None:
    proxy = make_proxy("passthrough")
    tokens = thinking_tokens(8 * EVERY)
    gate = threading.Event()
    grader = GatedGrader(gate)
    # Paced by the audit, not the clock (event 0 is the role chunk, then one per token): the
    # thinking after the first checkpoint goes out once that checkpoint is being scored; the
    # answer once the checkpoint that follows it has been asked for.
    control = StreamControl(
        pauses={2 * EVERY + 1: grader.arrived, 8 * EVERY + 1: grader.next_arrived}
    )
    upstream.enqueue(
        ScriptedResponse.sse(
            chat_completion_chunks(reasoning_content=tokens, content="Done."), control=control
        )
    )
    auditor.responder = grader
    during = 0  # thinking tokens the client received while the first checkpoint was pending
    thinking = ""
    try:
        with httpx.stream(
            "POST",
            f"{proxy.url}/chat/completions",
            json={"model": "m", "messages": USER, "stream": True},
            headers={"authorization": f"Bearer {CLIENT_KEY}"},
            timeout=30,
        ) as response:
            assert response.status_code == 200
            lines = []
            for line in response.iter_lines():
                lines.append(line)
                choices = json.loads(line[6:]).get("choices") if line.startswith("data: {") else []
                if not choices:
                    continue
                piece = choices[0]["delta"].get("reasoning_content") or ""
                thinking += piece
                if piece and grader.arrived.is_set() and not gate.is_set():
                    during += 1
                if thinking == "".join(tokens):
                    gate.set()  # all of the thinking is out: let the first checkpoint finish
    finally:
        gate.set()
        auditor.responder = grade
    # A proxy that held the stream for its checkpoint audit would have kept the thinking from
    # the client until the gate gave up.
    assert grader.timeouts == 0
    assert control.gave_up == []
    assert during >= 6 * EVERY  # at least every token sent once the checkpoint was asked for
    assert [line for line in lines if line][-1] == "data: [DONE]"
    records = proxy.records()
    stages = [r["trace"]["stage"] for r in records]
    # The first checkpoint was pending through the rest of the thinking: no other started; the
    # one that followed, taken when the first was heard, covered all of the thinking.
    assert stages == ["checkpoint", "checkpoint", "thinking", "final"]
    first, whole = "".join(tokens[:EVERY]).strip(), "".join(tokens).strip()
    assert [r["trace"]["thinking_chars"] for r in records[:2]] == [len(first), len(whole)]
    assert grader.most_texts_at_once == 1


@pytest.mark.parametrize("allow", [False, True])
def test_a_failed_checkpoint_takes_the_policys_error_action(
    make_proxy: Any, upstream: OpenAIServer, auditor: OpenAIServer, allow: bool
) -> None:
    def failing(request: RecordedRequest) -> ScriptedResponse:
        if (request.json or {}).get("logprobs"):
            return ScriptedResponse.error(500, "the auditor fell over")
        return grade(request)

    extra: dict[str, Any] = {"policy": {"auditor_error": "allow"}} if allow else {}
    proxy = make_proxy("passthrough", **extra)
    total = 6 * EVERY
    # Without a decision the upstream holds two intervals in: the failed first checkpoint must
    # be acted on while it waits.
    control = StreamControl(hold_at=None if allow else 2 * EVERY + 1)
    upstream.enqueue(
        ScriptedResponse.sse(
            chat_completion_chunks(reasoning_content=thinking_tokens(total), content="Done."),
            control=control,
        )
    )
    auditor.responder = failing
    try:
        response = post_stream(proxy)
    finally:
        auditor.responder = grade
    assert response.status_code == 200
    assert control.finished.wait(10)
    records = proxy.records()
    stages = [r["trace"]["stage"] for r in records]
    statuses = [r["decision"]["verdict"]["status"] for r in records]
    if allow:
        # Allowed errors: the stream runs to its end; the failures are recorded as such.
        assert b"[DONE]" in response.content and b"content_blocked" not in response.content
        assert not control.disconnected.is_set()
        assert stages[-2:] == ["thinking", "final"] and set(stages[:-2]) == {"checkpoint"}
        assert statuses == ["auditor_error"] * (len(stages) - 2) + ["ok", "ok"]
    else:
        # The default policy escalates an auditor error, held as a block: the stream ends there.
        assert control.disconnected.is_set(), f"the upstream was not closed ({control.sent} sent)"
        assert control.sent <= 2 * EVERY + 1
        assert stages == ["checkpoint"] and statuses == ["auditor_error"]
        assert records[0]["decision"]["action"] == "escalate"
