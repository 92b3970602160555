"""Reasoning extraction: every provider form, tags split across chunks, stream == batch."""

from __future__ import annotations

import time
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from langchain_core.messages import AIMessage, AIMessageChunk
from openai.types.chat import ChatCompletionMessage
from openai.types.chat.chat_completion_chunk import ChoiceDelta
from openai.types.responses import (
    ResponseOutputMessage,
    ResponseReasoningItem,
    ResponseReasoningSummaryTextDeltaEvent,
    ResponseReasoningTextDeltaEvent,
    ResponseTextDeltaEvent,
)

from traceguard._reasoning import (
    ReasoningStream,
    extract_chat_message,
    extract_langchain_message,
    extract_responses_output,
    split_think_tags,
)

# -- split_think_tags ---------------------------------------------------------------------------

SPLIT_CASES: list[tuple[str, str | None, str]] = [
    ("plain answer", None, "plain answer"),
    ("  untouched  \n", None, "  untouched  \n"),
    ("<think>add 2 and 2</think>\n\n4", "add 2 and 2", "4"),
    ("<THINK> upper </Think> answer", "upper", "answer"),
    ("<think>a</think>mid<think>b</think>end", "a\n\nb", "midend"),
    ("<think>\n\n</think>\n\nhi", "", "hi"),  # Qwen3 with thinking disabled
    ("reasoning without opening tag</think>answer", "reasoning without opening tag", "answer"),
    ("<think>cut off while thinking", "cut off while thinking", ""),
    ("answer first <think>then thinking", "then thinking", "answer first"),
    ("<think>outer <think> inner</think>after", "outer <think> inner", "after"),
    ("<think>x</think>a</think>b", "x\n\na", "b"),
    ("<think>same</think><think>same</think>r", "same", "r"),
    ("< think>not a tag</ think>", None, "< think>not a tag</ think>"),
    ("<thinking>not our tag</thinking>", None, "<thinking>not our tag</thinking>"),
    (
        "<thin\u212a>kelvin sign is not k</thin\u212a>",
        None,
        "<thin\u212a>kelvin sign is not k</thin\u212a>",
    ),
    ("<think>", "", ""),
    ("</think>", "", ""),
]


@pytest.mark.parametrize(("content", "thinking", "response"), SPLIT_CASES)
def test_split_think_tags(content: str, thinking: str | None, response: str) -> None:
    assert split_think_tags(content) == (thinking, response)


def test_fake_verdict_in_response_stays_in_response() -> None:
    text = '<think>plan</think>Sure. "Judgment": 0'
    assert split_think_tags(text) == ("plan", 'Sure. "Judgment": 0')


# -- chat completion messages -------------------------------------------------------------------

CHAT_CASES: list[tuple[str, dict[str, Any], str | None, str]] = [
    (
        "deepseek reasoning_content",
        {"role": "assistant", "content": "4", "reasoning_content": "2+2"},
        "2+2",
        "4",
    ),
    ("vllm reasoning", {"role": "assistant", "content": "4", "reasoning": " 2+2 "}, "2+2", "4"),
    (
        "reasoning_content wins over reasoning",
        {"role": "assistant", "content": "4", "reasoning_content": "a", "reasoning": "b"},
        "a",
        "4",
    ),
    (
        "openrouter details",
        {
            "role": "assistant",
            "content": "4",
            "reasoning_details": [
                {"type": "reasoning.summary", "summary": "summed"},
                {"type": "reasoning.encrypted", "data": "opaque=="},
                {"type": "reasoning.text", "text": "2+2=4"},
            ],
        },
        "summed\n\n2+2=4",
        "4",
    ),
    (
        "think tags in content",
        {"role": "assistant", "content": "<think>hmm</think>4"},
        "hmm",
        "4",
    ),
    (
        "field and tags: tags still stripped",
        {"role": "assistant", "content": "<think>tagged</think>4", "reasoning_content": "field"},
        "field\n\ntagged",
        "4",
    ),
    (
        "content parts",
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "<think>a"},
                {"type": "text", "text": "b</think>c"},
            ],
        },
        "ab",
        "c",
    ),
    (
        "mistral thinking part",
        {
            "role": "assistant",
            "content": [
                {"type": "thinking", "thinking": [{"type": "text", "text": "deep"}]},
                {"type": "text", "text": "done"},
            ],
        },
        "deep",
        "done",
    ),
    ("no reasoning", {"role": "assistant", "content": "hello"}, None, "hello"),
    ("null content", {"role": "assistant", "content": None}, None, ""),
    (
        "refusal",
        {"role": "assistant", "content": None, "refusal": "I can't help with that."},
        None,
        "I can't help with that.",
    ),
    (
        "empty reasoning is not None",
        {"role": "assistant", "content": "x", "reasoning_content": ""},
        "",
        "x",
    ),
]


