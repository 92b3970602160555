"""Handing an offline audit's decisions to sinks (a JSONL log, a webhook, the review queue).

The output file is the audit's record; sinks are extra copies, so a failing sink never stops
the run or changes a verdict. It is never silent either: every record a sink could not take is
counted (``AuditSummary.sink_errors``) and logged, and the CLI says so at the end.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence

from traceguard._decision import Decision
from traceguard._sinks import AuditRecord, BackgroundSink, Sink
from traceguard._trace import Trace
from traceguard.audit._messages import LogItem
from traceguard.review import ReviewQueue, offline_escalation_id

__all__ = ["Delivery", "close_sinks"]

logger = logging.getLogger("traceguard.audit")

_FLUSH_TIMEOUT_S = 30.0


class Delivery:
    """Emits one :class:`AuditRecord` per decision to every sink; owns the sinks it is given.

    Sinks marked ``slow`` (the webhook) run behind a :class:`BackgroundSink`, as in ``Guard``.
    """

    def __init__(self, sinks: Sequence[Sink]) -> None:
        self.sinks: tuple[Sink, ...] = tuple(
            BackgroundSink(sink) if sink.slow else sink for sink in sinks
        )
        self.failed = 0
        """Records some sink did not take (errors, drops, still queued at close)."""

    def __bool__(self) -> bool:
        return bool(self.sinks)

    def emit(self, item: LogItem, decision: Decision) -> None:
        """Record ``decision`` about ``item`` in every sink."""
        try:
            trace = _trace_of(item)
            decision, link = self._escalation(item, trace, decision)
            record = AuditRecord.from_decision(trace, decision, review_url=link)
        except Exception as exc:
            self.failed += len(self.sinks)
            logger.error("cannot build the audit record of %s: %r", item.id, exc)
            return
        for sink in self.sinks:
            try:
                sink.emit(record)
            except Exception as exc:
                self.failed += 1
                logger.error("sink %r failed: %s", sink, exc)

    def _escalation(
        self, item: LogItem, trace: Trace, decision: Decision
    ) -> tuple[Decision, str | None]:
        """An escalation gets an id fixed by its input line and content (auditing the file again
        files nothing twice), and the link to its review page when the queue knows the app."""
        if not decision.escalated:
            return decision, None
        source = item.source
        escalation_id = offline_escalation_id(
            source.path, source.line, source.turn, trace.content_hash()
        )
        decision = dataclasses.replace(decision, escalation_id=escalation_id)
        queues = [s for s in self.sinks if isinstance(s, ReviewQueue)]
        return decision, queues[0].link(escalation_id) if queues else None

    def close(self, timeout: float = _FLUSH_TIMEOUT_S) -> int:
        """Deliver what is queued, close every sink; returns the records not delivered."""
        for sink in self.sinks:
            try:
                sink.flush(timeout)
                sink.close()
                self.failed += sink.undelivered
            except Exception as exc:
                self.failed += 1
                logger.error("closing sink %r failed: %s", sink, exc)
        self.sinks = ()
        return self.failed


def close_sinks(sinks: Sequence[Sink]) -> None:
    """Close sinks a run was given but never started with (errors logged, not raised)."""
    for sink in sinks:
        try:
            sink.close()
        except Exception as exc:
            logger.error("closing sink %r failed: %s", sink, exc)


def _trace_of(item: LogItem) -> Trace:
    """The trace a record describes, marked as coming from this offline audit.

    Items without a trace (unreadable input) still get a record: their decision (escalate, by
    default) must reach the review queue like any other.
    """
    trace = item.trace if item.trace is not None else Trace(query="", response="", id=item.id)
    metadata = {
        **trace.metadata,
        "integration": "offline",
        "source": item.source.to_dict(),
    }
    return dataclasses.replace(trace, id=trace.id or item.id, metadata=metadata)
