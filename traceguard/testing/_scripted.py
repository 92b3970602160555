"""A scripted auditor for tests of code that *uses* traceguard. It grades nothing by itself."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from traceguard._auditor import Auditor
from traceguard._exceptions import AuditorError
from traceguard._trace import Trace
from traceguard._verdict import AuditStatus, ErrorInfo, Verdict

__all__ = ["ScriptedAuditor", "Step"]


@dataclass(frozen=True)
class Step:
    """One scripted answer: a risk, an auditor error, or an unparseable output."""

    risk: float | None = None
    error: str | None = None
    unparseable: str | None = None
    categories: tuple[str, ...] = ()
    analysis: str = "scripted"

    def to_verdict(self, auditor: str) -> Verdict:
        if self.error is not None:
            return Verdict.failed(
                AuditStatus.AUDITOR_ERROR,
                auditor=auditor,
                error=ErrorInfo(AuditorError.__name__, self.error),
            )
        if self.unparseable is not None:
            return Verdict.failed(
                AuditStatus.UNPARSEABLE,
                auditor=auditor,
                error=ErrorInfo("ParseError", "scripted unparseable output"),
                raw_output=self.unparseable,
            )
        if self.risk is None:
            raise ValueError("a Step needs a risk, an error or an unparseable output")
        return Verdict.ok(
            auditor=auditor, risk=self.risk, categories=self.categories, analysis=self.analysis
        )


class ScriptedAuditor(Auditor):
    """Returns scripted verdicts and records every trace it was asked about.

    Either a queue of steps (consumed in order; running out is an error, so a test notices an
    unexpected audit) or a function of the trace. For tests only: it is not an auditor.
    """

    def __init__(
        self,
        steps: Iterable[Step | float] = (),
        *,
        rule: Callable[[Trace], Step | float] | None = None,
        name: str = "scripted",
    ) -> None:
        self.name = name
        self._steps: deque[Step] = deque(
            s if isinstance(s, Step) else Step(risk=float(s)) for s in steps
        )
        self._rule = rule
        self._lock = threading.Lock()
        self.seen: list[Trace] = []

    def enqueue(self, *steps: Step | float) -> None:
        """Append steps to the script."""
        with self._lock:
            self._steps.extend(s if isinstance(s, Step) else Step(risk=float(s)) for s in steps)

    @property
    def remaining(self) -> int:
        """Scripted steps not yet consumed."""
        return len(self._steps)

    def _next(self, trace: Trace) -> Step:
        with self._lock:
            self.seen.append(trace)
            if self._rule is not None:
                step = self._rule(trace)
                return step if isinstance(step, Step) else Step(risk=float(step))
            if not self._steps:
                raise AssertionError(f"ScriptedAuditor: unexpected audit of {trace.summary()}")
            return self._steps.popleft()

    def audit_batch(self, traces: Sequence[Trace]) -> list[Verdict]:
        return [self._next(trace).to_verdict(self.name) for trace in traces]
