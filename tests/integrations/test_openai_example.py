"""The offline example runs and shows every decision."""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "openai_wrap.py"


def test_example_runs_offline(capsys: pytest.CaptureFixture[str]) -> None:
    runpy.run_path(str(EXAMPLE), run_name="__main__")
    out = capsys.readouterr().out
    assert "bake at 230 C" in out  # allowed
    assert "thinking: None" in out  # redacted
    assert "BLOCKED: risk 1 (harmful)" in out
    assert "ESCALATED to review" in out
    assert "review record: action=escalate" in out
    assert "isinstance(stream, openai.Stream)=True" in out
    assert "decision: ['allow']" in out
    assert "rm_files: held: 'The call to rm_files was not run" in out
