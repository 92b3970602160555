"""What the caller asked: the query, images and history of an OpenAI request, as plain data.

Chat Completions ``messages`` and Responses ``instructions``/``input`` both reduce to a
:class:`~traceguard._chat.RequestContext` through :mod:`traceguard._chat`, the parser every
path shares. Nothing here does I/O: image URLs become :class:`~traceguard.ImageRef` values that
the auditor loads (or refuses) under its own :class:`~traceguard.ImageAccess`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from traceguard._chat import RequestContext, chat_message, responses_input, split_last_user
from traceguard._openai_result import output_trace

__all__ = [
    "RequestContext",
    "chat_request_context",
    "output_trace",
    "responses_request_context",
]


def _model_name(kwargs: Mapping[str, Any]) -> str | None:
    model = kwargs.get("model")
    return model if isinstance(model, str) else None


def chat_request_context(kwargs: Mapping[str, Any]) -> RequestContext:
    """The context of a ``chat.completions.create(**kwargs)`` call."""
    messages = [chat_message(raw, strict=False) for raw in kwargs.get("messages") or ()]
    return split_last_user(
        messages,
        model=_model_name(kwargs),
        metadata={"integration": "openai", "api": "chat.completions"},
    )


def responses_request_context(kwargs: Mapping[str, Any]) -> RequestContext:
    """The context of a ``responses.create(**kwargs)`` call."""
    messages = responses_input(kwargs.get("input"), instructions=kwargs.get("instructions"))
    return split_last_user(
        messages, model=_model_name(kwargs), metadata={"integration": "openai", "api": "responses"}
    )
