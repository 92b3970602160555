"""Streaming JSON arrays and lines: the same values as json.load, one at a time, with lines."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from traceguard.audit import _jsonstream
from traceguard.audit._jsonstream import BadRecord, RawRecord, iter_json_array, iter_json_lines

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
    monkeypatch.setattr(_jsonstream, "_CHUNK", 7)
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


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[{"a": 1}, {"b": ', "not valid JSON"),
        ('[{"a": 1} {"b": 2}]', "expected ','"),
        ('[{"a": 1},', "not closed"),
        ('{"a": 1}', "expected a JSON array"),
    ],
)
def test_broken_arrays_end_with_one_fatal_record(text: str, message: str) -> None:
    got = list(iter_json_array(io.BytesIO(text.encode())))
    assert isinstance(got[-1], BadRecord) and got[-1].fatal
    assert message in got[-1].message
    assert sum(isinstance(r, BadRecord) for r in got) == 1


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
