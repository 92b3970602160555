"""The command line builds its guard from a GuardConfig: ``--config guard.yaml`` or the flags.

Every run here is a real ``traceguard audit`` against auditors served on loopback.
"""

from __future__ import annotations

import json
import socket
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from traceguard import ReviewQueue
from traceguard._cli_args import build_parser
from traceguard._cli_config import guard_from_args
from traceguard.cli import main
from traceguard.testing.openai_server import (
    OpenAIServer,
    RecordedRequest,
    ScriptedResponse,
    chat_completion,
    guardtrace_output,
)

from .test_runner import read

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
LOGS = EXAMPLES / "logs"


def _respond(request: RecordedRequest) -> ScriptedResponse:
    """One server for every model: GuardTrace by keyword, LlavaGuard flags every image,
    SafeGuard finds every image safe."""
    body = request.json
    if body["model"] == "lg":
        answer = {"rating": "Unsafe", "category": "O5: Criminal Planning", "rationale": "tools"}
        return ScriptedResponse.json(chat_completion(json.dumps(answer)))
    if body["model"] == "sg":
        return ScriptedResponse.json(chat_completion("<think>fine</think><answer>yes</answer>"))
    text = json.dumps(body)
    judgment = "1" if "lock" in text else "0.5" if "pill" in text else "0"
    return ScriptedResponse.json(chat_completion(guardtrace_output(judgment)))


@pytest.fixture
def server() -> Iterator[OpenAIServer]:
    with OpenAIServer(responder=_respond) as srv:
        yield srv


def write_config(folder: Path, text: str, name: str = "guard.yaml") -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def audit(tmp_path: Path, *flags: str, inputs: Path = LOGS) -> int:
    return main(["audit", str(inputs), "--out", str(tmp_path / "out.jsonl"), "-q", *flags])


def models_called(server: OpenAIServer) -> set[str]:
    return {r.json["model"] for r in server.requests}


# -- --config ---------------------------------------------------------------------------------


