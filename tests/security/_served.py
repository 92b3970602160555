"""Real servers for the web-surface probes: an ASGI app under uvicorn on 127.0.0.1 in a thread,
and the guard proxy built from a real configuration file."""

from __future__ import annotations

import hashlib
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import uvicorn
import yaml

CLIENT_KEY = "tg-probe-client-key-0001"
UPSTREAM_KEY = "sk-upstream-probe-secret-4f9a2c"
"""What the proxy adds for the upstream; no client may ever see it."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def serving(app: Any, *, lifespan: str = "on") -> Iterator[str]:
    """Serve ``app`` on an ephemeral loopback port; yields ``http://127.0.0.1:PORT``."""
    port = free_port()
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        log_config=None,
        access_log=False,
        lifespan=lifespan,
        timeout_graceful_shutdown=2,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    for _ in range(2000):  # a hang guard while uvicorn binds, not a timing assertion
        if server.started or not thread.is_alive():
            break
        time.sleep(0.01)
    assert server.started, "uvicorn did not start"
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)


def proxy_config(
    tmp_path: Path,
    *,
    upstream_url: str,
    auditor_url: str,
    serve: dict[str, Any] | None = None,
    images: dict[str, Any] | None = None,
) -> Path:
    """A ``guard.yaml`` for the proxy: a served GuardTrace auditor, a strict policy, one key."""
    data: dict[str, Any] = {
        "auditor": {
            "kind": "guardtrace",
            "mode": "full",
            "backend": {
                "kind": "served",
                "base_url": auditor_url,
                "model": "guard",
                "max_retries": 0,
                "timeout": 10,
            },
        },
        "policy": {
            "safe": "allow",
            "potentially_harmful": "block",
            "harmful": "block",
            "auditor_error": "block",
            "unparseable": "block",
            "invalid_input": "block",
        },
        "sinks": [{"kind": "jsonl", "path": "records.jsonl"}],
        "serve": {
            "upstream": {"url": upstream_url, "api_key_env": "PROBE_UPSTREAM_KEY", "timeout_s": 10},
            "keys": [{"name": "probe", "sha256": hashlib.sha256(CLIENT_KEY.encode()).hexdigest()}],
            **(serve or {}),
        },
    }
    if images is not None:
        data["images"] = images
    path = tmp_path / "guard.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@contextmanager
def running_proxy(config: Path) -> Iterator[str]:
    """The proxy for ``config`` served on loopback; yields its base URL (``.../v1``)."""
    from traceguard.proxy import create_app

    with serving(create_app(config)) as url:
        yield url + "/v1"


def client_headers() -> dict[str, str]:
    return {"authorization": f"Bearer {CLIENT_KEY}"}
