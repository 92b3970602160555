"""Regressions reported by newcomers: empty guardtrace records, a dead auditor exiting 0,
undetectable files in a folder, and JSON errors without positions."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from traceguard._exceptions import ConfigurationError
from traceguard.audit import LogReader
from traceguard.audit.readers import expand_inputs
from traceguard.cli import main
from traceguard.testing.openai_server import (
    OpenAIServer,
    RecordedRequest,
    ScriptedResponse,
    chat_completion,
    guardtrace_output,
)

from ._helpers import chat, write_jsonl
from .test_runner import read


def _items(path: Path, fmt: str = "auto") -> list:  # type: ignore[type-arg]
    return list(LogReader(path, fmt).items())  # type: ignore[arg-type]


# 1. guardtrace records without question/response -------------------------------------------


@pytest.mark.parametrize(
    ("record", "named"),
    [
        ({"id": "c"}, ["'question'", "'response'"]),
        ({"prompt": "p", "answer": "a", "evaluation_result": 0}, ["'question'", "'response'"]),
        ({"question": "", "response": ""}, ["empty"]),
        ({"messages": [{"role": "user", "content": "hi"}]}, ["'question'", "'response'"]),
    ],
)
def test_guardtrace_record_without_text_is_invalid(
    tmp_path: Path, record: dict[str, object], named: list[str]
) -> None:
    log = write_jsonl(tmp_path / "g.jsonl", [record])
    (item,) = _items(log, "guardtrace")
    assert item.trace is None and item.problem is not None
    for word in named:
        assert word in item.problem.message


@pytest.mark.parametrize(
    "record",
    [{"question": 3, "response": "x"}, {"question": "q", "response": ["x"]}],
)
def test_guardtrace_wrong_types_are_invalid(tmp_path: Path, record: dict[str, object]) -> None:
    log = write_jsonl(tmp_path / "g.jsonl", [record])
    (item,) = _items(log, "guardtrace")
    assert item.trace is None and item.problem is not None
    assert "must be a string" in item.problem.message


def test_guardtrace_with_only_a_response_is_audited(tmp_path: Path) -> None:
    log = write_jsonl(tmp_path / "g.jsonl", [{"response": "hello"}, {"question": "hi"}])
    items = _items(log, "guardtrace")
    assert [i.trace is not None for i in items] == [True, True]


def test_cli_guardtrace_forced_on_openai_lines(tmp_path: Path) -> None:
    log = write_jsonl(tmp_path / "log.jsonl", [chat(0), chat(1)])
    out = tmp_path / "v.jsonl"
    assert main(["audit", str(log), "--out", str(out), "--format", "guardtrace", "-q"]) == 0
    records = read(out)
    assert [r["status"] for r in records] == ["invalid_input", "invalid_input"]
    assert all(r["label"] is None for r in records)


# 2. exit code when nothing could be audited --------------------------------------------------


def _served(srv: OpenAIServer) -> list[str]:
    return ["--auditor-url", srv.base_url, "--auditor-model", "guard", "-q"]


def test_dead_auditor_exits_three_without_fail_on(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = write_jsonl(tmp_path / "log.jsonl", [chat(0), chat(1)])
    with OpenAIServer(responder=lambda r: ScriptedResponse.error(400, "bad")) as srv:
        code = main(["audit", str(log), "--out", str(tmp_path / "v.jsonl"), *_served(srv)])
    assert code == 3
    err = capsys.readouterr().err
    assert "no trace could be audited: check the auditor (" in err


def test_only_invalid_input_still_exits_zero(tmp_path: Path) -> None:
    log = tmp_path / "log.jsonl"
    log.write_text("not json\n", encoding="utf-8")
    argv = ["audit", str(log), "--out", str(tmp_path / "v.jsonl"), "--format", "openai", "-q"]
    assert main(argv) == 0


def _half_broken(request: RecordedRequest) -> ScriptedResponse:
    if re.search(r"question 0\b", json.dumps(request.json)):
        return ScriptedResponse.error(400, "bad")
    return ScriptedResponse.json(chat_completion(guardtrace_output("1")))


def test_fail_on_message_names_threshold_and_unaudited(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = write_jsonl(tmp_path / "log.jsonl", [chat(0), chat(1)])
    with OpenAIServer(responder=_half_broken) as srv:
        code = main(
            [
                "audit",
                str(log),
                "--out",
                str(tmp_path / "v.jsonl"),
                "--fail-on",
                "harmful",
                "--no-cache",
                *_served(srv),
            ]
        )
    assert code == 1
    err = capsys.readouterr().err
    assert "at or above harmful" in err and "1 traces could not be audited" in err


# 3. undetectable files in a folder ----------------------------------------------------------


def test_undetectable_file_in_folder_is_one_invalid_record(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    write_jsonl(logs / "a.jsonl", [chat(0)])
    (logs / "config.json").write_text('{"a": 1}', encoding="utf-8")
    (logs / "junk.jsonl").write_bytes(b"\x00\xff\xfe garbage \x89PNG")
    out = tmp_path / "v.jsonl"
    assert main(["audit", str(logs), "--out", str(out), "-q"]) == 0
    records = {r["id"]: r for r in read(out)}
    for name in ("config.json", "junk.jsonl"):
        record = records[str(logs / name)]
        assert record["status"] == "invalid_input"
        assert "cannot detect the format" in record["error"]["message"]
        assert "--format" in record["error"]["message"]
    assert any(r["status"] == "ok" for r in records.values())


def test_undetectable_file_named_explicitly_still_exits_two(tmp_path: Path) -> None:
    config = tmp_path / "config.json"
    config.write_text('{"a": 1}', encoding="utf-8")
    assert main(["audit", str(config), "--out", str(tmp_path / "v.jsonl"), "-q"]) == 2
    with pytest.raises(ConfigurationError, match="--format"):
        LogReader(config)
    (found,) = expand_inputs([tmp_path])
    assert LogReader(found).undetected is not None


def test_resume_refuses_a_different_auditor(tmp_path: Path) -> None:
    from traceguard.audit import run_audit
    from traceguard.testing import ScriptedAuditor

    log = tmp_path / "chat.jsonl"
    line = {
        "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    }
    log.write_text("\n".join(json.dumps(line) for _ in range(3)) + "\n")
    out = tmp_path / "out.jsonl"
    run_audit([log], out, auditor=ScriptedAuditor(rule=lambda t: 0, name="first"), progress=False)
    first, *rest = out.read_text().splitlines()
    out.write_text(first + "\n")  # as if killed after one record
    with pytest.raises(ConfigurationError, match="graded by 'first'"):
        run_audit(
            [log],
            out,
            auditor=ScriptedAuditor(rule=lambda t: 0, name="second"),
            resume=True,
            progress=False,
        )
    summary = run_audit(
        [log],
        out,
        auditor=ScriptedAuditor(rule=lambda t: 0, name="first"),
        resume=True,
        progress=False,
    )
    assert summary.resumed == 1 and len(out.read_text().splitlines()) == 3
