"""``traceguard serve`` as a process: start-up, JSON logs, graceful shutdown on SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from traceguard.testing.openai_server import (
    OpenAIServer,
    ScriptedResponse,
    StreamControl,
    chat_completion,
    chat_completion_chunks,
)

from .conftest import CLIENT_KEY, UPSTREAM_KEY, free_port, guard_config

pytestmark = pytest.mark.slow


def start(path: Path, port: int) -> subprocess.Popen[str]:
    env = {**os.environ, "UPSTREAM_KEY": UPSTREAM_KEY}
    process = subprocess.Popen(
        [sys.executable, "-m", "traceguard", "serve", "--config", str(path), "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"serve exited: {process.stderr.read() if process.stderr else ''}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return process
        except httpx.HTTPError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError("serve did not start")


def _stops_listening(port: int) -> bool:
    """Wait (at most 30 s) until nothing accepts connections on ``port`` any more."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                pass
        except OSError:
            return True
        time.sleep(0.05)
    return False


def test_sigterm_finishes_open_streams_and_logs_json_without_content(
    tmp_path: Path, upstream: OpenAIServer, auditor: OpenAIServer
) -> None:
    data = guard_config(tmp_path, upstream, auditor, serve={"stream": {"mode": "passthrough"}})
    path = tmp_path / "guard.yaml"
    path.write_text(yaml.safe_dump(data))
    port = free_port()
    secret_text = "a-sentence-that-must-never-be-logged"
    chunks = chat_completion_chunks([f"{secret_text} "] * 30)
    # The stream pauses a few chunks in until the proxy is shutting down: it is open then.
    shutting_down = threading.Event()
    control = StreamControl(pauses={5: shutting_down}, hold_s=60)
    upstream.enqueue(
        ScriptedResponse.json(chat_completion(secret_text)),
        ScriptedResponse.sse(chunks, control=control),
    )
    process = start(path, port)
    try:
        base = f"http://127.0.0.1:{port}/v1"
        headers = {"authorization": f"Bearer {CLIENT_KEY}"}
        body: dict[str, Any] = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
        first = httpx.post(f"{base}/chat/completions", json=body, headers=headers, timeout=30)
        assert first.status_code == 200
        received: list[bytes] = []
        got_first = threading.Event()

        def read_stream() -> None:
            with httpx.stream(
                "POST",
                f"{base}/chat/completions",
                json={**body, "stream": True},
                headers=headers,
                timeout=30,
            ) as response:
                for piece in response.iter_bytes():
                    received.append(piece)
                    got_first.set()

        reader = threading.Thread(target=read_stream)
        reader.start()
        assert got_first.wait(20)
        process.send_signal(signal.SIGTERM)
        assert _stops_listening(port), "the proxy kept accepting connections after SIGTERM"
        shutting_down.set()
        reader.join(30)
        assert b"".join(received).endswith(b"data: [DONE]\n\n")  # the open stream finished
        assert control.gave_up == []
        assert process.wait(30) == 0
    finally:
        if process.poll() is None:
            process.kill()
    stderr = process.stderr.read() if process.stderr else ""
    assert secret_text not in stderr
    assert CLIENT_KEY not in stderr and UPSTREAM_KEY not in stderr
    entries = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    assert len(entries) == len(stderr.splitlines())  # every line is JSON
    requests = [e for e in entries if e.get("logger") == "traceguard.proxy.access"]
    assert [r["status"] for r in requests] == [200, 200]
    assert requests[0]["client"] == "team-a"
    assert requests[0]["action"] == "allow"
    assert {"request_id", "duration_ms", "upstream_status"} <= set(requests[0])
