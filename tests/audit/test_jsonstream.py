"""Streaming JSON arrays and lines: the same values as json.load, one at a time, with lines."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from traceguard.audit import _jsonarray, _jsonstream
from traceguard.audit._jsonarray import iter_json_array
from traceguard.audit._jsonstream import BadRecord, RawRecord, iter_json_lines

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=150, deadline=None)
@given(values=st.lists(json_values, max_size=12), indent=st.sampled_from([None, 1, 2]))
def test_array_stream_matches_json_load(values: list[Any], indent: int | None) -> None:
    text = json.dumps(values, indent=indent, ensure_ascii=False)
    got = list(iter_json_array(io.BytesIO(text.encode())))
    assert all(isinstance(r, RawRecord) for r in got)
    assert [r.value for r in got if isinstance(r, RawRecord)] == values


def test_elements_larger_than_the_read_chunk(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_jsonarray, "CHUNK", 7)
    values = [{"text": "x" * 500, "n": i} for i in range(5)] + [12345678, 0.5, "tail"]
    text = json.dumps(values, indent=1)
    got = list(iter_json_array(io.BytesIO(text.encode())))
    assert [r.value for r in got if isinstance(r, RawRecord)] == values
    lines = [r.line for r in got]
    starts = [
        i + 1
        for i, line in enumerate(text.splitlines())
        if line.startswith((" {", " 1", " 0", ' "'))
    ]
    assert lines == starts


def _kinds(text: str | bytes, **kwargs: Any) -> list[tuple[str, Any]]:
    data = text.encode() if isinstance(text, str) else text
    shown: list[tuple[str, Any]] = []
    for record in iter_json_array(io.BytesIO(data), **kwargs):
        if isinstance(record, RawRecord):
            shown.append(("ok", record.value))
        else:
            shown.append(("lost" if record.unreadable else "bad", record.line))
    return shown


DEEP = "[" * 100_000 + "]" * 100_000


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # Delimited but not decodable: one bad record each, and the next element is read.
        (f'[{{"a": 1}}, {DEEP}, {{"b": 2}}]', [("ok", {"a": 1}), ("bad", 1), ("ok", {"b": 2})]),
        ('[{"a": ' + "9" * 5000 + '}, {"b": 2}]', [("bad", 1), ("ok", {"b": 2})]),
        ('[{"a": tru}, {"b": 2}]', [("bad", 1), ("ok", {"b": 2})]),
        ('[{"a": 1},\n bogus,\n {"b": 2}]', [("ok", {"a": 1}), ("bad", 2), ("ok", {"b": 2})]),
        ('[{"a": "x\\q"}, {"b": 2}]', [("bad", 1), ("ok", {"b": 2})]),
        # A missing comma loses nothing.
        ('[{"a": 1} {"b": 2}]', [("ok", {"a": 1}), ("ok", {"b": 2})]),
        # Not delimitable: skipped to the next record start, which is read.
        ('[{"a": [1, 2}, \n{"b": 2}]', [("lost", 1), ("ok", {"b": 2})]),
        ('[{"a": "open},\n{"b": 2}]', [("lost", 1), ("ok", {"b": 2})]),
        ('[{"a": 1} junk, {"b": 2}]', [("ok", {"a": 1}), ("lost", 1), ("ok", {"b": 2})]),
        ('[{"a": 1}]\n[{"b": 2}]', [("ok", {"a": 1}), ("lost", 2), ("ok", {"b": 2})]),
        # Nothing readable after the damage, or a file cut short: the rest is lost, and said so.
        ('[{"a": 1}, {"b": ', [("ok", {"a": 1}), ("lost", 1)]),
        ('[{"a": 1},', [("ok", {"a": 1}), ("lost", 1)]),
        ('[{"a": 1}', [("ok", {"a": 1}), ("lost", 1)]),
        ('{"a": 1}', [("lost", 1)]),
    ],
)
def test_damage_costs_only_what_cannot_be_delimited(text: str, expected: list[Any]) -> None:
    assert _kinds(text) == expected


def test_bytes_that_are_not_utf8_cost_their_element_only() -> None:
    data = b'[{"a": "\xff\xfe"},\n {"b": "caf\xc3\xa9"}]'
    assert _kinds(data) == [("bad", 1), ("ok", {"b": "café"})]


def test_restart_skips_objects_nested_in_the_damage() -> None:
    # The damaged record holds chat messages ({"role": ...}) followed by commas; only an object
    # the caller calls a record may restart reading.
    damaged = '{"messages": [{"role": "user"}, {"role": "assistant"}], "x": [}'
    text = f'[{damaged},\n{{"messages": [], "id": 2}}]'
    got = _kinds(text, is_record=lambda v: "messages" in v)
    assert got == [("lost", 1), ("ok", {"messages": [], "id": 2})]
    lost = next(r for r in iter_json_array(io.BytesIO(text.encode())) if isinstance(r, BadRecord))
    assert lost.lost_bytes > 0 and "line 1" in lost.message


def test_damage_spanning_read_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_jsonarray, "CHUNK", 5)
    values = [{"n": i, "text": "y" * 40} for i in range(4)]
    good = [json.dumps(v) for v in values]
    text = "[\n" + ",\n".join([good[0], '{"n": "unterminated, "z": [', good[1], DEEP, *good[2:]])
    text += "\n]"
    got = _kinds(text)
    assert [k for k, _ in got] == ["ok", "lost", "ok", "bad", "ok", "ok"]
    assert [v for k, v in got if k == "ok"] == values


def test_lines_report_bad_json_and_utf8_with_line_numbers() -> None:
    data = b'{"a": 1}\n\n{bad\n\xff\xfe\n[1, 2]\n'
    counter = _jsonstream.ByteCounter()
    got = list(iter_json_lines(io.BytesIO(data), counter))
    assert [(type(r).__name__, r.line) for r in got] == [
        ("RawRecord", 1),
        ("BadRecord", 3),
        ("BadRecord", 4),
        ("RawRecord", 5),
    ]
    assert counter.bytes == len(data)


def test_byte_order_mark_is_not_content() -> None:
    data = b"\xef\xbb\xbf" + b'[{"a": 1}]'
    (record,) = iter_json_array(io.BytesIO(data))
    assert isinstance(record, RawRecord) and record.value == {"a": 1}
