"""A guarded stream's rules, without any I/O: chunks in, traces and chunks out.

Every API-specific stream (OpenAI chat and Responses, the proxy's SSE) supplies a
:class:`StreamAdapter` that reads and rewrites its chunks; the I/O shells only move chunks and
await audits. What to hold back, what to audit when (including the checkpoints of an
:class:`~traceguard._checkpoints.AuditSchedule`), and what to emit lives here, once.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Generic, Literal, Protocol, TypeVar

from traceguard._checkpoints import AuditSchedule, CheckpointClock
from traceguard._decision import Decision
from traceguard._exceptions import Blocked, Escalated
from traceguard._reasoning import ReasoningStream
from traceguard._trace import Stage, Trace

__all__ = [
    "Edit",
    "StreamAdapter",
    "StreamOptions",
    "StreamState",
    "blocked_error",
    "edit_for",
]

C = TypeVar("C")

logger = logging.getLogger("traceguard.streaming")


@dataclass(frozen=True)
class Edit:
    """How an output must change before the caller sees it."""

    replacement: str | None = None
    """The text that replaces the response (a refusal); None keeps the response."""
    drop_thinking: bool = False

    @property
    def noop(self) -> bool:
        """True when the output passes unchanged."""
        return self.replacement is None and not self.drop_thinking


def edit_for(trace: Trace, decision: Decision, refusal: str) -> Edit:
    """The edit that turns ``trace``'s output into what ``decision`` lets through.

    A blocked decision reaching here means the caller asked for refusals instead of exceptions.
    """
    if decision.blocked:
        return Edit(replacement=refusal, drop_thinking=True)
    if decision.response is None:
        # Only a blocked decision should lack a response; never let the original through.
        replacement: str | None = refusal
    else:
        replacement = decision.response if decision.response != trace.response else None
    drop = trace.thinking is not None and decision.thinking != trace.thinking
    return Edit(replacement=replacement, drop_thinking=drop or replacement is not None)


@dataclass(frozen=True)
class StreamOptions:
    """The wrapper options a stream needs."""

    mode: Literal["buffer", "passthrough"] = "buffer"
    early_stop: bool = True
    on_block: Literal["raise", "refusal"] = "raise"
    refusal: str = "I can't help with that request."


def blocked_error(decision: Decision) -> Blocked:
    """The exception for a decision that holds the output back."""
    # A reviewer's rejection is a decided block, not an escalation still held for review.
    return Escalated(decision) if decision.awaiting_review else Blocked(decision)


class StreamAdapter(Protocol[C]):
    """API-specific knowledge of a stream: how to read chunks and how to rewrite them."""

    def feed(self, chunk: C) -> None:
        """Take one upstream chunk into account."""

    def thinking_finished(self) -> list[Trace]:
        """Traces of thinking that just completed (each choice at most once)."""

    def reasoning_streams(self) -> Mapping[int, ReasoningStream]:
        """Each output's accumulated text so far, by choice index (for checkpoint schedules)."""

    def checkpoint_traces(self, choices: Sequence[int]) -> list[Trace]:
        """:attr:`Stage.CHECKPOINT` traces of these outputs as they are now: the thinking and
        the response so far, no tool calls (their arguments are still being written)."""

    def final_traces(self) -> list[Trace]:
        """One trace per output, for everything fed."""

    def edited(self, chunks: Sequence[C], edits: Mapping[int, Edit]) -> list[C]:
        """``chunks`` with each output's edit applied (keyed by choice index)."""

    def refusal(self, text: str) -> list[C]:
        """Chunks that end the stream with ``text`` in place of the withheld output."""


