"""LangChain integration: agent middleware, a callback handler, and a guarded model.

::

    from traceguard import Guard
    from traceguard.integrations.langchain import (
        TraceguardCallbackHandler,
        TraceguardMiddleware,
        guard_runnable,
    )

    guard = Guard(auditor)

    # langchain 1.x agents: audit every model turn and tool call inside the loop, and act there
    # (rewrite the turn, give the model a tool message, end the run, pause for a reviewer).
    agent = create_agent(model, tools, middleware=[TraceguardMiddleware(guard)])

    # Observe and stop: every model call of a chain or agent loop is audited at its end, every
    # tool call before it runs.
    handler = TraceguardCallbackHandler(guard)
    chain.invoke({...}, config={"callbacks": [handler]})  # raises Blocked

    # Observe, stop and redact one model: the wrapped model returns what the policy allows.
    guarded = guard_runnable(ChatOpenAI(...), guard)
    reply = (prompt | guarded).invoke({...})

What is audited for each model run: the query (the last human message) and its images
(``image_url`` parts with data URIs or URLs, langchain-core 1.x ``image`` blocks with ``base64``
or ``url``, Anthropic ``source`` blocks), the earlier messages as history (earlier model turns
with their tool calls, tool results), and the answer: thinking from
``additional_kwargs["reasoning_content"]`` / ``["reasoning"]``, ``reasoning`` / ``thinking``
content blocks or ``<think>`` tags; the response text; the tool calls. Every guarded message
carries its decision in ``response_metadata["traceguard"]`` (no audited text in it).

Callbacks can stop a run but never change its output, so :class:`TraceguardCallbackHandler`
raises :class:`~traceguard.Blocked` on block (and by default on a redaction it cannot apply), and
on a held-back tool call (it cannot hand the model a tool message instead);
:class:`TraceguardMiddleware` and :class:`GuardedChatModel` (from :func:`guard_runnable`) return
the redacted message.

``ChatOpenAI`` (Chat Completions) drops the ``reasoning_content`` / ``reasoning`` fields that
DeepSeek, vLLM and OpenRouter send, so no LangChain hook sees any thinking from it: the trace has
``thinking=None`` and only the response is audited; when the usage reports reasoning tokens, one
warning per model says so. To audit the reasoning, use :class:`ReasoningChatOpenAI` in its place
(``ChatOpenAI`` keeping those fields in ``additional_kwargs["reasoning_content"]``), a provider
package that keeps them (``langchain-deepseek``'s ``ChatDeepSeek``, the Ollama, Groq and xAI
packages), ``<think>`` tags in the content (e.g. vLLM without ``--reasoning-parser``), or the
Responses API (``ChatOpenAI(use_responses_api=True)``), whose reasoning summaries arrive as
``reasoning`` blocks.

:class:`TraceguardMiddleware` needs ``langchain`` (1.x) and ``langgraph``:
``pip install 'traceguard-vl[agents]'``; :class:`ReasoningChatOpenAI` needs ``langchain-openai``
(``traceguard-vl[langchain-openai]``); the handler and the guarded model need only
``langchain-core``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from traceguard._version import install_hint

try:
    import langchain_core  # noqa: F401  (fail here, with the hint, before the helpers import it)
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        f"traceguard.integrations.langchain needs langchain-core: {install_hint('langchain')}"
    ) from exc

from ._langchain_callbacks import (
    AsyncTraceguardCallbackHandler,
    OnRedact,
    TraceguardCallbackHandler,
)
from ._langchain_runnable import GuardedChatModel, StreamMode, guard_runnable

if TYPE_CHECKING:
    from ._langchain_middleware import TraceguardMiddleware, TraceguardState
    from ._langchain_openai_reasoning import ReasoningChatOpenAI

__all__ = [
    "AsyncTraceguardCallbackHandler",
    "GuardedChatModel",
    "OnRedact",
    "ReasoningChatOpenAI",
    "StreamMode",
    "TraceguardCallbackHandler",
    "TraceguardMiddleware",
    "TraceguardState",
    "guard_runnable",
]

_AGENT_NAMES = frozenset({"TraceguardMiddleware", "TraceguardState"})


def __getattr__(name: str) -> Any:
    # The middleware needs langchain and langgraph, and ReasoningChatOpenAI langchain-openai,
    # which the handler and the guarded model do not: import them on first use, with the install
    # hint when they are missing.
    if name == "ReasoningChatOpenAI":
        try:
            from . import _langchain_openai_reasoning
        except ImportError as exc:
            raise ImportError(
                f"ReasoningChatOpenAI needs langchain-openai: {install_hint('langchain-openai')} "
                f"({exc})"
            ) from exc
        return _langchain_openai_reasoning.ReasoningChatOpenAI
    if name not in _AGENT_NAMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    try:
        from . import _langchain_middleware
    except ImportError as exc:
        raise ImportError(
            f"TraceguardMiddleware needs langchain 1.x and langgraph: {install_hint('agents')} "
            f"({exc})"
        ) from exc
    return getattr(_langchain_middleware, name)
