"""Results read and edited, now shared with the proxy (:mod:`traceguard._openai_result`)."""

from __future__ import annotations

from traceguard._openai_result import (
    REASONING_FIELDS,
    chat_traces,
    edit_chat,
    edit_message,
    edit_output,
    edit_response,
    output_trace,
    refusal_item,
    response_trace,
    responses_tool_calls,
)

__all__ = [
    "REASONING_FIELDS",
    "chat_traces",
    "edit_chat",
    "edit_message",
    "edit_output",
    "edit_response",
    "output_trace",
    "refusal_item",
    "response_trace",
    "responses_tool_calls",
]