class StreamState(Generic[C]):
    """The sans-I/O core of a guarded stream.

    Protocol, driven by the I/O shell: for each upstream chunk call :meth:`on_chunk` and release
    what it returns, then audit :meth:`early_traces` if any and pass the decisions to
    :meth:`after_early` (a non-None result means: close upstream, release it, stop). At the end
    audit :meth:`final_traces` and release :meth:`after_final`.

    With a checkpoint schedule, also call :meth:`checkpoint_traces` after each chunk: traces it
    returns are audited *in the background* while chunks keep flowing, and their decisions go
    to :meth:`after_checkpoint` as soon as they are in (same result as :meth:`after_early`). It
    returns nothing while a checkpoint audit is in flight (:attr:`checkpoint_in_flight`), so
    audits never queue up. Before an early or final audit, wait for a checkpoint in flight and
    hand its decisions over first: a stream never has two audits running.

    When the stream ends any other way (the caller closes it, the upstream fails), audit
    :meth:`partial_traces` if any and pass the decisions to :meth:`after_partial`: what the
    caller was already shown is audited and recorded all the same, exactly once, never raising.
    A checkpoint still in flight then is cancelled (an asyncio task), or waited for first and
    handed to :meth:`after_late_checkpoint` (a thread, which cannot be cancelled), so that it
    neither overlaps the partial audit nor records a decision after the stream ended.
    """

    def __init__(
        self,
        adapter: StreamAdapter[C],
        options: StreamOptions,
        *,
        checkpoints: AuditSchedule | None = None,
    ) -> None:
        self.adapter = adapter
        self.options = options
        self.decisions: list[Decision] = []
        """Every decision taken on this stream, early ones first."""
        self.stopped_early = False
        self.stopped_at: Stage | None = None
        """The stage of the audit that stopped the stream (checkpoint, thinking, final)."""
        self.clock = None if checkpoints is None else CheckpointClock(checkpoints)
        self._in_flight = False
        self._shown = False  # a chunk reached the caller before any audit covered it
        self._concluded = False  # an audit covering the output ran (or is running)
        self._buffer: list[C] = []
        self._final: list[Trace] = []
        self._early: list[Trace] = []
        self._early_edits: dict[int, Edit] = {}

    def on_chunk(self, chunk: C) -> list[C]:
        """Feed one upstream chunk; returns the chunks to release now."""
        self.adapter.feed(chunk)
        if self.options.mode == "passthrough":
            self._shown = True
            return [chunk]
        self._buffer.append(chunk)
        return []

    def early_traces(self) -> list[Trace]:
        """Completed thinking to audit right away (early stop), usually empty."""
        self._early = self.adapter.thinking_finished() if self.options.early_stop else []
        return self._early

    def after_early(self, decisions: Sequence[Decision]) -> list[C] | None:
        """None to go on; else the chunks that end the stream (the upstream must be closed)."""
        self.decisions.extend(decisions)
        blocked = next((d for d in decisions if d.blocked), None)
        if blocked is None:
            # A redaction of the thinking alone still holds when the whole output passes: the
            # stricter of the two audits wins (applied in after_final).
            for trace, decision in zip(self._early, decisions, strict=True):
                self._early_edits[_choice(trace)] = edit_for(trace, decision, self.options.refusal)
            return None
        return self._stop(blocked, Stage.THINKING)

    # -- checkpoints ---------------------------------------------------------------------------

    @property
    def checkpoint_in_flight(self) -> bool:
        """True between :meth:`checkpoint_traces` returning traces and :meth:`after_checkpoint`."""
        return self._in_flight

    def checkpoint_traces(self) -> list[Trace]:
        """Partial output to audit in the background now; empty when no checkpoint is due, one
        is already in flight, or the stream is decided. Call after every chunk."""
        if self.clock is None or self._concluded:
            return []
        streams = self.adapter.reasoning_streams()
        due = self.clock.due(streams)
        if not due or self._in_flight:
            return []
        self.clock.taken({choice: streams[choice] for choice in due})
        self._in_flight = True
        number = self.clock.count
        return [
            dataclasses.replace(trace, metadata={**trace.metadata, "checkpoint": number})
            for trace in self.adapter.checkpoint_traces(due)
        ]

    def after_checkpoint(self, decisions: Sequence[Decision]) -> list[C] | None:
        """A checkpoint's decisions: None to go on; else the chunks that end the stream (the
        upstream must be closed). Raises :class:`Blocked` when blocks are errors.

        Only a block acts mid-stream. Any other decision is recorded (``decisions``, the
        sinks); the final audit sees all of that thinking and more, and decides the output.
        """
        self._in_flight = False
        self.decisions.extend(decisions)
        blocked = next((d for d in decisions if d.blocked), None)
        if blocked is None or self._concluded:
            return None
        return self._stop(blocked, Stage.CHECKPOINT)

    def after_late_checkpoint(self, decisions: Sequence[Decision]) -> None:
        """The decisions of a checkpoint that ended after the stream was cut short (closed,
        upstream failed): recorded with the others, never acted on. The caller is leaving, and
        the partial audit that follows covers everything it was shown."""
        self._in_flight = False
        self.decisions.extend(decisions)

    def _stop(self, blocked: Decision, stage: Stage) -> list[C]:
        self.stopped_early = True
        self.stopped_at = stage
        self._concluded = True
        self._buffer.clear()
        if self.options.on_block == "raise":
            raise blocked_error(blocked)
        return self.adapter.refusal(self.options.refusal)

    def final_traces(self) -> list[Trace]:
        """The traces of the whole output."""
        self._concluded = True
        self._final = self.adapter.final_traces()
        return self._final

    def partial_traces(self, cause: Literal["closed", "upstream_error"]) -> list[Trace]:
        """The traces of what was shown, for a stream cut short; empty when nothing is owed.

        Something is owed once: when chunks reached the caller (passthrough) and no audit of the
        whole output ran. The traces carry :attr:`Stage.PARTIAL` and ``cut=cause`` in metadata.
        """
        if not self._shown or self._concluded:
            return []
        self._concluded = True
        return [
            dataclasses.replace(
                trace, stage=Stage.PARTIAL, metadata={**trace.metadata, "cut": cause}
            )
            for trace in self.adapter.final_traces()
        ]

    def after_partial(self, decisions: Sequence[Decision]) -> None:
        """Record the decisions on what was shown; never raises (the caller is leaving)."""
        self.decisions.extend(decisions)
        for decision in decisions:
            if decision.blocked:
                logger.warning(
                    "traceguard: a passthrough stream cut short had already shown output the "
                    "guard holds back (%s: %s); the decision was recorded, not raised",
                    decision.action.value,
                    decision.reason,
                )

    def after_final(self, decisions: Sequence[Decision]) -> list[C]:
        """The chunks to release once the whole output is decided (or raise)."""
        self.decisions.extend(decisions)
        buffered, self._buffer = self._buffer, []
        blocked = next((d for d in decisions if d.blocked), None)
        if blocked is not None:
            if self.options.on_block == "raise":
                raise blocked_error(blocked)
            return self.adapter.refusal(self.options.refusal)
        if self.options.mode == "passthrough":
            # Everything already reached the caller; a redaction cannot be taken back. The
            # decisions stay on the stream (``stream.decisions``) and went to the sinks.
            return []
        edits = {
            _choice(trace): _stricter(
                edit_for(trace, decision, self.options.refusal),
                self._early_edits.get(_choice(trace), Edit()),
            )
            for trace, decision in zip(self._final, decisions, strict=True)
        }
        if all(edit.noop for edit in edits.values()):
            return buffered
        return self.adapter.edited(buffered, edits)


def _choice(trace: Trace) -> int:
    return int(trace.metadata.get("choice", 0))


def _stricter(a: Edit, b: Edit) -> Edit:
    """Both edits at once: any replacement wins, and the thinking goes if either drops it."""
    replacement = a.replacement if a.replacement is not None else b.replacement
    return Edit(replacement=replacement, drop_thinking=a.drop_thinking or b.drop_thinking)
