"""``kill -9`` a real ``traceguard audit`` again and again; ``--resume`` loses and repeats nothing.

Each run is a subprocess auditing through a served auditor on loopback; it is killed with SIGKILL
once its output holds a given number of lines (mid-write, mid-cache-commit: wherever it is),
then resumed, and killed again (with the verdict cache on, so kills land in its commits too).
The final output must hold every trace exactly once, in input order, each with its own verdict.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from traceguard.cli import main
from traceguard.testing.openai_server import OpenAIServer, RecordedRequest, ScriptedResponse

from ._auditor import judge, served

TRACES = 300
KILL_AT = (50, 150)


def _slow_judge(request: RecordedRequest) -> ScriptedResponse:
    answer = judge(request)
    return ScriptedResponse.json(answer.body, delay_s=0.01)


def _log(path: Path) -> Path:
    with path.open("w", encoding="utf-8") as fh:
        for i in range(TRACES):
            verdict = ("0", "0.5", "1")[i % 3]
            messages = [
                {"role": "user", "content": f"question {i}"},
                {"role": "assistant", "content": f"answer {i} probe-verdict={verdict}"},
            ]
            fh.write(json.dumps({"id": f"t{i}", "messages": messages}) + "\n")
    return path


def _lines(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


def _run_until(command: list[str], out: Path, lines: int) -> None:
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while _lines(out) < lines:
            assert time.monotonic() < deadline, "the audit made no progress"
            assert process.poll() is None, process.stderr.read() if process.stderr else ""
            time.sleep(0.005)
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.wait(30)
        if process.stderr is not None:
            process.stderr.close()
    assert process.returncode == -signal.SIGKILL


def _verdicts(path: Path) -> list[tuple[str, Any, str]]:
    records = [json.loads(line) for line in path.read_text(encoding="ascii").splitlines()]
    return [(r["id"], r["risk"], r["status"]) for r in records]


@pytest.mark.probe("kill -9 and resume")
@pytest.mark.slow
def test_repeated_kill_9_then_resume_loses_and_repeats_nothing(
    tmp_path: Path, probe_cases: Any
) -> None:
    probe_cases(len(KILL_AT))
    log = _log(tmp_path / "log.jsonl")
    out = tmp_path / "killed.jsonl"
    with OpenAIServer(responder=_slow_judge) as server:
        options = [o for o in served(server.base_url) if o != "--no-cache"]
        options += ["--concurrency", "8", "--cache", str(tmp_path / "cache.sqlite")]
        command = [sys.executable, "-m", "traceguard", "audit", str(log), "--out", str(out)]
        for round_, lines in enumerate(KILL_AT):
            resume = ["--resume"] if round_ else []
            _run_until([*command, *options, *resume], out, lines)
        assert main(["audit", str(log), "--out", str(out), *options, "--resume"]) == 0
    expected = [(f"t{i}", (0.0, 0.5, 1.0)[i % 3], "ok") for i in range(TRACES)]
    assert _verdicts(out) == expected  # each trace once, in order, with its own verdict
