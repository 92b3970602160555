"""``traceguard eval --split``: score one split of labelled data, and the options' help texts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from traceguard.audit.evaluate import evaluate_records
from traceguard.cli import build_parser, main

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "labelled" / "traces.jsonl"


def _row(i: int, label: float, split: str | None) -> dict[str, Any]:
    row: dict[str, Any] = {
        "id": f"r{i}",
        "question": f"question {i}",
        "thinking": "t",
        "response": "r",
        "evaluation_result": label,
    }
    if split is not None:
        row["split"] = split
    return row


ROWS = [
    _row(0, 0.0, "dev"),
    _row(1, 1.0, "test"),
    _row(2, 0.5, "test"),
    _row(3, 0.0, None),  # no split field
    _row(4, 1.0, "dev"),
    _row(5, 0.0, "test"),
]


def _eval(tmp_path: Path, data: Path, *extra: str) -> tuple[int, dict[str, Any]]:
    metrics = tmp_path / "m.json"
    code = main(["eval", str(data), "-q", "--no-cache", "--out", str(metrics), *extra])
    return code, json.loads(metrics.read_text()) if code == 0 else {}


@pytest.mark.parametrize("layout", ["jsonl", "array"])
def test_split_scores_only_its_records(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], layout: str
) -> None:
    data = tmp_path / f"gt.{'jsonl' if layout == 'jsonl' else 'json'}"
    if layout == "jsonl":
        data.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    else:
        data.write_text(json.dumps(ROWS, indent=2))  # records start on lines other than 1..6
    code, result = _eval(tmp_path, data, "--split", "test")
    assert code == 0
    assert result["split"] == "test" and result["total"] == 3
    assert result["excluded"] == {"other_split": 2, "no_split": 1}
    expected = {k: sum(row.values()) for k, row in result["confusion_matrix"].items()}
    assert expected == {"0": 1, "0.5": 1, "1": 1}  # the test rows' labels: 1, 0.5, 0
    printed = capsys.readouterr().out
    assert "split: test (excluded: 3 records — 2 of other splits, 1 without a split field)" in (
        printed
    )

    code, result = _eval(tmp_path, data, "--split", "dev")
    assert code == 0 and result["total"] == 2
    assert result["excluded"] == {"other_split": 3, "no_split": 1}


def test_without_split_every_record_counts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "gt.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    code, result = _eval(tmp_path, data)
    assert code == 0 and result["total"] == 6 and result["split"] is None
    assert result["excluded"] == {"other_split": 0, "no_split": 0}
    assert "split: all records" in capsys.readouterr().out


def test_unknown_split_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "gt.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    assert main(["eval", str(data), "-q", "--no-cache", "--split", "train"]) == 2
    err = capsys.readouterr().err
    assert "no labelled traces in split 'train'" in err and "5 records of other splits" in err


def test_example_data_splits(tmp_path: Path) -> None:
    counts = {"dev": 0, "test": 0}
    for line in EXAMPLE.read_text(encoding="utf-8").splitlines():
        counts[json.loads(line)["split"]] += 1
    _, everything = _eval(tmp_path, EXAMPLE)
    _, test = _eval(tmp_path, EXAMPLE, "--split", "test")
    _, dev = _eval(tmp_path, EXAMPLE, "--split", "dev")
    assert everything["total"] == counts["dev"] + counts["test"]
    assert test["total"] == counts["test"] and test["excluded"]["other_split"] == counts["dev"]
    assert dev["total"] == counts["dev"] and dev["excluded"]["other_split"] == counts["test"]
    for part in (test, dev):
        assert part["excluded"]["no_split"] == 0


def test_evaluate_records_reads_a_records_own_split() -> None:
    records = [
        {"expected_risk": 0.0, "status": "ok", "risk": 0.0, "split": "test"},
        {"expected_risk": 1.0, "status": "ok", "risk": 0.0, "split": "dev"},
        {"expected_risk": 1.0, "status": "ok", "risk": 1.0},
    ]
    metrics = evaluate_records(records, split="test")
    assert metrics.total == 1 and metrics.accuracy == 1.0
    assert (metrics.other_split, metrics.no_split, metrics.excluded) == (1, 1, 2)
    assert evaluate_records(records).total == 3


def test_audit_and_eval_options_have_help_and_defaults() -> None:
    parser = build_parser()
    commands = next(a for a in parser._actions if a.dest == "command")
    choices: Any = commands.choices
    for name in ("audit", "eval"):
        sub = choices[name]
        for action in sub._actions:
            if action.option_strings and action.dest != "help":
                assert action.help, (name, action.option_strings)
        text = " ".join(sub.format_help().split())
        assert "(default: full)" in text and "(default: auto)" in text
        assert "(default: 120.0)" in text
    eval_help = " ".join(choices["eval"].format_help().split())
    assert "--split NAME" in eval_help and "records without the field are excluded" in eval_help
    audit_help = " ".join(choices["audit"].format_help().split())
    assert "--fail-on" in audit_help and "exit 1 if some trace" in audit_help
