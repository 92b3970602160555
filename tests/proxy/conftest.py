"""The proxy under test: a real uvicorn server on loopback in front of a loopback upstream, with
a real served GuardTrace auditor (another loopback server scripting GuardTrace answers).

The auditor grades by markers in what it is shown: ``HARMFUL-MARK`` anywhere in the rendered
trace gives judgment 1, ``RISKY-MARK`` 0.5, anything else 0. The markers stand for content; the
policy and the proxy never see them as anything but text.
"""

from __future__ import annotations

import hashlib
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import uvicorn
import yaml

from traceguard.proxy import create_app
from traceguard.testing.openai_server import (
    OpenAIServer,
    RecordedRequest,
    ScriptedResponse,
    chat_completion,
    guardtrace_output,
)

CLIENT_KEY = "tg-client-key-for-tests"
OTHER_KEY = "tg-second-client-key"
UPSTREAM_KEY = "sk-upstream-secret-never-leaves"
HARMFUL = "HARMFUL-MARK"
RISKY = "RISKY-MARK"


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def grade(request: RecordedRequest) -> ScriptedResponse:
    """The scripted auditor: a GuardTrace answer by the markers in the audited text."""
    text = request.body.decode("utf-8", "replace")
    judgment = "1" if HARMFUL in text else "0.5" if RISKY in text else "0"
    return ScriptedResponse.json(chat_completion(guardtrace_output(judgment)))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class RunningProxy:
    """A proxy served by uvicorn in a thread."""

    url: str
    app: Any
    server: uvicorn.Server
    thread: threading.Thread
    config_path: Path
    records: Path
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    @property
    def proxy(self) -> Any:
        return self.app.state.proxy

    def decisions(self) -> list[dict[str, Any]]:
        """What the JSONL sink recorded so far: action, disposition, verdict status, stage."""
        self.proxy.guard.flush(5)
        if not self.records.exists():
            return []
        out = []
        for line in self.records.read_text().splitlines():
            record = json.loads(line)
            decision = record["decision"]
            out.append(
                {
                    "action": decision["action"],
                    "disposition": decision["disposition"],
                    "status": decision["verdict"]["status"],
                    "stage": record["trace"]["stage"],
                    "escalation_id": decision["escalation_id"],
                }
            )
        return out

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


def start_proxy(app: Any, port: int) -> tuple[uvicorn.Server, threading.Thread]:
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        log_config=None,
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=5,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="proxy-under-test", daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the proxy did not start")
        time.sleep(0.01)
    return server, thread


@pytest.fixture(scope="module")
def upstream() -> Iterator[OpenAIServer]:
    with OpenAIServer() as server:
        yield server


@pytest.fixture(scope="module")
def auditor() -> Iterator[OpenAIServer]:
    with OpenAIServer(responder=grade) as server:
        yield server


@pytest.fixture(autouse=True)
def _fresh(upstream: OpenAIServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    upstream.reset()
    monkeypatch.setenv("UPSTREAM_KEY", UPSTREAM_KEY)
    yield


def guard_config(
    tmp_path: Path,
    upstream: OpenAIServer,
    auditor: OpenAIServer | str,
    *,
    serve: dict[str, Any] | None = None,
    policy: dict[str, Any] | None = None,
    review: bool = False,
) -> dict[str, Any]:
    auditor_url = auditor if isinstance(auditor, str) else auditor.base_url
    data: dict[str, Any] = {
        "auditor": {
            "kind": "guardtrace",
            "mode": "full",
            "backend": {
                "kind": "served",
                "base_url": auditor_url,
                "model": "guardtrace-test",
                "max_retries": 0,
                "timeout": 5,
                "connect_timeout": 1,
            },
        },
        "policy": {
            "safe": "allow",
            "potentially_harmful": "redact",
            "harmful": "block",
            "auditor_error": "block",
            "unparseable": "block",
            "invalid_input": "block",
            **(policy or {}),
        },
        "sinks": [{"kind": "jsonl", "path": "records.jsonl"}],
        "serve": {
            "upstream": {"url": upstream.base_url, "api_key_env": "UPSTREAM_KEY"},
            "keys": [
                {"name": "team-a", "sha256": digest(CLIENT_KEY)},
                {"name": "team-b", "sha256": digest(OTHER_KEY)},
            ],
            **(serve or {}),
        },
    }
    if review:
        data["review"] = {"path": "review.sqlite"}
    return data


ProxyFactory = Callable[..., RunningProxy]


@pytest.fixture
def make_proxy(
    tmp_path: Path, upstream: OpenAIServer, auditor: OpenAIServer
) -> Iterator[ProxyFactory]:
    running: list[RunningProxy] = []

    def make(
        *,
        serve: dict[str, Any] | None = None,
        policy: dict[str, Any] | None = None,
        auditor_url: str | None = None,
        review: bool = False,
    ) -> RunningProxy:
        data = guard_config(
            tmp_path, upstream, auditor_url or auditor, serve=serve, policy=policy, review=review
        )
        path = tmp_path / "guard.yaml"
        path.write_text(yaml.safe_dump(data))
        app = create_app(path)
        port = free_port()
        server, thread = start_proxy(app, port)
        proxy = RunningProxy(
            url=f"http://127.0.0.1:{port}",
            app=app,
            server=server,
            thread=thread,
            config_path=path,
            records=tmp_path / "records.jsonl",
        )
        running.append(proxy)
        return proxy

    yield make
    for proxy in running:
        proxy.stop()
