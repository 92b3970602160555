"""The conversation parser's rules: paths, strictness, unseen media, the query split."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage

from traceguard import ImageAccess, ImageError
from traceguard._chat import Message, chat_message, content_parts, split_last_user
from traceguard.audit import LogReader
from traceguard.integrations._langchain_messages import output_of, request_context
from traceguard.integrations._openai_request import (
    chat_request_context,
    responses_request_context,
)

LOCAL = ["/etc/hostname", "cat.png", "file:///etc/hostname", "../secrets/key.png"]


def _offline(tmp_path: Path, content: Any) -> Any:
    log = tmp_path / "log.jsonl"
    messages = [{"role": "user", "content": content}, {"role": "assistant", "content": "ok"}]
    log.write_text(json.dumps({"messages": messages}) + "\n")
    (item,) = LogReader(log, "openai", image_root=tmp_path).items()
    return item


@pytest.mark.parametrize("reference", LOCAL)
def test_request_content_never_names_a_local_path(reference: str, tmp_path: Path) -> None:
    (tmp_path / "cat.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 16)
    parts = [
        {"type": "image_url", "image_url": {"url": reference}},
        {"type": "input_image", "image_url": reference},
        {"type": "image", "url": reference},
        {"type": "image", "image": reference},
        {"type": "image", "source_type": "url", "url": reference},
        {"type": "image", "source": {"type": "url", "url": reference}},
    ]
    openai_chat = chat_request_context({"messages": [{"role": "user", "content": parts}]})
    responses = responses_request_context({"input": [{"role": "user", "content": parts}]})
    langchain = request_context([HumanMessage(content=parts)])  # type: ignore[arg-type]
    for context in (openai_chat, responses, langchain):
        assert [image.kind for image in context.images] == ["url"] * len(parts)
        # Even an auditor allowed to read any path refuses them: they are URLs, not files.
        access = ImageAccess(root=tmp_path, allow_any_path=True)
        for image in context.images:
            with pytest.raises(ImageError):
                image.load(access)


def test_offline_logs_resolve_paths_under_their_root(tmp_path: Path) -> None:
    (tmp_path / "cat.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 16)
    item = _offline(tmp_path, [{"type": "image", "source_type": "url", "url": "cat.png"}])
    assert item.trace is not None
    assert [image.identity() for image in item.trace.images] == [f"path:{tmp_path / 'cat.png'}"]
    escaped = _offline(tmp_path, [{"type": "image_url", "image_url": {"url": "/etc/hostname"}}])
    assert escaped.trace is None and "outside the image root" in escaped.problem.message


UNSEEN = [
    ({"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}, "[input_audio]"),
    ({"type": "file", "file": {"file_id": "file-1"}}, "[file file-1]"),
    ({"type": "input_file", "file_id": "file-2"}, "[input_file file-2]"),
    ({"type": "input_image", "file_id": "file-3"}, "[image file file-3]"),
    ({"type": "image", "source": {"type": "file", "file_id": "file-4"}}, "[image file file-4]"),
    ({"type": "image", "source_type": "id", "id": "file-5"}, "[image file file-5]"),
    ({"type": "image", "file_id": "file-6"}, "[image file file-6]"),
]


@pytest.mark.parametrize(("part", "shown"), UNSEEN, ids=[p["type"] for p, _ in UNSEEN])
def test_media_the_auditor_cannot_see_is_named_on_every_path(
    part: dict[str, Any], shown: str, tmp_path: Path
) -> None:
    content = [{"type": "text", "text": "look"}, part]
    offline = _offline(tmp_path, content)
    assert offline.trace is not None and offline.trace.query == f"look\n{shown}"
    live = chat_request_context({"messages": [{"role": "user", "content": content}]})
    assert live.query == f"look\n{shown}" and live.images == ()


@pytest.mark.parametrize(
    ("part", "problem"),
    [
        ({"type": "hologram", "data": "…"}, "unsupported content part type 'hologram'"),
        ({"type": "image_url"}, "names no image"),
        ({"type": "text", "text": ["not", "a", "string"]}, "text must be a string"),
        (42, "not int"),
    ],
)
def test_offline_refuses_what_live_names(part: Any, problem: str, tmp_path: Path) -> None:
    item = _offline(tmp_path, [{"type": "text", "text": "hi"}, part])
    assert item.trace is None and problem in item.problem.message
    live = chat_request_context({"messages": [{"role": "user", "content": ["hi", part]}]})
    assert live.query.startswith("hi\n[") and live.query.endswith("]")


def test_the_last_user_message_is_the_query_in_a_tool_loop() -> None:
    messages = [
        Message("system", "rules"),
        Message("user", "first"),
        Message("assistant", "sure"),
        Message("user", "weather in Oslo?"),
        chat_message(
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "w", "arguments": "{}"}}
                ],
            },
            strict=True,
        ),
        Message("tool", "rain"),
    ]
    context = split_last_user(messages, model="m", metadata={"integration": "test"})
    assert context.query == "weather in Oslo?"
    assert [(t.role, t.content) for t in context.history] == [
        ("system", "rules"),
        ("user", "first"),
        ("assistant", "sure"),
        ("assistant", "[tool call] w({})"),
        ("tool", "rain"),
    ]
    nobody_asked = split_last_user([Message("system", "rules")])
    assert nobody_asked.query == "" and len(nobody_asked.history) == 1


def test_a_langchain_call_kept_twice_is_audited_once() -> None:
    use = {"type": "tool_use", "id": "c1", "name": "search", "input": {"q": "x"}}
    message = AIMessage(
        content=[{"type": "text", "text": "Searching."}, use],
        tool_calls=[{"name": "search", "args": {"q": "x"}, "id": "c1"}],
        invalid_tool_calls=[{"name": "broken", "args": "{oops", "id": "c2", "error": None}],
    )
    _, response, calls = output_of(message)
    assert response == "Searching."
    assert [(c.name, c.arguments, c.id) for c in calls] == [
        ("search", '{"q": "x"}', "c1"),
        ("broken", "{oops", "c2"),
    ]
    history = request_context([HumanMessage("q"), message, ToolMessage("r", tool_call_id="c1")])
    assert history.history[0].content.count("[tool call] search") == 1


def test_content_parts_keeps_text_order_and_skips_reasoning() -> None:
    content = content_parts(
        [
            "a",
            {"type": "thinking", "thinking": "secret plan"},
            {"type": "input_text", "text": "b"},
            {"type": "refusal", "refusal": "c"},
            {"type": "tool_result", "tool_use_id": "t", "content": [{"type": "text", "text": "d"}]},
        ],
        strict=True,
    )
    assert content.text == "a\nb\nc\nd"
