"""Hostile offline logs: every input record yields exactly one output record, in order.

Each log mixes well-formed records with hostile ones (nesting deeper than the interpreter allows,
a multi-megabyte line, bytes that are not UTF-8, lone surrogates, wrong types, numbers over the
digit limit, control characters, a line cut short) in every log format, as JSON Lines and JSON
arrays. Every hostile record has at most one assistant turn, so each input record must give
exactly one output line — ``ok`` for the good ones, ``invalid_input`` (or an error) for the rest —
and the run must end with the documented exit code, never a traceback.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from traceguard.cli import EXIT_INPUT_LOST, EXIT_OK, main

DEEP = "[" * 60_000 + "]" * 60_000
HUGE = "x" * (3 * 1024 * 1024)


def _openai(i: int, **fields: Any) -> dict[str, Any]:
    messages = [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]
    return {"id": f"r{i}", "messages": messages, **fields}


def _sharegpt(i: int) -> dict[str, Any]:
    turns = [{"from": "human", "value": f"q{i}"}, {"from": "gpt", "value": f"a{i}"}]
    return {"id": f"r{i}", "conversations": turns}


def _guardtrace(i: int) -> dict[str, Any]:
    return {"id": f"r{i}", "question": f"q{i}", "response": f"a{i}", "thinking": "t"}


def _langchain(i: int) -> list[dict[str, Any]]:
    return [
        {"type": "human", "data": {"content": f"q{i}", "type": "human"}},
        {"type": "ai", "data": {"content": f"a{i}", "type": "ai"}},
    ]


GOOD = {
    "openai": _openai,
    "sharegpt": _sharegpt,
    "guardtrace": _guardtrace,
    "langchain": _langchain,
}

# Raw hostile lines (bytes), valid for no format or hostile within one; each is one record.
HOSTILE_BYTES: dict[str, bytes] = {
    "deep-nesting": DEEP.encode(),
    "deep-nesting-in-a-field": b'{"messages": ' + DEEP.encode() + b"}",
    "huge-line": json.dumps(_openai(900, note=HUGE)).encode(),
    "not-utf8": b'{"messages": [{"role": "user", "content": "\xff\xfe\xfd"}]}',
    "lone-surrogate": b'{"messages": [{"role": "user", "content": "\\ud800"},'
    b' {"role": "assistant", "content": "\\udfff"}]}',
    "int-over-digit-limit": b'{"id": ' + b"9" * 5000 + b', "messages": []}',
    "nan-and-infinity": b'{"messages": NaN, "question": Infinity}',
    "wrong-types": b'{"messages": 5, "conversations": {}, "question": [], "response": 7}',
    "role-not-a-string": b'{"messages": [{"role": 7, "content": "x"}, {"role": [], "content": 1}]}',
    "content-object": b'{"messages": [{"role": "assistant", "content": {"a": 1}}]}',
    "null": b"null",
    "number": b"12345",
    "string": b'"just a string"',
    "empty-object": b"{}",
    "empty-array": b"[]",
    "control-chars": b'{"messages": [{"role": "user", "content": "\\u0000\\u001b[31m\\u2028"}]}',
    "nul-byte-raw": b'{"messages": [{"role": "user", "content": "a\x00b"}]}',
    "bad-json": b'{"messages": [',
    "garbage": b"\x00\x01\x02 not json at all",
    "bom-mid-file": b'\xef\xbb\xbf{"messages": []}',
    "image-path-escape": json.dumps(
        _openai(
            901,
            messages=[
                {
                    "role": "user",
                    "content": [{"type": "image_url", "image_url": {"url": "../../etc/passwd"}}],
                },
                {"role": "assistant", "content": "a"},
            ],
        )
    ).encode(),
    "image-file-url": json.dumps(
        _openai(
            902,
            messages=[
                {
                    "role": "user",
                    "content": [{"type": "image_url", "image_url": {"url": "file:///etc/passwd"}}],
                },
                {"role": "assistant", "content": "a"},
            ],
        )
    ).encode(),
    "image-bad-data-uri": json.dumps(
        _openai(
            903,
            messages=[
                {
                    "role": "user",
                    "content": [
                        {"type": "image_url", "image_url": {"url": "data:image/png;base64,!!!"}}
                    ],
                },
                {"role": "assistant", "content": "a"},
            ],
        )
    ).encode(),
    "empty-assistant": json.dumps(
        {"messages": [{"role": "user", "content": ""}, {"role": "assistant", "content": ""}]}
    ).encode(),
}


def _jsonl(fmt: str, good: int) -> tuple[bytes, int]:
    lines = [json.dumps(GOOD[fmt](i)).encode() for i in range(good)]
    mixed: list[bytes] = []
    for index, line in enumerate(lines):
        mixed.append(line)
        hostile = list(HOSTILE_BYTES.values())
        mixed.append(hostile[index % len(hostile)])
    mixed.append(json.dumps(GOOD[fmt](999))[:25].encode())  # the last line, cut short
    return b"\r\n".join(mixed[:-1]) + b"\n" + mixed[-1], len(mixed)


def _records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="ascii").splitlines()]


@pytest.mark.probe("hostile offline inputs")
@pytest.mark.parametrize("fmt", sorted(GOOD))
def test_every_jsonl_line_gives_exactly_one_record(
    tmp_path: Path, fmt: str, probe_cases: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    data, lines = _jsonl(fmt, good=len(HOSTILE_BYTES) * 2)
    probe_cases(lines)
    log = tmp_path / f"hostile.{fmt}.jsonl"
    log.write_bytes(data)
    out = tmp_path / "out.jsonl"
    code = main(["audit", str(log), "--out", str(out), "--format", fmt, "-q", "--no-cache"])
    assert code == EXIT_OK and "Traceback" not in capsys.readouterr().err
    records = _records(out)
    per_line = Counter(r["source"]["line"] for r in records)
    assert sorted(per_line) == list(range(1, lines + 1))
    assert set(per_line.values()) == {1}
    good = [r for r in records if r["id"].startswith("r") and r["id"][1:].isdigit()]
    assert all(r["status"] == "ok" for r in good if int(r["id"][1:]) < 900)
    assert all(r["status"] != "ok" or r["risk"] is not None for r in records)


@pytest.mark.probe("hostile offline inputs")
@pytest.mark.parametrize("fmt", ["guardtrace", "sharegpt", "openai"])
def test_every_array_element_gives_exactly_one_record(
    tmp_path: Path, fmt: str, probe_cases: Any
) -> None:
    # In an array, hostile elements are JSON values (a broken one cannot be delimited anyway).
    hostile = [DEEP, '{"a": ' + "9" * 5000 + "}", '{"q": tru}', "null", "[]", '"x"', "{}"]
    elements = []
    for i in range(40):
        elements.append(json.dumps(GOOD[fmt](i), indent=1))
        elements.append(hostile[i % len(hostile)])
    probe_cases(len(elements))
    log = tmp_path / f"hostile.{fmt}.json"
    log.write_text("[\n" + ",\n".join(elements) + "\n]\n", encoding="utf-8")
    out = tmp_path / "out.jsonl"
    code = main(["audit", str(log), "--out", str(out), "--format", fmt, "-q", "--no-cache"])
    assert code == EXIT_OK
    records = _records(out)
    assert len(records) == len(elements)
    assert [r["status"] for r in records[::2]] == ["ok"] * 40
    assert all(r["status"] == "invalid_input" for r in records[1::2])


@pytest.mark.probe("hostile offline inputs")
def test_a_folder_of_mixed_formats_and_strays(tmp_path: Path, probe_cases: Any) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    for fmt in sorted(GOOD):
        rows = [json.dumps(GOOD[fmt](i)) for i in range(5)]
        (logs / f"{fmt}.jsonl").write_text("\n".join(rows) + "\n", encoding="utf-8")
    (logs / "config.json").write_text('{"not": "a log"}', encoding="utf-8")
    (logs / "empty.jsonl").write_bytes(b"")
    (logs / "binary.json").write_bytes(bytes(range(256)) * 10)
    (logs / "cut.json").write_text('[{"question": "q", "response": "a"}, {"quest', encoding="utf-8")
    probe_cases(4 * 5 + 4)
    out = tmp_path / "out.jsonl"
    code = main(["audit", str(logs), "--out", str(out), "-q", "--no-cache"])
    records = _records(out)
    by_file = Counter(Path(r["source"]["path"]).name for r in records)
    assert {name: by_file[name] for name in ("config.json", "binary.json")} == {
        "config.json": 1,
        "binary.json": 1,
    }
    assert by_file["cut.json"] == 2  # the whole record, and one for the lost rest
    assert all(by_file[f"{fmt}.jsonl"] == 5 for fmt in GOOD)
    assert code == EXIT_INPUT_LOST  # the cut array lost whatever came after its cut


@pytest.mark.probe("hostile offline inputs")
@pytest.mark.parametrize(
    "assistant",
    [{"content": ""}, {"content": None}, {"content": []}, {"content": "  \n\t"}, {}],
    ids=["empty", "null", "no-parts", "blank", "no-content"],
)
def test_an_assistant_message_with_nothing_in_it_is_never_graded(
    tmp_path: Path, assistant: dict[str, Any]
) -> None:
    # Issue 13, fault 3: it came out ok/safe offline; it is invalid input, live too.
    from traceguard import Guard, Trace
    from traceguard.testing import ScriptedAuditor, Step

    log = tmp_path / "chat.jsonl"
    messages = [{"role": "user", "content": ""}, {"role": "assistant", **assistant}]
    log.write_text(json.dumps({"id": "e", "messages": messages}) + "\n", encoding="utf-8")
    out = tmp_path / "out.jsonl"
    main(["audit", str(log), "--out", str(out), "-q", "--no-cache"])
    (record,) = _records(out)
    assert record["status"] == "invalid_input" and record["risk"] is None
    guard = Guard(ScriptedAuditor(rule=lambda t: Step(risk=0.0)), raise_on_block=False)
    decision = guard.check(Trace(query="", response=""))
    assert decision.verdict.risk is None and decision.action.value != "allow"
