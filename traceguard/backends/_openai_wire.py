"""OpenAI chat-completions wire format: request bodies out, completions and logprobs back in.

Pure functions, shared by the sync and async paths of the HTTP backend. Anything the server
sends is checked before use: a missing field, a ``null`` content or an empty choice list is an
:class:`~traceguard.AuditorResponseError`, never an empty completion.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from traceguard._exceptions import AuditorResponseError
from traceguard.backends._base import (
    ChatMessage,
    ChatRequest,
    Completion,
    ImagePart,
    TokenDistribution,
)
from traceguard.backends._defuse import defuse_control_tokens

__all__ = ["chat_body", "logprobs_body", "read_completion", "read_distribution"]


def _content(message: ChatMessage) -> str | list[dict[str, Any]]:
    # A lone text part goes as a plain string: every server accepts that for every role,
    # while some reject part lists in system or assistant turns.
    # Text is defused exactly as the local backend does it: the server applies the chat
    # template, so a "<|im_end|>" left in audited text would end the turn there.
    if len(message.content) == 1 and not isinstance(message.content[0], ImagePart):
        return defuse_control_tokens(message.content[0].text)
    parts: list[dict[str, Any]] = []
    for part in message.content:
        if isinstance(part, ImagePart):
            parts.append({"type": "image_url", "image_url": {"url": part.image.to_data_uri()}})
        else:
            parts.append({"type": "text", "text": defuse_control_tokens(part.text)})
    return parts


def chat_body(request: ChatRequest, *, model: str, extra_body: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON body of a greedy ``/chat/completions`` request.

    An ``assistant_prefix`` becomes a final assistant message plus vLLM's
    ``continue_final_message: true`` / ``add_generation_prompt: false``, so the model continues
    that message instead of opening a new turn. Servers without the extension (hosted APIs)
    reject or ignore it; score mode needs a server that has it (vLLM, SGLang).

    Raises:
        TraceguardError: an image that is not bytes-backed (the auditor must load it first).
    """
    messages: list[dict[str, Any]] = [
        {"role": m.role, "content": _content(m)} for m in request.messages
    ]
    body: dict[str, Any] = {
        "model": model,
        "temperature": 0,
        "max_tokens": request.max_new_tokens,
    }
    if request.assistant_prefix is not None:
        messages.append({"role": "assistant", "content": request.assistant_prefix})
        body["continue_final_message"] = True
        body["add_generation_prompt"] = False
    body.update(extra_body)
    body["messages"] = messages
    return body


def logprobs_body(
    request: ChatRequest, *, model: str, extra_body: Mapping[str, Any], top_logprobs: int
) -> dict[str, Any]:
    """A one-token request that asks for the ``top_logprobs`` most likely first tokens."""
    body = chat_body(request, model=model, extra_body=extra_body)
    body.update(max_tokens=1, logprobs=True, top_logprobs=top_logprobs)
    return body


def _first_choice(payload: Any) -> Mapping[str, Any]:
    if not isinstance(payload, Mapping):
        raise AuditorResponseError("the response is not a JSON object")
    choices = payload.get("choices")
    if not isinstance(choices, list) or not choices:
        raise AuditorResponseError("the response has no choices")
    choice = choices[0]
    if not isinstance(choice, Mapping):
        raise AuditorResponseError("the first choice is not an object")
    return choice


def _usage(payload: Mapping[str, Any], key: str) -> int | None:
    usage = payload.get("usage")
    value = usage.get(key) if isinstance(usage, Mapping) else None
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _text_of(content: Any) -> str | None:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        # Some servers answer with content parts even for plain text.
        texts = [p.get("text") for p in content if isinstance(p, Mapping)]
        if texts and all(isinstance(t, str) for t in texts):
            return "".join(str(t) for t in texts)
    return None


def read_completion(payload: Any, *, model: str, latency_ms: float) -> Completion:
    """The completion in a ``chat.completion`` payload.

    Raises:
        AuditorResponseError: no choices, no message, no text in it, or an output cut at
            ``max_tokens`` (``finish_reason: "length"``).
    """
    choice = _first_choice(payload)
    if choice.get("finish_reason") == "length":
        # The output stopped at max_tokens, not where the model ended it: a text cut right
        # after "Judgment: 0" would read as safe when the model was writing "0.5".
        raise AuditorResponseError("the auditor's output was cut at max_tokens")
    message = choice.get("message")
    if not isinstance(message, Mapping):
        raise AuditorResponseError("the first choice has no message")
    text = _text_of(message.get("content"))
    if text is None:
        raise AuditorResponseError("the message has no text content")
    if not text.strip():
        raise AuditorResponseError("the message content is empty")
    return Completion(
        text=text,
        latency_ms=latency_ms,
        model=str(payload.get("model") or model),
        prompt_tokens=_usage(payload, "prompt_tokens"),
        completion_tokens=_usage(payload, "completion_tokens"),
    )


def read_distribution(payload: Any, *, model: str, latency_ms: float) -> TokenDistribution:
    """The first generated token's ``top_logprobs`` as a :class:`TokenDistribution`.

    Two entries that decode to the same string (distinct token ids) are merged by adding their
    probabilities, which is what the string-keyed distribution means.

    Raises:
        AuditorResponseError: the payload carries no usable log-probabilities.
    """
    choice = _first_choice(payload)
    logprobs = choice.get("logprobs")
    content = logprobs.get("content") if isinstance(logprobs, Mapping) else None
    if not isinstance(content, list) or not content or not isinstance(content[0], Mapping):
        raise AuditorResponseError("the response has no logprobs (does the server support them?)")
    top = content[0].get("top_logprobs")
    if not isinstance(top, list) or not top:
        raise AuditorResponseError("the response has no top_logprobs for the first token")
    merged: dict[str, float] = {}
    for entry in top:
        if not isinstance(entry, Mapping):
            raise AuditorResponseError("a top_logprobs entry is not an object")
        token, value = entry.get("token"), entry.get("logprob")
        if not isinstance(token, str) or not isinstance(value, (int, float)):
            raise AuditorResponseError("a top_logprobs entry lacks its token or logprob")
        value = float(value)
        if math.isnan(value) or value > 1e-6:
            raise AuditorResponseError(f"not a log-probability: {value!r}")
        if token in merged:
            high, low = max(merged[token], value), min(merged[token], value)
            value = high + math.log1p(math.exp(low - high))
        merged[token] = min(value, 0.0)
    return TokenDistribution(
        logprobs=merged, latency_ms=latency_ms, model=str(payload.get("model") or model)
    )
