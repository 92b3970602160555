"""Reading every log format into traces: shapes, ids, images, and bad input."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from traceguard import ConfigurationError, ImageRef
from traceguard.audit import LogReader, detect_format
from traceguard.audit._messages import LogItem

from ._helpers import chat, write_jsonl


def items(path: Path, fmt: str = "auto", **kwargs: object) -> list[LogItem]:
    return list(LogReader(path, fmt, **kwargs).items())  # type: ignore[arg-type]


def test_openai_turns_thinking_images_and_tools(tmp_path: Path, png: Path) -> None:
    log = write_jsonl(
        tmp_path / "chat.jsonl",
        [
            {
                "id": "conv",
                "model": "m1",
                "label": "harmful",
                "messages": [
                    {"role": "system", "content": "be nice"},
                    {"role": "user", "content": "first"},
                    {"role": "assistant", "content": "<think>plan A</think>one"},
                    {
                        "role": "user",
                        "content": [
                            {"type": "text", "text": "look"},
                            {"type": "image_url", "image_url": {"url": png.name}},
                        ],
                    },
                    {
                        "role": "assistant",
                        "reasoning_content": "plan B",
                        "content": "two",
                        "tool_calls": [
                            {"id": "t1", "function": {"name": "search", "arguments": "{}"}}
                        ],
                    },
                ],
            }
        ],
    )
    first, second = items(log)
    assert (first.id, second.id) == ("conv:2", "conv:4")
    assert first.source.to_dict() == {"path": str(log), "line": 1, "turn": 2}
    assert first.trace is not None and second.trace is not None
    assert (first.trace.query, first.trace.thinking, first.trace.response) == (
        "first",
        "plan A",
        "one",
    )
    assert [t.role for t in first.trace.history] == ["system"]
    assert second.trace.query == "look" and second.trace.thinking == "plan B"
    assert second.trace.tool_calls[0].name == "search"
    assert [t.role for t in second.trace.history] == ["system", "user", "assistant"]
    assert second.trace.images[0].kind == "path"
    assert second.images == (str(png.resolve()),)
    assert second.expected_risk == 1.0 and second.trace.model == "m1"


def test_one_item_per_record_even_when_bad(tmp_path: Path) -> None:
    log = write_jsonl(
        tmp_path / "chat.jsonl",
        [
            chat(1),
            '{"messages": [',  # cut line
            "",
            {"messages": "not a list"},
            {"id": "lonely", "messages": [{"role": "user", "content": "hi"}]},
            {
                "messages": [
                    {"role": "robot", "content": "x"},
                    {"role": "assistant", "content": "y"},
                ]
            },
            chat(2, label="7"),
            chat(3),
        ],
    )
    got = items(log, "openai")
    assert [(i.id, i.source.line, i.trace is not None) for i in got] == [
        ("c1", 1, True),
        (f"{log}:2", 2, False),
        (f"{log}:4", 4, False),
        ("lonely", 5, False),
        (f"{log}:6", 6, False),
        ("c2", 7, False),
        ("c3", 8, True),
    ]
    problems = {i.id: i.problem.message for i in got if i.problem is not None}
    assert "not valid JSON" in problems[f"{log}:2"]
    assert "no assistant turn" in problems["lonely"]
    assert "role" in problems[f"{log}:6"]
    assert "risk level" in problems["c2"]


def test_image_paths_never_escape_the_root(tmp_path: Path, png: Path) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    record = {
        "messages": [
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": u}}]}
            for u in ["../pic.png"]
        ]
        + [{"role": "assistant", "content": "ok"}]
    }
    log = write_jsonl(
        logs / "chat.jsonl",
        [
            record,
            {
                **record,
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "image_url", "image_url": {"url": str(png)}}],
                    },
                    {"role": "assistant", "content": "ok"},
                ],
            },
        ],
    )
    escaped, absolute = items(log)
    assert escaped.trace is None and escaped.problem is not None
    assert escaped.problem.type == "ImageAccessDenied"
    assert absolute.trace is None  # an absolute path outside the root is refused too
    # Relative paths resolve against --image-root: with the parent as root, the absolute path
    # is inside, and "../pic.png" (now tmp_path/../pic.png) still escapes.
    relative, inside = items(log, image_root=tmp_path)
    assert relative.trace is None and inside.trace is not None


def test_remote_and_data_uri_images_are_passed_on_not_fetched(tmp_path: Path) -> None:
    uri = "data:image/png;base64,iVBORw0KGgo="
    log = write_jsonl(
        tmp_path / "c.jsonl",
        [
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {
                                "type": "image_url",
                                "image_url": {"url": "https://example.com/a.png"},
                            },
                            {"type": "image_url", "image_url": {"url": uri}},
                        ],
                    },
                    {"role": "assistant", "content": "x"},
                ]
            }
        ],
    )
    (item,) = items(log)
    assert item.trace is not None
    assert [i.kind for i in item.trace.images] == ["url", "data_uri"]
    assert item.images[0] == "https://example.com/a.png"
    assert "base64" not in json.dumps(item.images)  # never the bytes in the output


def test_sharegpt_array_with_placeholders(tmp_path: Path, png: Path) -> None:
    log = tmp_path / "sg.json"
    log.write_text(
        json.dumps(
            [
                {
                    "id": 7,
                    "image": png.name,
                    "conversations": [
                        {"from": "human", "value": "<image>\nwhat is it?"},
                        {"from": "gpt", "value": "<think>red</think>A red square."},
                    ],
                },
                {"conversations": [{"from": "alien", "value": "?"}]},
            ],
            indent=2,
        )
    )
    assert detect_format(log) == "sharegpt"
    first, second = items(log)
    assert first.id == "7" and first.trace is not None
    assert first.trace.query == "what is it?" and first.trace.thinking == "red"
    assert first.trace.response == "A red square." and len(first.trace.images) == 1
    assert second.trace is None and second.source.line == 16  # where its "{" is


def test_guardtrace_array_and_jsonl_carry_labels(tmp_path: Path, png: Path) -> None:
    rows = [
        {
            "image_name": png.name,
            "question": "q",
            "thinking": "t",
            "response": "r",
            "evaluation_result": 0.5,
        },
        {
            "image_name": "",
            "question": "q2",
            "thinking": None,
            "response": "r2",
            "evaluation_result": 1,
        },
    ]
    array = tmp_path / "gt.json"
    array.write_text(json.dumps(rows))
    lines = write_jsonl(tmp_path / "gt.jsonl", rows)
    for log in (array, lines):
        assert detect_format(log) == "guardtrace"
        a, b = items(log)
        assert (a.expected_risk, b.expected_risk) == (0.5, 1.0)
        assert a.trace is not None and a.trace.images and a.trace.thinking == "t"
        assert b.trace is not None and not b.trace.images and b.trace.thinking is None


def test_langchain_dump_from_real_messages_to_dict(tmp_path: Path) -> None:
    from langchain_core.messages import AIMessage, HumanMessage, ToolMessage, messages_to_dict

    conversation = [
        HumanMessage("weather?"),
        AIMessage("", tool_calls=[{"name": "weather", "args": {"city": "Oslo"}, "id": "1"}]),
        ToolMessage("rain", tool_call_id="1"),
        AIMessage("It rains.", additional_kwargs={"reasoning_content": "tool said rain"}),
    ]
    log = write_jsonl(tmp_path / "lc.jsonl", [messages_to_dict(conversation), {"not": "a list"}])
    assert detect_format(log) == "langchain"
    got = items(log)
    assert [i.id for i in got] == [f"{log}:1:1", f"{log}:1:3", f"{log}:2"]
    assert got[0].trace is not None and got[0].trace.tool_calls[0].name == "weather"
    assert got[1].trace is not None and got[1].trace.thinking == "tool said rain"
    assert got[1].trace.query == "weather?"
    assert got[2].trace is None


def _batch_files(tmp_path: Path, n: int) -> tuple[Path, Path]:
    requests = [
        {
            "custom_id": f"r{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": "m", "messages": [{"role": "user", "content": f"q{i}"}]},
        }
        for i in range(n)
    ]
    outputs: list[object] = []
    for i in range(n):
        if i == 1:
            outputs.append(
                {"custom_id": "r1", "response": None, "error": {"code": "x", "message": "boom"}}
            )
        elif i == 2:
            outputs.append(
                {
                    "custom_id": "r2",
                    "response": {"status_code": 429, "body": {"error": {"message": "slow down"}}},
                }
            )
        elif i == 3:
            continue  # no output at all
        else:
            message = {"role": "assistant", "reasoning_content": f"t{i}", "content": f"a{i}"}
            outputs.append(
                {
                    "custom_id": f"r{i}",
                    "response": {"status_code": 200, "body": {"choices": [{"message": message}]}},
                }
            )
    random.Random(4).shuffle(outputs)
    req = write_jsonl(tmp_path / "reqs.jsonl", requests)
    write_jsonl(tmp_path / "reqs.output.jsonl", [*outputs, "garbage line"])
    return req, tmp_path / "reqs.output.jsonl"


def test_openai_batch_joins_shuffled_outputs_and_reports_errors(tmp_path: Path) -> None:
    req, _ = _batch_files(tmp_path, 8)
    assert detect_format(req) == "openai-batch"
    got = items(req)
    assert [i.id for i in got] == [f"r{i}" for i in range(8)]
    for i in (0, 4, 5, 6, 7):
        trace = got[i].trace
        assert trace is not None
        assert (trace.query, trace.thinking, trace.response) == (f"q{i}", f"t{i}", f"a{i}")
    assert got[1].problem_status == "error" and "boom" in (got[1].problem or "").__str__()
    assert got[2].problem is not None and "429" in got[2].problem.message
    assert got[3].problem is not None and got[3].problem.type == "MissingBatchOutput"


def test_batch_output_must_be_found(tmp_path: Path) -> None:
    req = write_jsonl(
        tmp_path / "lonely.jsonl",
        [{"custom_id": "a", "body": {"messages": []}}],
    )
    with pytest.raises(ConfigurationError, match="--batch-output"):
        LogReader(req)


def test_undetectable_file_is_a_configuration_error(tmp_path: Path) -> None:
    log = write_jsonl(tmp_path / "x.jsonl", [{"foo": 1}])
    with pytest.raises(ConfigurationError, match="--format"):
        detect_format(log)


def test_image_ref_identity_of_paths_is_stable(tmp_path: Path, png: Path) -> None:
    log = write_jsonl(
        tmp_path / "c.jsonl",
        [
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "image_url", "image_url": {"url": png.name}}],
                    },
                    {"role": "assistant", "content": "x"},
                ]
            }
        ]
        * 2,
    )
    a, b = items(log)
    assert a.trace is not None and b.trace is not None
    assert a.trace.content_hash() == b.trace.content_hash()
    assert isinstance(a.trace.images[0], ImageRef)
