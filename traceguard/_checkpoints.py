"""Checkpoints: auditing a stream's output while the model is still writing it.

A stream's thinking can run for thousands of tokens; auditing it only once it ends pays for (and,
in passthrough mode, shows) all of them. An :class:`AuditSchedule` says when to audit the
partial output instead: every so many tokens, at sentence or step boundaries, or both. The parts:

- :class:`AuditSchedule`: the options (also the ``checkpoints`` section of a configuration);
- :class:`CheckpointClock`: which outputs of a stream are due for a checkpoint, from their
  :class:`~traceguard._reasoning.ReasoningStream` (sans-I/O, O(1) per chunk);
- :class:`BackgroundAudit` / :class:`AsyncBackgroundAudit`: the one checkpoint audit of a stream
  in flight, on a worker thread or an asyncio task, so that the stream keeps flowing meanwhile.

Checkpoints never queue up: while a stream's checkpoint audit runs no other starts, and when it
ends the next checkpoint takes the latest text. Where a checkpoint's decision is acted on is the
integrations' business (:class:`~traceguard._streaming.StreamState` for the OpenAI wrapper and
the proxy, the LangChain model and handlers): a blocking decision stops the upstream; any other
decision is recorded, and the final audit, which sees all of that thinking and more, decides
the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import re
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Generic, Literal, TypeVar

from traceguard._exceptions import ConfigurationError

if TYPE_CHECKING:
    from traceguard._auditor import Auditor
    from traceguard._decision import Decision
    from traceguard._reasoning import ReasoningStream
    from traceguard._trace import Trace

__all__ = [
    "AsyncBackgroundAudit",
    "AuditSchedule",
    "BackgroundAudit",
    "CheckpointClock",
    "checkpoint_auditor",
]

_T = TypeVar("_T")

Boundary = Literal["sentence", "step"]

# A boundary counts where its last character arrived: the clock looks only at new text.
_BOUNDARIES: dict[str, re.Pattern[str]] = {
    # A sentence ends with its mark (closing quotes and brackets may follow) and a space, or at
    # a line break.
    "sentence": re.compile(r"[.!?\u2026\u3002\uff01\uff1f][\"'\u201d\u2019)\]]*\s|\n"),
    # A reasoning step ends at a blank line, or where a new line opens a numbered or bulleted
    # item ("Step 3", "2.", "- ").
    "step": re.compile(r"\n[ \t]*\n|\n[ \t]*(?:step\s*\d+|\d+[.)]|[-*\u2022])\s", re.IGNORECASE),
}


@dataclass(frozen=True)
class AuditSchedule:
    """When a guarded stream audits its output before the model has finished it.

    Set it on the guard (``Guard(auditor, checkpoints=AuditSchedule())``, or the configuration's
    ``checkpoints`` section); every streaming integration then audits the partial output at
    checkpoints (``Trace.stage`` is ``Stage.CHECKPOINT``) and stops the upstream as soon as one
    blocks. At most one checkpoint audit of a stream runs at a time; the stream keeps flowing
    while it does.

    Args:
        every_tokens: a checkpoint once the output grew by this many tokens since the last one.
            None with a ``boundary``: checkpoints at boundaries only.
        boundary: ``"sentence"`` or ``"step"`` (a blank line, a new numbered or bulleted item):
            checkpoints where one ends, at least ``min_tokens`` apart; ``every_tokens``, if also
            set, is then the longest stretch without one.
        min_tokens: the least growth between two checkpoints at boundaries.
        scope: ``"thinking"`` checkpoints while the model visibly reasons (the thinking-done
            audit and the final audit cover the rest); ``"output"`` keeps going through the
            answer, which shortens what a passthrough stream shows before a block.
        chars_per_token: how tokens are counted: characters / this. Streams deliver text, not
            token ids, and counting characters makes checkpoints land on the same text however
            the server groups tokens into chunks. 4 suits English with BPE vocabularies; use
            about 1.5 for Chinese or Japanese.
        auditor: the auditor checkpoints use; None takes the guard's own, in its cheaper
            checkpoint form where it has one (:func:`checkpoint_auditor`: a GuardTrace auditor
            in full mode scores checkpoints in score mode, on the same backend).
    """

    every_tokens: int | None = 128
    boundary: Boundary | None = None
    min_tokens: int = 32
    scope: Literal["thinking", "output"] = "thinking"
    chars_per_token: float = 4.0
    auditor: Auditor | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if self.every_tokens is None and self.boundary is None:
            raise ConfigurationError("a checkpoint schedule needs every_tokens or a boundary")
        if self.every_tokens is not None and self.every_tokens < 1:
            raise ConfigurationError("every_tokens must be at least 1")
        if self.boundary is not None and self.boundary not in _BOUNDARIES:
            raise ConfigurationError(
                f"boundary must be 'sentence' or 'step', not {self.boundary!r}"
            )
        if self.min_tokens < 1:
            raise ConfigurationError("min_tokens must be at least 1")
        if self.scope not in ("thinking", "output"):
            raise ConfigurationError(f"scope must be 'thinking' or 'output', not {self.scope!r}")
        if not (math.isfinite(self.chars_per_token) and self.chars_per_token > 0):
            raise ConfigurationError("chars_per_token must be a positive number")

    def chars(self, tokens: int) -> int:
        """``tokens`` in characters, as this schedule counts them."""
        return max(1, math.ceil(tokens * self.chars_per_token))


def checkpoint_auditor(auditor: Auditor) -> Auditor:
    """The auditor checkpoints use by default: ``auditor``'s own checkpoint form, if it offers
    one (``auditor.for_checkpoints()``; a GuardTrace auditor in full mode returns its score-mode
    twin on the same backend), else ``auditor`` itself."""
    offer = getattr(auditor, "for_checkpoints", None)
    if callable(offer):
        cheaper = offer()
        if cheaper is not None:
            return cheaper  # type: ignore[no-any-return]
    return auditor


@dataclass
class _Progress:
    audited: int = 0
    """``fed_chars`` when the last checkpoint took the text."""
    looked: int = 0
    """``fed_chars`` when the clock last looked (new text for boundaries starts here)."""
    boundary: bool = False
    """A boundary passed at least ``min_tokens`` after the last checkpoint."""


class CheckpointClock:
    """Which outputs of one stream are due for a checkpoint (sans-I/O).

    Call :meth:`due` after each chunk with the stream's outputs (choice index → its
    :class:`~traceguard._reasoning.ReasoningStream`); audit the choices it returns (their text
    as it is then) and call :meth:`taken` with them. Every check is O(1) per output: it reads
    the character count and the last few characters, never the whole text.
    """

    def __init__(self, schedule: AuditSchedule) -> None:
        self.schedule = schedule
        self._every = (
            None if schedule.every_tokens is None else schedule.chars(schedule.every_tokens)
        )
        self._least = schedule.chars(schedule.min_tokens)
        self._boundary = None if schedule.boundary is None else _BOUNDARIES[schedule.boundary]
        self._progress: dict[int, _Progress] = {}
        self.count = 0
        """Checkpoints taken so far on this stream."""

    def due(self, streams: Mapping[int, ReasoningStream]) -> list[int]:
        """The choices whose output grew enough (or passed a boundary) since their last
        checkpoint; they stay due until :meth:`taken`.

        Call it after every chunk, also while an audit is in flight (then just do not start
        one): a boundary passed meanwhile is remembered and makes the output due at once.
        """
        out = []
        thinking_only = self.schedule.scope == "thinking"
        for choice, stream in streams.items():
            progress = self._progress.setdefault(choice, _Progress())
            size = stream.fed_chars
            new, progress.looked = size - progress.looked, size
            if thinking_only and not stream.thinking_open:
                continue
            grown = size - progress.audited
            if grown <= 0:
                continue
            if (
                self._boundary is not None
                and not progress.boundary
                and grown >= self._least
                and new > 0
                and _ends_in_new_text(self._boundary, stream.tail, new)
            ):
                progress.boundary = True
            if progress.boundary or (self._every is not None and grown >= self._every):
                out.append(choice)
        return out

    def taken(self, choices: Mapping[int, ReasoningStream]) -> None:
        """The checkpoint of these outputs took their text as it is now."""
        for choice, stream in choices.items():
            progress = self._progress.setdefault(choice, _Progress())
            progress.audited = stream.fed_chars
            progress.boundary = False
        self.count += 1


def _ends_in_new_text(pattern: re.Pattern[str], tail: str, new: int) -> bool:
    """True when a boundary ends within the last ``new`` characters of ``tail``."""
    start = max(0, len(tail) - new - 4)  # a few old characters: the mark may precede the space
    first_new = len(tail) - new
    return any(m.end() > first_new for m in pattern.finditer(tail, start))


class BackgroundAudit:
    """The checkpoint audit of one stream in flight, on a worker thread (sync shells).

    ``check`` is the guard call (``lambda traces: guard.check_batch(traces, ...)``). :meth:`start`
    refuses a second audit while one runs: a schedule's checkpoints never queue up.
    """

    def __init__(self, check: Callable[[list[Trace]], list[Decision]]) -> None:
        self._check = check
        self._future: Future[list[Decision]] | None = None
        self.started = 0
        """Audits started on this stream."""

    @property
    def pending(self) -> bool:
        """True while an audit was started and its decisions not yet taken."""
        return self._future is not None

    def start(self, traces: list[Trace]) -> None:
        """Audit ``traces`` on a worker thread."""
        if self._future is not None:
            raise RuntimeError("a checkpoint audit of this stream is already in flight")
        future: Future[list[Decision]] = Future()
        self._future = future
        self.started += 1

        def run() -> None:
            try:
                future.set_result(self._check(traces))
            except BaseException as exc:  # delivered to the stream, which re-raises it
                future.set_exception(exc)

        threading.Thread(target=run, name="traceguard-checkpoint", daemon=True).start()

    def done(self) -> list[Decision] | None:
        """The decisions of the audit in flight if it has finished, else None (never waits)."""
        if self._future is None or not self._future.done():
            return None
        return self._take()

    def wait(self) -> list[Decision] | None:
        """Wait for the audit in flight, if any, and return its decisions."""
        return None if self._future is None else self._take()

    def _take(self) -> list[Decision]:
        assert self._future is not None
        future, self._future = self._future, None
        return future.result()


class AsyncBackgroundAudit(Generic[_T]):
    """The checkpoint audit of one stream in flight, as an asyncio task (async shells).

    Besides :meth:`start` / :meth:`done` / :meth:`wait` it reads the upstream for the shell
    (:meth:`pull`): while an audit runs, whichever comes first, the next chunk or the audit's
    decisions, is returned, so a blocking checkpoint stops the stream even when the upstream
    stalls.
    """

    def __init__(self, check: Callable[[list[Trace]], Awaitable[list[Decision]]]) -> None:
        self._check = check
        self._task: asyncio.Task[list[Decision]] | None = None
        self._next: asyncio.Task[tuple[bool, _T | None]] | None = None
        self.started = 0

    @property
    def pending(self) -> bool:
        """True while an audit was started and its decisions not yet taken."""
        return self._task is not None

    def start(self, traces: list[Trace]) -> None:
        """Audit ``traces`` in a task of the running loop."""
        if self._task is not None:
            raise RuntimeError("a checkpoint audit of this stream is already in flight")
        self.started += 1
        self._task = asyncio.ensure_future(self._check(traces))

    def done(self) -> list[Decision] | None:
        """The decisions of the audit in flight if it has finished, else None (never waits)."""
        if self._task is None or not self._task.done():
            return None
        task, self._task = self._task, None
        return task.result()

    async def wait(self) -> list[Decision] | None:
        """Wait for the audit in flight, if any, and return its decisions."""
        if self._task is None:
            return None
        task, self._task = self._task, None
        return await task

    async def pull(self, upstream: AsyncIterator[_T]) -> tuple[_T | None, list[Decision] | None]:
        """``(chunk, None)``, ``(None, decisions)`` when the audit in flight finished first, or
        ``(None, None)`` at the end of ``upstream``."""
        if self._task is None and self._next is None:
            ended, chunk = await _next_of(upstream)
            return (None, None) if ended else (chunk, None)
        if self._next is None:
            self._next = asyncio.ensure_future(_next_of(upstream))
        if self._task is not None:
            await asyncio.wait((self._next, self._task), return_when=asyncio.FIRST_COMPLETED)
            decisions = self.done()
            if decisions is not None:
                return None, decisions
        step, self._next = self._next, None
        ended, chunk = await step
        return (None, None) if ended else (chunk, None)

    async def cancel(self) -> None:
        """Stop reading ahead and drop the audit in flight (the stream is over)."""
        for task in (self._next, self._task):
            if task is not None and not task.done():
                task.cancel()
        for task in (self._next, self._task):
            if task is not None:
                with contextlib.suppress(BaseException):
                    await task
        self._next = self._task = None


async def _next_of(upstream: AsyncIterator[_T]) -> tuple[bool, _T | None]:
    # A task cannot carry StopAsyncIteration cleanly out of ``__anext__``: say "ended" instead.
    try:
        return False, await upstream.__anext__()
    except StopAsyncIteration:
        return True, None