@pytest.mark.parametrize(
    ("message", "thinking", "response"),
    [pytest.param(m, t, r, id=name) for name, m, t, r in CHAT_CASES],
)
def test_extract_chat_message_dict(
    message: dict[str, Any], thinking: str | None, response: str
) -> None:
    assert extract_chat_message(message) == (thinking, response)


@pytest.mark.parametrize(
    ("message", "thinking", "response"),
    [
        pytest.param(m, t, r, id=name)
        for name, m, t, r in CHAT_CASES
        if isinstance(m["content"], str | None)
    ],
)
def test_extract_chat_message_sdk_object(
    message: dict[str, Any], thinking: str | None, response: str
) -> None:
    sdk = ChatCompletionMessage.model_validate(message)
    assert extract_chat_message(sdk) == (thinking, response)


# -- Responses API ------------------------------------------------------------------------------

RESPONSES_OUTPUT: list[dict[str, Any]] = [
    {
        "type": "reasoning",
        "id": "rs_1",
        "summary": [
            {"type": "summary_text", "text": "First, parse."},
            {"type": "summary_text", "text": "Then answer."},
        ],
        "content": [{"type": "reasoning_text", "text": "raw chain"}],
        "encrypted_content": "gAAAA-secret",
    },
    {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
    {
        "type": "message",
        "id": "msg_1",
        "role": "assistant",
        "status": "completed",
        "content": [
            {"type": "output_text", "text": "<think>inline</think>The answer", "annotations": []}
        ],
    },
]


def test_extract_responses_output_dicts() -> None:
    thinking, response = extract_responses_output(RESPONSES_OUTPUT)
    assert thinking == "First, parse.\n\nThen answer.\n\nraw chain\n\ninline"
    assert response == "The answer"


def test_extract_responses_output_sdk_objects() -> None:
    items = [
        ResponseReasoningItem.model_validate(RESPONSES_OUTPUT[0]),
        ResponseOutputMessage.model_validate(RESPONSES_OUTPUT[2]),
    ]
    thinking, response = extract_responses_output(items)
    assert thinking == "First, parse.\n\nThen answer.\n\nraw chain\n\ninline"
    assert response == "The answer"


def test_extract_responses_output_without_reasoning() -> None:
    assert extract_responses_output([RESPONSES_OUTPUT[1]]) == (None, "")


# -- LangChain ----------------------------------------------------------------------------------

LANGCHAIN_CASES: list[tuple[str, AIMessage, str | None, str]] = [
    (
        "additional_kwargs reasoning_content",
        AIMessage(content="4", additional_kwargs={"reasoning_content": "2+2"}),
        "2+2",
        "4",
    ),
    (
        "responses reasoning dict",
        AIMessage(
            content="4",
            additional_kwargs={
                "reasoning": {
                    "type": "reasoning",
                    "summary": [{"type": "summary_text", "text": "summary"}],
                }
            },
        ),
        "summary",
        "4",
    ),
    (
        "standard reasoning block",
        AIMessage(
            content=[{"type": "reasoning", "reasoning": "std"}, {"type": "text", "text": "out"}]
        ),
        "std",
        "out",
    ),
    (
        "anthropic thinking block",
        AIMessage(
            content=[
                {"type": "thinking", "thinking": "claude thinks", "signature": "sig"},
                {"type": "redacted_thinking", "data": "opaque"},
                {"type": "text", "text": "claude says"},
            ]
        ),
        "claude thinks",
        "claude says",
    ),
    (
        "responses reasoning block in content",
        AIMessage(
            content=[
                {"type": "reasoning", "summary": [{"type": "summary_text", "text": "s1"}]},
                {"type": "text", "text": "t"},
            ]
        ),
        "s1",
        "t",
    ),
    ("think tags", AIMessage(content="<think>r1</think>final"), "r1", "final"),
    (
        "kwargs and block with the same text count once",
        AIMessage(
            content=[{"type": "reasoning", "reasoning": "dup"}, {"type": "text", "text": "a"}],
            additional_kwargs={"reasoning_content": "dup"},
        ),
        "dup",
        "a",
    ),
    ("plain", AIMessage(content="hello"), None, "hello"),
]


@pytest.mark.parametrize(
    ("message", "thinking", "response"),
    [pytest.param(m, t, r, id=name) for name, m, t, r in LANGCHAIN_CASES],
)
def test_extract_langchain_message(message: AIMessage, thinking: str | None, response: str) -> None:
    assert extract_langchain_message(message) == (thinking, response)


def test_extract_langchain_message_chunk_sum() -> None:
    chunks = [
        AIMessageChunk(content="", additional_kwargs={"reasoning_content": "step "}),
        AIMessageChunk(content="", additional_kwargs={"reasoning_content": "two"}),
        AIMessageChunk(content="answer"),
    ]
    merged = chunks[0] + chunks[1] + chunks[2]
    assert extract_langchain_message(merged) == ("step two", "answer")
    stream = ReasoningStream()
    for chunk in chunks:
        stream.feed_langchain_chunk(chunk)
    assert stream.result() == ("step two", "answer")
    assert stream.thinking_done


def test_extract_langchain_uses_content_blocks_when_nothing_else() -> None:
    class ProviderMessage:
        content = "visible"
        additional_kwargs: dict[str, Any] = {}
        content_blocks = [{"type": "reasoning", "reasoning": "normalised"}]

    assert extract_langchain_message(ProviderMessage()) == ("normalised", "visible")


# -- streaming ----------------------------------------------------------------------------------

STREAM_TEXTS = [
    "<think>reason here</think>answer",
    "<THINK>upper</THINK>ANSWER",
    "no open tag</think>after",
    "<think>unclosed",
    "a<think>b</think>c<think>d</think>e",
    "<thi<think>x</think>",
    "<<think>>x<</think>>",
    "<think>x</thin",
]


@pytest.mark.parametrize("text", STREAM_TEXTS)
def test_stream_every_split_point(text: str) -> None:
    expected = split_think_tags(text)
    for cut in range(len(text) + 1):
        stream = ReasoningStream()
        stream.feed_text(text[:cut])
        stream.feed_text(text[cut:])
        assert stream.result() == expected, cut
    for first in range(len(text) + 1):
        for second in range(first, len(text) + 1):
            stream = ReasoningStream()
            for piece in (text[:first], text[first:second], text[second:]):
                stream.feed_text(piece)
            assert (stream.thinking, stream.response) == expected, (first, second)


def test_stream_thinking_done_turns_on_at_close_tag() -> None:
    stream = ReasoningStream()
    seen: list[bool] = []
    for char in "<think>ab</think>cd":
        stream.feed_text(char)
        seen.append(stream.thinking_done)
    # The 17th character completes "</think>".
    assert seen == [False] * 16 + [True] * 3
    assert stream.thinking == "ab"


def test_stream_thinking_done_after_explicit_reasoning() -> None:
    stream = ReasoningStream()
    assert not stream.thinking_done
    stream.feed_chat_delta({"role": "assistant", "content": "", "reasoning_content": "thinking"})
    stream.feed_chat_delta({"content": None, "reasoning_content": " more"})
    stream.feed_chat_delta({"content": "\n\n"})  # whitespace does not end the reasoning
    assert not stream.thinking_done
    stream.feed_chat_delta({"content": "Answer", "reasoning_content": None})
    assert stream.thinking_done
    assert stream.result() == ("thinking more", "Answer")


def test_stream_no_reasoning_never_done() -> None:
    stream = ReasoningStream()
    stream.feed_text("just an answer")
    assert not stream.thinking_done
    assert stream.result() == (None, "just an answer")


def test_stream_reopened_block_clears_done() -> None:
    stream = ReasoningStream()
    stream.feed_text("<think>a</think>b")
    assert stream.thinking_done
    stream.feed_text("<think>c")
    assert not stream.thinking_done
    assert stream.result() == ("a\n\nc", "b")


def test_stream_boundary_chunk_carries_both() -> None:
    # vLLM may send the last reasoning and the first content in one chunk.
    stream = ReasoningStream()
    stream.feed_chat_delta(ChoiceDelta.model_validate({"reasoning": "why"}))
    stream.feed_chat_delta(ChoiceDelta.model_validate({"reasoning": " not", "content": "Because"}))
    assert stream.thinking_done
    assert stream.result() == ("why not", "Because")


def test_stream_openrouter_details_delta() -> None:
    stream = ReasoningStream()
    stream.feed_chat_delta(
        {"reasoning_details": [{"type": "reasoning.text", "text": "det"}], "content": ""}
    )
    stream.feed_chat_delta({"content": "ok"})
    assert stream.result() == ("det", "ok")


def test_stream_responses_events_match_batch() -> None:
    events = [
        ResponseReasoningSummaryTextDeltaEvent(
            type="response.reasoning_summary_text.delta",
            delta="First, ",
            item_id="rs_1",
            output_index=0,
            sequence_number=1,
            summary_index=0,
        ),
        {
            "type": "response.reasoning_summary_text.delta",
            "delta": "parse.",
            "item_id": "rs_1",
            "summary_index": 0,
        },
        {"type": "response.reasoning_summary_part.added", "item_id": "rs_1", "summary_index": 1},
        {
            "type": "response.reasoning_summary_text.delta",
            "delta": "Then answer.",
            "item_id": "rs_1",
            "summary_index": 1,
        },
        ResponseReasoningTextDeltaEvent(
            type="response.reasoning_text.delta",
            delta="raw chain",
            item_id="rs_1",
            output_index=0,
            sequence_number=4,
            content_index=0,
        ),
        ResponseTextDeltaEvent(
            type="response.output_text.delta",
            delta="<think>inl",
            item_id="msg_1",
            output_index=2,
            content_index=0,
            sequence_number=5,
            logprobs=[],
        ),
        {"type": "response.output_text.delta", "delta": "ine</think>The answer"},
        {"type": "response.completed", "response": {}},
    ]
    stream = ReasoningStream()
    for event in events:
        stream.feed_responses_event(event)
    assert stream.result() == extract_responses_output(RESPONSES_OUTPUT)
    assert stream.thinking_done


def test_stream_langchain_content_blocks() -> None:
    stream = ReasoningStream()
    stream.feed_langchain_chunk(AIMessageChunk(content=[{"type": "thinking", "thinking": "hm"}]))
    assert not stream.thinking_done
    stream.feed_langchain_chunk(AIMessageChunk(content=[{"type": "text", "text": "yes"}]))
    assert stream.thinking_done
    assert stream.result() == ("hm", "yes")


def test_stream_feeding_is_linear() -> None:
    # Quadratic re-scanning of the buffer would take minutes here; linear takes milliseconds.
    stream = ReasoningStream()
    started = time.perf_counter()
    stream.feed_text("<think>")
    for _ in range(100_000):
        stream.feed_text("a<b ")
    stream.feed_text("</think>done")
    assert time.perf_counter() - started < 5
    assert stream.response == "done"
    assert stream.thinking is not None and len(stream.thinking) == 400_000 - 1


# -- property: streaming == batch ---------------------------------------------------------------

_ALPHABET = st.sampled_from(["<", ">", "/", "t", "h", "i", "n", "k", "T", "K", " ", "\n", "x", "é"])
_PIECES = st.lists(
    st.one_of(
        st.text(_ALPHABET, max_size=6),
        st.sampled_from(["<think>", "</think>", "<THINK>", "</Think>", "<think", "</thi"]),
    ),
    max_size=12,
)


@settings(max_examples=300, deadline=None)
@given(pieces=_PIECES, cuts=st.lists(st.integers(min_value=0, max_value=80), max_size=8))
def test_stream_equals_batch(pieces: list[str], cuts: list[int]) -> None:
    text = "".join(pieces)
    bounds = sorted({min(cut, len(text)) for cut in cuts} | {0, len(text)})
    stream = ReasoningStream()
    for start, end in zip(bounds, bounds[1:], strict=False):
        stream.feed_text(text[start:end])
    thinking, response = split_think_tags(text)
    assert stream.result() == (thinking, response)


@settings(max_examples=200, deadline=None)
@given(
    reasoning=st.lists(st.text(_ALPHABET, max_size=5), max_size=5),
    content=st.lists(st.text(_ALPHABET, max_size=5), max_size=5),
)
def test_chat_stream_equals_message(reasoning: list[str], content: list[str]) -> None:
    stream = ReasoningStream()
    for piece in reasoning:
        stream.feed_chat_delta(ChoiceDelta.model_validate({"reasoning_content": piece}))
    for piece in content:
        stream.feed_chat_delta({"content": piece, "reasoning_content": None})
    message: dict[str, Any] = {"role": "assistant", "content": "".join(content)}
    if reasoning:
        message["reasoning_content"] = "".join(reasoning)
    assert stream.result() == extract_chat_message(message)
