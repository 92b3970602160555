"""Faults in the input that once cost records: each input record yields exactly one output record.

Issue 13, fault 2: a deeply nested element stopped the JSON array reader, so the harmful trace
after it got no record at all and the run exited 0.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from traceguard.cli import EXIT_FAIL_ON, EXIT_INPUT_LOST, EXIT_OK, main
from traceguard.testing.openai_server import OpenAIServer

from ._auditor import judge, served

DEEP = "[" * 100_000 + "]" * 100_000


def _row(i: int, verdict: str) -> str:
    return json.dumps(
        {"id": f"r{i}", "question": f"question {i}", "response": f"probe-verdict={verdict}"}
    )


def _records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="ascii").splitlines()]


@pytest.fixture
def auditor_url() -> Iterator[str]:
    with OpenAIServer(responder=judge) as server:
        yield server.base_url


def _audit(tmp_path: Path, text: str, url: str, *extra: str) -> tuple[int, list[dict[str, Any]]]:
    log = tmp_path / "traces.json"
    log.write_text(text, encoding="utf-8")
    out = tmp_path / "out.jsonl"
    code = main(
        ["audit", str(log), "--out", str(out), "--format", "guardtrace", *served(url), *extra]
    )
    return code, _records(out)


@pytest.mark.probe("hostile offline inputs")
def test_deeply_nested_element_does_not_hide_the_trace_after_it(
    tmp_path: Path, auditor_url: str
) -> None:
    text = "[\n" + ",\n".join([_row(0, "0"), DEEP, _row(2, "1")]) + "\n]"
    code, records = _audit(tmp_path, text, auditor_url)
    assert [r["status"] for r in records] == ["ok", "invalid_input", "ok"]
    assert records[1]["error"]["type"] == "MalformedRecord"
    assert "nested too deeply" in records[1]["error"]["message"]
    assert records[2]["id"] == "r2" and records[2]["label"] == "harmful"
    assert code == EXIT_OK
    code, _ = _audit(tmp_path, text, auditor_url, "--fail-on", "harmful")
    assert code == EXIT_FAIL_ON


@pytest.mark.parametrize(
    "damage",
    [
        '{"id": "broken", "question": "unterminated, "response": [1}',  # nothing delimits it
        '{"id": "broken", "question": "q", "response": [1, 2}',  # brackets do not match
    ],
)
@pytest.mark.probe("hostile offline inputs")
def test_undelimitable_damage_is_skipped_counted_and_fails_the_run(
    tmp_path: Path, auditor_url: str, damage: str, capsys: pytest.CaptureFixture[str]
) -> None:
    text = "[\n" + ",\n".join([_row(0, "0"), damage, _row(2, "1")]) + "\n]"
    for extra in ((), ("--fail-on", "harmful")):
        code, records = _audit(tmp_path, text, auditor_url, *extra)
        assert [r["status"] for r in records] == ["ok", "invalid_input", "ok"]
        assert records[1]["error"]["type"] == "UnreadableInput"
        assert "bytes" in records[1]["error"]["message"]
        assert records[2]["label"] == "harmful"
        # Never 0, and never 1: a lost record must not pass, nor pass for a finding.
        assert code == EXIT_INPUT_LOST
        assert "input not fully read" in capsys.readouterr().err


@pytest.mark.probe("hostile offline inputs")
def test_array_cut_short_says_what_was_lost(tmp_path: Path, auditor_url: str) -> None:
    text = "[\n" + ",\n".join([_row(0, "0"), _row(1, "1"), '{"id": "r2", "question": "cu'])
    code, records = _audit(tmp_path, text, auditor_url)
    assert [r["status"] for r in records] == ["ok", "ok", "invalid_input"]
    assert records[2]["error"]["type"] == "UnreadableInput"
    assert records[2]["source"]["line"] == 4
    assert code == EXIT_INPUT_LOST
