"""Typed stages: which part of the output a trace holds, shown in records, not in the cache key."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import traceguard
from traceguard import Guard, JsonlSink, Stage, Trace
from traceguard.testing import ScriptedAuditor, Step


def test_stage_defaults_to_final_and_names_every_contract_value() -> None:
    assert Trace(query="q", response="r").stage is Stage.FINAL
    assert [s.value for s in Stage] == ["final", "thinking", "checkpoint", "partial", "tool_call"]
    assert traceguard.Stage is Stage


def test_stage_leaves_the_content_hash_alone_but_shows_in_the_summary() -> None:
    final = Trace(query="q", response="", thinking="plan")
    thinking = dataclasses.replace(final, stage=Stage.THINKING)
    # The auditor sees the same text at both stages, so the verdict cache may share the verdict.
    assert final.content_hash() == thinking.content_hash()
    assert final.summary()["stage"] == "final"
    assert thinking.summary()["stage"] == "thinking"


def test_sink_records_carry_the_stage(tmp_path: Path) -> None:
    out = tmp_path / "audit.jsonl"
    with Guard(ScriptedAuditor([Step(risk=0)]), sinks=[JsonlSink(out)]) as guard:
        guard.check(Trace(query="q", response="partial text", stage=Stage.PARTIAL))
    (record,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert record["trace"]["stage"] == "partial"
