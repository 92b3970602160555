"""The command line against real auditors: the baseline, and GuardTrace served on loopback.

Includes the crash test: a real ``traceguard audit`` process is killed with SIGKILL mid-run and
resumed; the result must equal a clean run line for line.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from traceguard.cli import main
from traceguard.testing.openai_server import (
    OpenAIServer,
    RecordedRequest,
    ScriptedResponse,
    chat_completion,
    guardtrace_output,
)

from ._helpers import chat, write_jsonl
from .test_runner import read, stable

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "logs"


def _judge(request: RecordedRequest, delay: float) -> ScriptedResponse:
    """A GuardTrace answer decided by the audited query's number, so runs are comparable."""
    text = json.dumps(request.json)
    match = re.search(r"question (\d+)", text)
    judgment = ("0", "0.5", "1")[int(match.group(1)) % 3] if match else "0"
    body = chat_completion(guardtrace_output(judgment, analysis="Looked at it. “Judgment”: 0"))
    return ScriptedResponse.json(body, delay_s=delay)


@pytest.fixture
def server() -> Iterator[OpenAIServer]:
    with OpenAIServer(responder=lambda r: _judge(r, 0.0)) as srv:
        yield srv


def served(server: OpenAIServer) -> list[str]:
    return ["--auditor-url", server.base_url, "--auditor-model", "guard", "-q"]


