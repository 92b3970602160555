"""Shared pieces of the checkpoint tests: scripted thinking streams and a recording auditor.

Thinking is written in "tokens" of exactly four characters, so that a schedule counting four
characters per token (the default) places checkpoints on known token counts: with
``every_tokens=16`` the checkpoints fall after tokens 16, 32, 48, ... A harmful token carries
the marker ``HRM`` and the auditor grades by that marker alone: it stands for content.
"""

from __future__ import annotations

import asyncio
import threading
from collections import defaultdict
from collections.abc import Callable, Sequence

from traceguard import Auditor, Stage, Trace, Verdict
from traceguard._exceptions import AuditorError
from traceguard._sinks import AuditRecord, Sink
from traceguard._verdict import AuditStatus, ErrorInfo

HARM = "HRM "
"""A harmful token (four characters, like every other)."""


def thinking_tokens(count: int, *, harmful_at: int | None = None) -> list[str]:
    """``count`` four-character tokens; token ``harmful_at`` (0-based) is :data:`HARM`."""
    return [HARM if i == harmful_at else f"t{i % 100:02d} " for i in range(count)]


class RecordingAuditor(Auditor):
    """Grades by the :data:`HARM` marker and records what it was asked, when, and how many
    audits ran at once. A test helper, not an auditor.

    ``gate``: a function of the trace returning an event the audit waits for first (or None);
    ``fail``: a function of the trace; when true the audit fails (an auditor error verdict).

    :meth:`ended` tells when a stream's background audit of a checkpoint is over as the stream
    sees it (its worker thread ended, or its asyncio task is done): from then on the stream
    hears it, at its next chunk or at once. That, not the auditor returning, is what a test
    must wait for before it lets the stream go on.
    """

    name = "recording"

    def __init__(
        self,
        *,
        gate: Callable[[Trace], threading.Event | None] | None = None,
        fail: Callable[[Trace], bool] | None = None,
        raises: Callable[[Trace], bool] | None = None,
    ) -> None:
        self.gate = gate
        self.fail = fail
        self.raises = raises
        self.seen: list[Trace] = []
        self.running = 0
        self.most_at_once = 0
        self.gate_timeouts = 0
        self._lock = threading.Lock()
        self._ended: defaultdict[int, threading.Event] = defaultdict(threading.Event)

    def ended(self, checkpoint: int) -> threading.Event:
        """Set once the background audit of checkpoint number ``checkpoint`` is over."""
        with self._lock:
            return self._ended[checkpoint]

    def audit_batch(self, traces: Sequence[Trace]) -> list[Verdict]:
        # Sync shells audit a checkpoint on a thread of its own, which ends with the audit.
        ended = self._ended_events(traces)
        if ended:
            worker = threading.current_thread()
            threading.Thread(target=_set_when_ended, args=(worker, ended), daemon=True).start()
        return self._audit(traces)

    async def aaudit_batch(self, traces: Sequence[Trace]) -> list[Verdict]:
        # Async shells audit a checkpoint in a task of its own, which is done with the audit.
        task = asyncio.current_task()
        for event in self._ended_events(traces):
            if task is not None:
                task.add_done_callback(lambda _, event=event: event.set())
        return await asyncio.to_thread(self._audit, list(traces))

    def _ended_events(self, traces: Sequence[Trace]) -> list[threading.Event]:
        numbers = {t.metadata.get("checkpoint") for t in traces if t.stage is Stage.CHECKPOINT}
        return [self.ended(n) for n in numbers if isinstance(n, int)]

    def _audit(self, traces: Sequence[Trace]) -> list[Verdict]:
        with self._lock:
            self.seen.extend(traces)
            self.running += 1
            self.most_at_once = max(self.most_at_once, self.running)
        try:
            for trace in traces:
                event = self.gate(trace) if self.gate is not None else None
                if event is not None and not event.wait(10):
                    self.gate_timeouts += 1
            if self.raises is not None and any(self.raises(t) for t in traces):
                raise AuditorError("scripted crash of the auditor")
            return [self._grade(trace) for trace in traces]
        finally:
            with self._lock:
                self.running -= 1

    def _grade(self, trace: Trace) -> Verdict:
        if self.fail is not None and self.fail(trace):
            return Verdict.failed(
                AuditStatus.AUDITOR_ERROR,
                auditor=self.name,
                error=ErrorInfo("AuditorError", "scripted auditor failure"),
            )
        text = f"{trace.thinking or ''}\n{trace.response}"
        return Verdict.ok(auditor=self.name, risk=1.0 if HARM.strip() in text else 0.0)

    def stages(self) -> list[Stage]:
        return [trace.stage for trace in self.seen]

    def checkpoints(self) -> list[Trace]:
        return [trace for trace in self.seen if trace.stage is Stage.CHECKPOINT]


def paced_by_checkpoints(
    auditor: RecordingAuditor, texts: Sequence[str], *, every_tokens: int, chars_per_token: int = 4
) -> dict[int, threading.Event]:
    """Pauses (for :class:`~traceguard.testing.openai_server.StreamControl`) that pace a stream
    by its checkpoint audits: after the event that makes checkpoint ``k`` due, the upstream
    waits until that audit is over. Every shell then hears each checkpoint before the next
    event, whether it hears them at once (async) or at the next chunk (sync, callbacks), so the
    checkpoints fall exactly ``every_tokens`` apart.

    ``texts``: the output text each event carries, in order (empty for events without any).
    """
    every = every_tokens * chars_per_token
    pauses: dict[int, threading.Event] = {}
    fed = taken = 0
    for index, text in enumerate(texts):
        fed += len(text)
        if fed - taken >= every:
            taken = fed
            pauses[index + 1] = auditor.ended(len(pauses) + 1)
    return pauses


def _set_when_ended(worker: threading.Thread, events: list[threading.Event]) -> None:
    worker.join()
    for event in events:
        event.set()


class ListSink(Sink):
    """Keeps every record in memory."""

    def __init__(self) -> None:
        self.records: list[AuditRecord] = []

    def emit(self, record: AuditRecord) -> None:
        self.records.append(record)
