"""The serve section of guard.yaml: validation at start, with the key and the line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from traceguard import ConfigurationError
from traceguard.config import GuardConfig
from traceguard.proxy import create_app
from traceguard.testing.openai_server import OpenAIServer

from .conftest import CLIENT_KEY, digest, guard_config


def write(tmp_path: Path, data: dict[str, Any], name: str = "guard.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_one_file_serves_the_library_the_audit_and_the_proxy(
    tmp_path: Path, upstream: OpenAIServer, auditor: OpenAIServer
) -> None:
    path = write(tmp_path, guard_config(tmp_path, upstream, auditor))
    config = GuardConfig.from_file(path)
    assert config.serve is not None
    assert config.serve.keys[0].name == "team-a"
    config.build_guard().close()  # the library ignores the serve section


def test_a_plain_key_in_the_file_is_refused_with_its_line(tmp_path: Path) -> None:
    path = tmp_path / "guard.yaml"
    path.write_text(
        "auditor: {kind: baseline}\n"
        "serve:\n"
        "  keys:\n"
        "    - name: team-a\n"
        f"      sha256: {digest(CLIENT_KEY)}\n"
        "      key: the-plain-key\n"
    )
    with pytest.raises(ConfigurationError) as caught:
        GuardConfig.from_file(path)
    message = str(caught.value)
    assert "guard.yaml:6: serve.keys[0].key" in message
    assert "hashed" in message
    assert "the-plain-key" not in message


@pytest.mark.parametrize(
    ("serve", "expected"),
    [
        ({"keys": [{"name": "a", "sha256": "abc"}]}, "serve.keys[0].sha256"),
        ({"upstream": {"url": "http://user:pw@host/v1"}}, "carries credentials"),
        ({"upstream": {"api_key": "sk-x"}}, "api_key_env"),
        ({"passthrough": ["POST /v1/chat/completions"]}, "cannot be passed through"),
        ({"stream": {"mode": "fast"}}, "serve.stream.mode"),
        ({"block": {"status": 200}}, "serve.block.status"),
    ],
)
def test_invalid_serve_sections(tmp_path: Path, serve: dict[str, Any], expected: str) -> None:
    path = write(tmp_path, {"auditor": {"kind": "baseline"}, "serve": serve})
    with pytest.raises(ConfigurationError) as caught:
        GuardConfig.from_file(path)
    assert expected in str(caught.value)


def test_a_proxy_without_keys_is_refused(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        {"auditor": {"kind": "baseline"}, "serve": {"upstream": {"url": "http://127.0.0.1:1/v1"}}},
    )
    with pytest.raises(ConfigurationError, match="no client keys"):
        create_app(path)


def test_open_mode_is_loopback_only(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        {
            "auditor": {"kind": "baseline"},
            "serve": {"upstream": {"url": "http://127.0.0.1:1/v1"}, "open": True},
        },
    )
    create_app(path)  # loopback: fine
    with pytest.raises(ConfigurationError, match="loopback host only"):
        create_app(path, host="0.0.0.0")


def test_keys_file_and_duplicate_keys(tmp_path: Path) -> None:
    keys = tmp_path / "keys.yaml"
    keys.write_text(
        "keys:\n"
        f"  - {{name: ci, sha256: {digest('k1')}, rate_limit: {{requests_per_minute: 60}}}}\n"
        f"  - {{name: ci, sha256: {digest('k2')}}}\n"
    )
    path = write(
        tmp_path,
        {
            "auditor": {"kind": "baseline"},
            "serve": {"upstream": {"url": "http://127.0.0.1:1/v1"}, "keys_file": "keys.yaml"},
        },
    )
    with pytest.raises(ConfigurationError, match="'ci' is used twice"):
        create_app(path)
    keys.write_text(f"keys:\n  - {{name: ci, sha256: {digest('k1')}, policy: nope.yaml}}\n")
    with pytest.raises(ConfigurationError, match=r"keys\.yaml:2: keys\[0\]\.policy"):
        create_app(path)


def test_missing_upstream_key_variable_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("NOT_SET_ANYWHERE", raising=False)
    path = write(
        tmp_path,
        {
            "auditor": {"kind": "baseline"},
            "serve": {
                "upstream": {"url": "http://127.0.0.1:1/v1", "api_key_env": "NOT_SET_ANYWHERE"},
                "open": True,
            },
        },
    )
    with pytest.raises(ConfigurationError, match="NOT_SET_ANYWHERE is not set"):
        create_app(path)


def test_cli_reports_configuration_errors_and_exits_2(tmp_path: Path) -> None:
    path = write(tmp_path, {"auditor": {"kind": "baseline"}, "serve": {"port": 0}})
    done = subprocess.run(
        [sys.executable, "-m", "traceguard", "serve", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "serve.port" in done.stderr
    assert "Traceback" not in done.stderr
