"""Shared pieces of the checkpoint tests: scripted thinking streams and a recording auditor.

Thinking is written in "tokens" of exactly four characters, so that a schedule counting four
characters per token (the default) places checkpoints on known token counts: with
``every_tokens=16`` the checkpoints fall after tokens 16, 32, 48, ... A harmful token carries
the marker ``HRM`` and the auditor grades by that marker alone: it stands for content.
"""

from __future__ import annotations

import threading
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

    def audit_batch(self, traces: Sequence[Trace]) -> list[Verdict]:
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


class ListSink(Sink):
    """Keeps every record in memory."""

    def __init__(self) -> None:
        self.records: list[AuditRecord] = []

    def emit(self, record: AuditRecord) -> None:
        self.records.append(record)
