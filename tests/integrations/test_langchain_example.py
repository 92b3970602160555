"""examples/langchain_agent.py runs offline and shows allow, redact, block and escalate."""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest

pytest.importorskip("langchain_core")

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "langchain_agent.py"


def test_example_runs_offline(capsys: pytest.CaptureFixture[str]) -> None:
    runpy.run_path(str(EXAMPLE), run_name="__main__")
    out = capsys.readouterr().out
    assert "thinking: ['A plain bread recipe; nothing risky.']" in out  # allowed
    assert "thinking: None" in out and "I can't help with stealing a car." in out  # redacted
    assert "BLOCKED: risk 1 (harmful)" in out
    assert out.count("audited model call: risk 0 (safe) → allow") == 2  # both agent steps
    assert "answer after 4 messages: 'It is sunny in Paris.'" in out
    assert "BLOCKED the agent run" in out
    assert "ESCALATED to review" in out
    assert "review record: action=escalate" in out
