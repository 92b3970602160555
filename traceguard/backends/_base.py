"""The backend interface: chat requests to a vision-language model, text (or token scores) back.

Backends know nothing about prompts, verdicts or policies. An auditor (GuardTrace, LlavaGuard,
...) renders a trace into :class:`ChatRequest` objects, hands them to a backend, and parses what
comes back. The same backend thus serves every auditor that speaks chat.

Failures are returned as values, not raised, so one bad item never sinks a batch: each result is
either a :class:`Completion` / :class:`TokenDistribution` or an :class:`~traceguard.AuditorError`.
"""

from __future__ import annotations

import abc
import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Literal, TypeAlias, TypeVar

from traceguard._exceptions import AuditorError
from traceguard._images import ImageRef

__all__ = [
    "ChatBackend",
    "ChatMessage",
    "ChatRequest",
    "Completion",
    "ContentPart",
    "ImagePart",
    "TextPart",
    "TokenDistribution",
]


@dataclass(frozen=True)
class TextPart:
    """A text item of a message's content."""

    text: str


@dataclass(frozen=True)
class ImagePart:
    """An image item of a message's content. Backends load it under their ``ImageAccess``."""

    image: ImageRef


ContentPart: TypeAlias = TextPart | ImagePart


@dataclass(frozen=True)
class ChatMessage:
    """One chat message; content parts keep their order (GuardTrace wants the image first)."""

    role: Literal["system", "user", "assistant"]
    content: tuple[ContentPart, ...]

    @classmethod
    def text(cls, role: Literal["system", "user", "assistant"], text: str) -> ChatMessage:
        """A message with a single text part."""
        return cls(role=role, content=(TextPart(text),))


@dataclass(frozen=True)
class ChatRequest:
    """What to ask the model.

    ``assistant_prefix``, when set, is text the assistant turn already starts with: the model
    continues it instead of starting a new turn (score mode pre-fills up to the judgment key).
    """

    messages: tuple[ChatMessage, ...]
    max_new_tokens: int = 2000
    assistant_prefix: str | None = None


@dataclass(frozen=True)
class Completion:
    """Generated text for one request."""

    text: str
    latency_ms: float
    model: str
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    truncated: bool = False
    """True when the input was cut to the backend's input-token limit."""


@dataclass(frozen=True)
class TokenDistribution:
    """The model's next-token log-probabilities after the request's ``assistant_prefix``.

    Keys are decoded token strings. Backends return at least the ``top_k`` most likely tokens; a
    token absent from the mapping has a probability below the smallest one present.
    """

    logprobs: Mapping[str, float]
    latency_ms: float
    model: str
    truncated: bool = False
    """True when the input was cut to the backend's input-token limit (as for
    :attr:`Completion.truncated`): the distribution is about part of the trace."""


ChatResult: TypeAlias = Completion | AuditorError
ScoreResult: TypeAlias = TokenDistribution | AuditorError

_Backend = TypeVar("_Backend", bound="ChatBackend")


class ChatBackend(abc.ABC):
    """A vision-language model behind a chat interface, local or served.

    Implementations: ``TransformersBackend`` (local, extra ``local``) and
    ``OpenAICompatibleBackend`` (served over HTTP). Both are thread-safe. A backend is a context
    manager (``with`` / ``async with``) that closes it on the way out.
    """

    name: str = "backend"

    #: For a backend whose calls are independent requests to a server: how many to keep in
    #: flight. An async batch larger than that is audited as that many streams of one-trace
    #: calls, so building a request and reading an answer overlap the wait for the others.
    #: ``None`` (a local model): a batch runs in lockstep, one merged call per step.
    pipeline_width: int | None = None

    @abc.abstractmethod
    def complete(self, requests: Sequence[ChatRequest]) -> list[ChatResult]:
        """Generate (greedily) for each request; one result per request, in order."""

    @abc.abstractmethod
    def next_token_logprobs(
        self, requests: Sequence[ChatRequest], top_k: int = 20
    ) -> list[ScoreResult]:
        """The next-token distribution after each request's assistant prefix."""

    async def acomplete(self, requests: Sequence[ChatRequest]) -> list[ChatResult]:
        """Async :meth:`complete`; by default the sync one in a worker thread."""
        return await asyncio.to_thread(self.complete, list(requests))

    async def anext_token_logprobs(
        self, requests: Sequence[ChatRequest], top_k: int = 20
    ) -> list[ScoreResult]:
        """Async :meth:`next_token_logprobs`; by default the sync one in a worker thread."""
        return await asyncio.to_thread(self.next_token_logprobs, list(requests), top_k)

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections or models."""

    async def aclose(self) -> None:
        """Async :meth:`close`."""
        self.close()

    def __enter__(self: _Backend) -> _Backend:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    async def __aenter__(self: _Backend) -> _Backend:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
