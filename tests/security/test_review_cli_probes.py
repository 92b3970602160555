"""``traceguard review`` as an operator runs it: a real process, its real output.

The generated token must be printed once and never again (not in uvicorn's request log, not in
the warning a wrong token causes); binding beyond loopback must be said loudly before anything
listens.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from traceguard.review import EscalationStore

from ._served import free_port

pytestmark = pytest.mark.slow


def _review(queue: Path, *args: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if k != "TRACEGUARD_REVIEW_TOKEN"}
    return subprocess.Popen(
        [sys.executable, "-m", "traceguard", "review", "--queue", str(queue), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )


@pytest.mark.probe("review CLI: token and binding")
def test_the_generated_token_is_printed_once(tmp_path: Path) -> None:
    queue = tmp_path / "q.sqlite"
    EscalationStore(queue).close()
    port = free_port()
    process = _review(queue, "--port", str(port))
    try:
        assert process.stdout is not None
        output: list[str] = []
        token = None
        for line in process.stdout:  # the hang guard is the test's own timeout
            output.append(line)
            if "login token" in line:
                token = line.rsplit(" ", 1)[1].strip()
            if "Uvicorn running" in line or "Application startup complete" in line:
                break
        assert token is not None and len(token) >= 32
        url = f"http://127.0.0.1:{port}"
        for _ in range(500):  # a hang guard while uvicorn binds, not a timing assertion
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                time.sleep(0.02)
        with httpx.Client(base_url=url) as client:
            assert client.get("/", headers={"authorization": f"Bearer {token}"}).status_code == 200
            forged = token[:-1] + ("y" if token.endswith("x") else "x")  # never the token itself
            wrong = client.get("/", headers={"authorization": f"Bearer {forged}"})
            assert wrong.status_code == 401
            assert client.get(f"/?q={token[:8]}").status_code == 401
    finally:
        process.send_signal(signal.SIGINT)
        rest, _ = process.communicate(timeout=30)
    text = "".join(output) + rest
    assert text.count(token) == 1, text
    assert token[:-1] not in text.replace(token, "")
    assert "wrong bearer token" in text  # the failure is logged, without the attempt


@pytest.mark.probe("review CLI: token and binding")
def test_binding_beyond_loopback_warns_before_listening(tmp_path: Path) -> None:
    queue = tmp_path / "q.sqlite"
    EscalationStore(queue).close()
    # The port is taken on 127.0.0.1, so the wildcard bind fails: nothing is ever exposed.
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        process = _review(queue, "--host", "0.0.0.0", "--port", str(port))
        try:
            output, _ = process.communicate(timeout=60)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(10)
    warning = output.index("WARNING: traceguard review listens on 0.0.0.0")
    assert warning < output.index("login token")
    assert "HTTPS" in output and process.returncode != 0
