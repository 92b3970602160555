"""LangChain integration: a callback handler that can stop a run, a guarded model that can redact.

::

    from traceguard import Guard
    from traceguard.integrations.langchain import TraceguardCallbackHandler, guard_runnable

    guard = Guard(auditor)

    # Observe and stop: every model call of a chain or agent loop is audited at its end.
    handler = TraceguardCallbackHandler(guard)
    agent.invoke({"messages": [...]}, config={"callbacks": [handler]})  # raises Blocked

    # Observe, stop and redact: the wrapped model returns what the policy allows.
    guarded = guard_runnable(ChatOpenAI(...), guard)
    reply = (prompt | guarded).invoke({...})

What is audited for each model run: the query (the last human message) and its images
(``image_url`` parts with data URIs or URLs, langchain-core 1.x ``image`` blocks with ``base64``
or ``url``, Anthropic ``source`` blocks), the earlier messages as history (earlier model turns
with their tool calls, tool results), and the answer: thinking from
``additional_kwargs["reasoning_content"]`` / ``["reasoning"]``, ``reasoning`` / ``thinking``
content blocks or ``<think>`` tags; the response text; the tool calls.

Callbacks can stop a run but never change its output, so :class:`TraceguardCallbackHandler`
raises :class:`~traceguard.Blocked` on block (and by default on a redaction it cannot apply);
:class:`GuardedChatModel` (from :func:`guard_runnable`) returns the redacted message.

``ChatOpenAI`` (Chat Completions) drops the ``reasoning_content`` / ``reasoning`` fields that
DeepSeek, vLLM and OpenRouter send, so neither the handler nor the guarded model sees any thinking
from it: the trace has ``thinking=None`` and only the response is audited. To audit the reasoning,
use a provider package that keeps it (``langchain-deepseek``'s ``ChatDeepSeek`` and the Ollama,
Groq and xAI packages put it in ``additional_kwargs["reasoning_content"]``), keep ``<think>`` tags
in the content (e.g. vLLM without ``--reasoning-parser``), or use the Responses API
(``ChatOpenAI(use_responses_api=True)``), whose reasoning summaries arrive as ``reasoning`` blocks.
"""

from __future__ import annotations

try:
    import langchain_core  # noqa: F401  (fail here, with the hint, before the helpers import it)
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "traceguard.integrations.langchain needs langchain-core: "
        "pip install 'traceguard-vl[langchain]'"
    ) from exc

from ._langchain_callbacks import (
    AsyncTraceguardCallbackHandler,
    OnRedact,
    TraceguardCallbackHandler,
)
from ._langchain_runnable import GuardedChatModel, StreamMode, guard_runnable

__all__ = [
    "AsyncTraceguardCallbackHandler",
    "GuardedChatModel",
    "OnRedact",
    "StreamMode",
    "TraceguardCallbackHandler",
    "guard_runnable",
]