def test_audit_config_uses_the_auditor_policy_images_sinks_and_review_queue(
    tmp_path: Path, server: OpenAIServer, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(
        tmp_path,
        f"""\
        auditor:
          kind: staged
          stages:
            - kind: llavaguard
              backend: {{kind: served, base_url: "{server.base_url}", model: lg}}
            - kind: guardtrace
              backend: {{kind: served, base_url: "{server.base_url}", model: guard}}
        policy:
          harmful: escalate
        images:
          root: {LOGS}
        sinks:
          - {{kind: jsonl, path: decisions.jsonl}}
        review:
          path: review.sqlite
        """,
    )
    assert audit(tmp_path, "--config", str(config)) == 0
    records = read(tmp_path / "out.jsonl")
    assert {r["auditor"] for r in records if r["status"] == "ok"} == {
        "staged(llavaguard:http:lg,guardtrace:http:guard)"
    }
    # LlavaGuard flags every image, so traces with images skip GuardTrace (stop_on_harmful).
    with_images = [r for r in records if r["images"] and r["status"] == "ok"]
    assert with_images and all(r["risk"] == 1.0 for r in with_images)
    assert models_called(server) == {"lg", "guard"}
    # The file's policy: harmful escalates instead of blocking.
    assert "block" not in {r["action"] for r in records}
    # The sinks got one decision per record, the review queue every escalation.
    decisions = read(tmp_path / "decisions.jsonl")
    assert sorted(d["trace_id"] for d in decisions) == sorted(r["id"] for r in records)
    queue = ReviewQueue(tmp_path / "review.sqlite")
    try:
        queued = sorted(e.trace_id or "" for e in queue.pending(limit=1000))
    finally:
        queue.close()
    assert queued == sorted(r["id"] for r in records if r["action"] == "escalate")
    assert "records written" in capsys.readouterr().out


def test_flags_override_the_policy_and_images_of_the_file(
    tmp_path: Path, server: OpenAIServer
) -> None:
    config = write_config(
        tmp_path,
        f"""\
        auditor:
          kind: guardtrace
          backend: {{kind: served, base_url: "{server.base_url}", model: guard}}
        policy: {{harmful: escalate}}
        images: {{root: {tmp_path / "nowhere"}}}
        """,
    )
    policy = tmp_path / "strict.toml"
    policy.write_text('harmful = "block"\n', encoding="utf-8")
    flags = ["--config", str(config), "--policy", str(policy), "--image-root", str(LOGS)]
    assert audit(tmp_path, *flags) == 0
    records = read(tmp_path / "out.jsonl")
    assert "block" in {r["action"] for r in records}
    # With the file's image root (a missing folder) every local image would be invalid input.
    assert any(r["images"] and r["status"] == "ok" for r in records)


@pytest.mark.parametrize(
    "flags",
    [["--model", "m"], ["--auditor", "baseline"], ["--mode", "score"], ["--timeout", "3"]],
)
def test_auditor_flags_conflict_with_config(
    tmp_path: Path, flags: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path, "auditor: {kind: baseline}\n")
    assert audit(tmp_path, "--config", str(config), *flags) == 2
    err = capsys.readouterr().err
    assert f"{flags[0]} cannot be combined with --config" in err
    assert not (tmp_path / "out.jsonl").exists()


def test_an_invalid_config_exits_two_naming_the_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(
        tmp_path, "auditor:\n  kind: guardtrace\n  backend: {kind: local, model: m}\n  topk: 3\n"
    )
    assert audit(tmp_path, "--config", str(config)) == 2
    assert f"{config}:4: auditor.topk: unknown key" in capsys.readouterr().err


def test_eval_with_config_feeds_no_sinks(tmp_path: Path, server: OpenAIServer) -> None:
    config = write_config(
        tmp_path,
        f"""\
        auditor:
          kind: guardtrace
          backend: {{kind: served, base_url: "{server.base_url}", model: guard}}
        sinks: [{{kind: jsonl, path: decisions.jsonl}}]
        """,
    )
    labelled = EXAMPLES / "labelled" / "traces.jsonl"
    out = tmp_path / "metrics.json"
    assert main(["eval", str(labelled), "--config", str(config), "--out", str(out), "-q"]) == 0
    assert json.loads(out.read_text())["auditor"] == ["guardtrace:http:guard"]
    assert not (tmp_path / "decisions.jsonl").exists()


# -- the auditor flags ------------------------------------------------------------------------


def test_image_guards_from_flags(tmp_path: Path, server: OpenAIServer) -> None:
    served = ["--auditor-url", server.base_url]
    assert audit(tmp_path, "--auditor", "llavaguard", *served, "--auditor-model", "lg") == 0
    lg = read(tmp_path / "out.jsonl")
    assert {r["auditor"] for r in lg if r["status"] == "ok"} == {"llavaguard:http:lg"}
    assert any(r["risk"] == 1.0 for r in lg) and any(r["risk"] == 0.0 for r in lg)
    assert audit(tmp_path, "--auditor", "safeguard", *served, "--auditor-model", "sg") == 0
    sg = read(tmp_path / "out.jsonl")
    assert {r["auditor"] for r in sg if r["status"] == "ok"} == {"safeguard:http:sg"}
    assert models_called(server) == {"lg", "sg"}


def test_repeated_auditor_urls_fail_over(tmp_path: Path, server: OpenAIServer) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}/v1"  # bound, never listening
        flags = ["--auditor-url", dead, "--auditor-url", server.base_url]
        assert audit(tmp_path, *flags, "--auditor-model", "guard", "--no-cache") == 0
    records = read(tmp_path / "out.jsonl")
    # Every trace got a verdict through the second URL (the batch file's own failed line stays).
    audited = [r for r in records if r["auditor"] != "traceguard-reader"]
    assert audited and all(r["status"] != "error" for r in audited)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--auditor", "holisafe", "--auditor-url", "http://127.0.0.1:9/v1"], "runs in this"),
        (["--auditor", "holisafe"], "--auditor holisafe needs --model"),
        (["--auditor", "llavaguard"], "--auditor llavaguard needs --model"),
        (["--auditor", "baseline", "--model", "m"], "--model do not apply to --auditor baseline"),
        (["--auditor", "safeguard", "--model", "m", "--mode", "score"], "--mode applies to"),
        (["--model", "m", "--timeout", "3"], "--timeout apply to --auditor-url only"),
        (["--model", "m", "--auditor-url", "http://127.0.0.1:9/v1"], "not both"),
        (["--auditor-url", "http://127.0.0.1:9/v1"], "--auditor-url needs --auditor-model"),
        (["--mode", "score"], "--mode score needs a GuardTrace model"),
        (["--batch-size", "0"], "must be at least 1"),
    ],
)
def test_flag_errors_exit_two(
    tmp_path: Path, flags: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert audit(tmp_path, *flags) == 2
    assert message in capsys.readouterr().err


def _guard(*flags: str) -> Any:
    args = build_parser().parse_args(["audit", str(LOGS), "--out", "o.jsonl", *flags])
    return guard_from_args(args)


def test_flags_become_the_same_spec_the_config_file_would_give() -> None:
    local = _guard("--auditor", "holisafe", "--model", "org/holisafe")
    assert local.config.auditor.kind == "holisafe"
    assert (local.concurrency, local.batch_size) == (1, 8)
    assert local.config.images.root == LOGS
    lg = _guard("--auditor", "llavaguard", "--model", "./lg")
    assert lg.config.auditor.backend.model == str(Path.cwd() / "lg")
    served = _guard(
        "--auditor-url", "http://127.0.0.1:9/v1", "--auditor-model", "g", "--mode", "score",
        "--concurrency", "3", "--batch-size", "2", "--api-key-env", "KEY", "--timeout", "7",
    )  # fmt: skip
    spec = served.config.auditor
    assert (spec.kind, spec.mode) == ("guardtrace", "score")
    assert spec.backend.model_dump(include={"max_concurrency", "api_key_env", "timeout"}) == {
        "max_concurrency": 6,
        "api_key_env": "KEY",
        "timeout": 7.0,
    }
    baseline = _guard("--allow-remote-images")
    assert baseline.config.auditor.kind == "baseline" and baseline.config.images.allow_remote
    assert (baseline.concurrency, baseline.batch_size) == (4, 1)