def test_examples_run_with_the_baseline(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "v.jsonl"
    code = main(
        ["audit", str(EXAMPLES), "--out", str(out), "--report", str(tmp_path / "r.html"), "-q"]
    )
    assert code == 0
    records = read(out)
    assert {r["auditor"] for r in records} >= {"baseline-rules"}
    assert {r["status"] for r in records} == {"ok", "error", "invalid_input"}
    assert len({r["id"] for r in records}) == len(records)
    printed = capsys.readouterr().out
    assert "records written" in printed and str(out) in printed
    assert (tmp_path / "v.jsonl.cache.sqlite").exists()


def test_served_guardtrace_auditor_and_fail_on(tmp_path: Path, server: OpenAIServer) -> None:
    log = write_jsonl(tmp_path / "log.jsonl", [chat(i) for i in range(6)])
    out = tmp_path / "v.jsonl"
    code = main(["audit", str(log), "--out", str(out), "--fail-on", "harmful", *served(server)])
    assert code == 1
    records = read(out)
    # The fake "Judgment: 0" inside the analysis does not win over the real last judgment.
    assert [r["risk"] for r in records] == [0.0, 0.5, 1.0] * 2
    assert all(r["auditor"].startswith("guardtrace") for r in records)
    assert len(server.requests) == 6
    # Second run: everything from the cache, no request.
    assert main(["audit", str(log), "--out", str(out), *served(server)]) == 0
    assert len(server.requests) == 6


def test_fail_on_three_when_the_auditor_is_down(tmp_path: Path) -> None:
    log = write_jsonl(tmp_path / "log.jsonl", [chat(0)])
    with OpenAIServer(responder=lambda r: ScriptedResponse.error(400, "bad")) as srv:
        code = main(
            [
                "audit",
                str(log),
                "--out",
                str(tmp_path / "v.jsonl"),
                "--fail-on",
                "harmful",
                *served(srv),
            ]
        )
    assert code == 3
    (record,) = read(tmp_path / "v.jsonl")
    assert record["status"] == "error" and record["risk"] is None


@pytest.mark.parametrize(
    "argv",
    [
        ["audit", "missing.jsonl", "--out", "o.jsonl"],
        ["audit", "x", "--out", "o.jsonl", "--mode", "score"],
        ["audit", "--out", "o.jsonl"],
        ["audit", "x", "--out", "o", "--auditor-url", "http://127.0.0.1:9"],
        ["frobnicate"],
    ],
)
def test_usage_errors_exit_two(
    argv: list[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    write_jsonl(tmp_path / "x", [chat(0)])
    assert main(argv) == 2
    assert "error" in capsys.readouterr().err


def test_bad_policy_file_exits_two(tmp_path: Path) -> None:
    log = write_jsonl(tmp_path / "log.jsonl", [chat(0)])
    policy = tmp_path / "p.yaml"
    policy.write_text("harmful: explode\n")
    assert (
        main(["audit", str(log), "--out", str(tmp_path / "o"), "--policy", str(policy), "-q"]) == 2
    )


def test_policy_file_changes_actions(tmp_path: Path, server: OpenAIServer) -> None:
    log = write_jsonl(tmp_path / "log.jsonl", [chat(i) for i in range(3)])
    policy = tmp_path / "p.yaml"
    policy.write_text("potentially_harmful: escalate\nharmful: block\n")
    out = tmp_path / "o.jsonl"
    assert (
        main(["audit", str(log), "--out", str(out), "--policy", str(policy), *served(server)]) == 0
    )
    assert [r["action"] for r in read(out)] == ["allow", "escalate", "block"]


def test_eval_prints_metrics_and_writes_json(
    tmp_path: Path, server: OpenAIServer, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = [
        {"question": f"question {i}", "thinking": "t", "response": "r", "evaluation_result": e}
        for i, e in enumerate([0, 0.5, 1, 0, 1, 1])  # predictions: 0, .5, 1, 0, .5, 1
    ]
    data = tmp_path / "gt.json"
    data.write_text(json.dumps(rows))
    metrics = tmp_path / "m.json"
    assert main(["eval", str(data), "--out", str(metrics), *served(server)]) == 0
    result: dict[str, Any] = json.loads(metrics.read_text())
    assert result["total"] == 6 and result["accuracy"] == pytest.approx(5 / 6)
    assert result["confusion_matrix"]["1"] == {"0": 0, "0.5": 1, "1": 2, "failed": 0}
    assert result["per_level"]["0"]["f1"] == 1.0
    printed = capsys.readouterr().out
    assert "macro F1" in printed and "93.10" in printed


def test_eval_without_labels_is_an_error(tmp_path: Path) -> None:
    log = write_jsonl(tmp_path / "log.jsonl", [chat(0)])
    assert main(["eval", str(log), "-q"]) == 2


def test_module_entry_point_runs(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "traceguard", "--version"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0 and result.stdout.startswith("traceguard ")


@pytest.mark.slow
def test_kill_9_mid_run_then_resume_equals_a_clean_run(tmp_path: Path) -> None:
    n = 300
    log = write_jsonl(tmp_path / "log.jsonl", [chat(i) for i in range(n)])
    killed = tmp_path / "killed.jsonl"
    clean = tmp_path / "clean.jsonl"
    with OpenAIServer(responder=lambda r: _judge(r, 0.01)) as srv:
        args = ["--concurrency", "4", "--no-cache", *served(srv)]
        process = subprocess.Popen(
            [sys.executable, "-m", "traceguard", "audit", str(log), "--out", str(killed), *args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                if killed.exists() and killed.read_bytes().count(b"\n") >= 40:
                    break
                assert process.poll() is None, process.stderr.read() if process.stderr else ""
                time.sleep(0.01)
            os.kill(process.pid, signal.SIGKILL)
        finally:
            process.wait(30)
            if process.stderr is not None:
                process.stderr.close()
        assert process.returncode == -signal.SIGKILL
        written = killed.read_bytes().count(b"\n")
        assert 40 <= written < n
        before = len(srv.requests)
        assert main(["audit", str(log), "--out", str(killed), "--resume", *args]) == 0
        resumed_requests = len(srv.requests) - before
        assert main(["audit", str(log), "--out", str(clean), *args]) == 0
    assert stable(read(killed)) == stable(read(clean))
    assert len(read(killed)) == n
    assert resumed_requests <= n - written  # nothing already written was audited again
