"""A non-Python client: the official ``openai`` npm package under node, base URL changed only.

The package is installed by this test's setup with ``npm ci`` into ``.cache/proxy-node``
(git-ignored; once, then reused), from ``tests/proxy/node/package.json`` and its lock file.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from traceguard.testing.openai_server import (
    OpenAIServer,
    ScriptedResponse,
    chat_completion,
    chat_completion_chunks,
    responses_response,
)

from .conftest import CLIENT_KEY, HARMFUL, ProxyFactory

pytestmark = pytest.mark.slow

_HERE = Path(__file__).parent / "node"
_CACHE = Path(__file__).resolve().parents[2] / ".cache" / "proxy-node"


@pytest.fixture(scope="session")
def node_client() -> Path:
    node = shutil.which("node")
    npm = shutil.which("npm")
    if node is None or npm is None:
        pytest.skip("node and npm are not installed (.ci/run installs them)")
    _CACHE.mkdir(parents=True, exist_ok=True)
    for name in ("package.json", "package-lock.json"):
        wanted = (_HERE / name).read_text()
        target = _CACHE / name
        if not target.exists() or target.read_text() != wanted:
            target.write_text(wanted)
            shutil.rmtree(_CACHE / "node_modules", ignore_errors=True)
    if not (_CACHE / "node_modules" / "openai" / "package.json").exists():
        subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund", "--ignore-scripts", "--loglevel=error"],
            cwd=_CACHE,
            check=True,
            timeout=300,
        )
    shutil.copyfile(_HERE / "client.mjs", _CACHE / "client.mjs")
    return _CACHE / "client.mjs"


def test_the_official_node_sdk_through_the_proxy(
    node_client: Path, make_proxy: ProxyFactory, upstream: OpenAIServer
) -> None:
    proxy = make_proxy(serve={"stream": {"mode": "passthrough"}})
    upstream.enqueue(
        ScriptedResponse.json(chat_completion("A fox story.")),
        ScriptedResponse.sse(chat_completion_chunks("Streamed fox story.")),
        ScriptedResponse.json(chat_completion(f"Do this: {HARMFUL}")),
        ScriptedResponse.sse(chat_completion_chunks(f"Late {HARMFUL} text")),
        path="/v1/chat/completions",
    )
    upstream.enqueue(
        ScriptedResponse.json(responses_response("Hi from Responses.")), path="/v1/responses"
    )
    env = {
        **os.environ,
        "PROXY_BASE_URL": proxy.base_url,
        "PROXY_CLIENT_KEY": CLIENT_KEY,
        "NO_PROXY": "127.0.0.1,localhost",
    }
    done = subprocess.run(
        ["node", str(node_client)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=node_client.parent,
    )
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["allowed"] == {"content": "A fox story.", "action": "allow"}
    assert seen["streamed"] == "Streamed fox story."
    assert seen["blocked"]["status"] == 400
    assert seen["blocked"]["code"] == "content_blocked"
    assert seen["blocked"]["action"] == "block"
    assert seen["late"]["error"] is not None
    assert seen["late"]["code"] == "content_blocked"
    assert seen["late"]["seen"] > 0
    assert seen["responses"] == "Hi from Responses."
    assert upstream.pending == 0
