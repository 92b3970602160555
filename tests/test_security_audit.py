"""Adversarial tests of the offline audit: hostile log lines cost one record, never the run.

The promise: every input record yields exactly one output record, in order; a line no reader can
use is an ``invalid_input`` record. Each test here is a line that used to crash the whole run (so
no later trace was audited) or a cache that served a verdict about another picture.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from traceguard.audit import run_audit
from traceguard.cli import main
from traceguard.testing import ScriptedAuditor, Step


def _chat(i: int, content: Any = None) -> dict[str, Any]:
    return {
        "id": f"c{i}",
        "messages": [
            {"role": "user", "content": content if content is not None else f"question {i}"},
            {"role": "assistant", "content": f"answer {i}"},
        ],
    }


def _image_chat(i: int, url: str) -> dict[str, Any]:
    parts = [{"type": "text", "text": "look"}, {"type": "image_url", "image_url": {"url": url}}]
    return _chat(i, parts)


def _write(path: Path, lines: list[Any]) -> Path:
    with path.open("w", encoding="utf-8") as fh:
        for line in lines:
            fh.write(line if isinstance(line, str) else json.dumps(line))
            fh.write("\n")
    return path


def _records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="ascii").splitlines()]


HOSTILE_LINES = {
    "nul-in-image-path": json.dumps(_image_chat(1, "a\u0000b.png")),
    "nested-too-deep": '{"messages": ' + "[" * 100_000 + "]" * 100_000 + "}",
    "nested-content": json.dumps(_chat(1))[:-1] + ', "x": ' + '{"a":' * 5000 + "1" + "}" * 5001,
    "int-over-digit-limit": '{"id": ' + "9" * 5000 + ', "messages": []}',
}


@pytest.mark.parametrize("name", sorted(HOSTILE_LINES))
def test_hostile_line_is_one_invalid_record(tmp_path: Path, name: str) -> None:
    log = _write(tmp_path / "chats.jsonl", [_chat(0), HOSTILE_LINES[name], _chat(2)])
    out = tmp_path / "out.jsonl"
    summary = run_audit(log, out, auditor=ScriptedAuditor(rule=lambda t: Step(risk=0.0)))
    records = _records(out)
    assert [r["source"]["line"] for r in records] == [1, 2, 3]
    assert [r["status"] for r in records] == ["ok", "invalid_input", "ok"]
    assert records[1]["action"] == "escalate"
    assert summary.records == 3


def test_cli_survives_a_hostile_line_and_reports_it(tmp_path: Path) -> None:
    log = _write(tmp_path / "chats.jsonl", [HOSTILE_LINES["nul-in-image-path"], _chat(1)])
    out = tmp_path / "out.jsonl"
    code = main(["audit", str(log), "--out", str(out), "-q", "--fail-on", "harmful"])
    assert code == 3  # an unauditable trace is not a pass
    assert [r["status"] for r in _records(out)] == ["invalid_input", "ok"]


# -- the verdict cache must not outlive the picture it was about ---------------------------------


def _png(colour: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), colour).save(buffer, "PNG")
    return buffer.getvalue()


def test_replaced_image_file_is_audited_again(tmp_path: Path) -> None:
    image = tmp_path / "upload.png"
    image.write_bytes(_png((255, 255, 255)))
    log = _write(tmp_path / "chats.jsonl", [_image_chat(0, "upload.png")])
    cache = tmp_path / "cache.sqlite"
    auditor = ScriptedAuditor([Step(risk=0.0), Step(risk=1.0)])

    first = run_audit(log, tmp_path / "1.jsonl", auditor=auditor, cache=cache)
    assert first.audited == 1
    # Same log, same file name, another picture (and a different size, so even a coarse
    # timestamp cannot hide the change).
    image.write_bytes(_png((255, 0, 0)) + b"\0" * 7)
    os.utime(image, ns=(1, 1))
    second = run_audit(log, tmp_path / "2.jsonl", auditor=auditor, cache=cache)
    (record,) = _records(tmp_path / "2.jsonl")
    assert second.cache_hits == 0
    assert record["cached"] is False
    assert record["risk"] == 1.0  # the new picture's verdict, not the cached "safe"
    assert auditor.remaining == 0


def test_unchanged_image_file_still_hits_the_cache(tmp_path: Path) -> None:
    (tmp_path / "upload.png").write_bytes(_png((0, 0, 255)))
    log = _write(tmp_path / "chats.jsonl", [_image_chat(0, "upload.png")])
    cache = tmp_path / "cache.sqlite"
    auditor = ScriptedAuditor([Step(risk=0.5)])
    run_audit(log, tmp_path / "1.jsonl", auditor=auditor, cache=cache)
    second = run_audit(log, tmp_path / "2.jsonl", auditor=auditor, cache=cache)
    assert second.cache_hits == 1


def test_tampered_cache_entry_is_a_miss_not_a_verdict(tmp_path: Path) -> None:
    import sqlite3

    from traceguard.audit.cache import VerdictCache

    path = tmp_path / "cache.sqlite"
    with VerdictCache(path):
        pass
    forged = {"status": "ok", "auditor": "a", "risk": 0.0, "label": "harmful"}
    with sqlite3.connect(path) as conn:
        conn.execute("INSERT INTO verdicts VALUES ('k', ?)", (json.dumps(forged),))
    with VerdictCache(path) as cache:
        assert cache.get("k") is None


@pytest.mark.parametrize("first", ["[", '[{"messages": ', "[" * 5000 + "]" * 5000])
def test_jsonl_whose_first_line_opens_an_array_keeps_every_record(
    tmp_path: Path, first: str
) -> None:
    # The reader used to take such a file for one JSON array, fail on its first element and
    # write a single record for the whole file: every real trace after line 1 was lost.
    log = _write(tmp_path / "chats.jsonl", [first, _chat(1), _chat(2)])
    out = tmp_path / "out.jsonl"
    run_audit(log, out, format="openai", auditor=ScriptedAuditor(rule=lambda t: Step(risk=0.0)))
    records = _records(out)
    assert [r["source"]["line"] for r in records] == [1, 2, 3]
    assert [r["status"] for r in records] == ["invalid_input", "ok", "ok"]


def test_a_real_json_array_is_still_read_as_one(tmp_path: Path) -> None:
    log = tmp_path / "chats.json"
    log.write_text(json.dumps([_chat(1), _chat(2)], indent=2), encoding="utf-8")
    out = tmp_path / "out.jsonl"
    run_audit(log, out, auditor=ScriptedAuditor(rule=lambda t: Step(risk=0.0)))
    assert [r["id"] for r in _records(out)] == ["c1", "c2"]


def test_pretty_array_with_bare_values_on_lines_stays_an_array(tmp_path: Path) -> None:
    # indent=2 puts each number of a nested list on a line of its own; those lines are JSON
    # values by themselves but not records, so the file must not be taken for JSON Lines.
    records = [dict(_chat(i), scores=[0.1, 0.9], tags=["a", "b"]) for i in (1, 2)]
    log = tmp_path / "chats.json"
    log.write_text(json.dumps(records, indent=2), encoding="utf-8")
    out = tmp_path / "out.jsonl"
    run_audit(log, out, auditor=ScriptedAuditor(rule=lambda t: Step(risk=0.0)))
    assert [r["id"] for r in _records(out)] == ["c1", "c2"]
