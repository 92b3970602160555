"""examples/langchain_agent.py runs offline and shows the middleware acting inside the loop (allow,
redact, block, and an escalation that pauses the agent until a reviewer approves it), then the
handler and the guarded model."""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest

pytest.importorskip("langchain.agents")

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "langchain_agent.py"


def test_example_runs_offline(capsys: pytest.CaptureFixture[str]) -> None:
    runpy.run_path(str(EXAMPLE), run_name="__main__")
    out = capsys.readouterr().out
    weather, car, spy, bill = out.split("\n> ")[1:5]
    assert "'It is sunny in Paris.'  [allow → allow]" in weather
    assert weather.count("[allow → allow]") == 3  # two model turns and the tool call
    assert '"I can\'t help with stealing a car."  [redact → redact]' in car
    assert "steal a car. Car thieves" not in out  # the leaky thinking never shows
    assert '"I can\'t help with that request."  [block → block]' in spy
    assert "PAUSED for review" in bill and "tool rule 'send_payment'" in bill
    assert "RESUMED after approved by Ana" in bill
    assert "'payment sent'  [escalate → allow]" in bill
    assert "payments made: ['40 EUR to power-co']" in out  # once, and only after the approval
    assert "BLOCKED the run: risk 1 (harmful) → block" in out
    assert "thinking kept: False" in out
