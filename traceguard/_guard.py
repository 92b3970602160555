"""The :class:`Guard`: audit a trace, decide with a policy, record to sinks, act."""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import Sequence
from typing import cast

from traceguard._auditor import Auditor
from traceguard._decision import Action, Decision
from traceguard._exceptions import AuditorError, Blocked, Escalated
from traceguard._policy import Policy
from traceguard._sinks import AuditRecord, BackgroundSink, Sink
from traceguard._trace import Trace
from traceguard._verdict import AuditStatus, ErrorInfo, Label, Verdict

__all__ = ["Guard"]

logger = logging.getLogger("traceguard.guard")


class Guard:
    """Audits traces and turns verdicts into decisions.

    ``check`` runs the auditor, applies the policy, hands an :class:`AuditRecord` to every sink and
    then acts: a decision whose disposition is block raises :class:`Escalated` (when the policy
    escalated) or :class:`Blocked` (otherwise), unless ``raise_on_block`` is False; any other
    decision is returned, carrying the thinking and response the caller may show.

    Sinks never affect the outcome: a failing sink is logged and counted in ``sink_errors``. Sinks
    marked ``slow`` (:class:`~traceguard.WebhookSink`) are wrapped in a
    :class:`~traceguard.BackgroundSink` unless ``background_slow_sinks`` is False.

    The guard does not own the auditor: :meth:`close` flushes and closes the sinks only, unless
    ``owns_auditor`` is True (a guard built from a configuration, :meth:`from_config`).
    """

    def __init__(
        self,
        auditor: Auditor,
        policy: Policy | None = None,
        sinks: Sequence[Sink] = (),
        *,
        raise_on_block: bool = True,
        background_slow_sinks: bool = True,
        owns_auditor: bool = False,
    ) -> None:
        self.auditor = auditor
        self.owns_auditor = owns_auditor
        self.policy = policy if policy is not None else Policy()
        self.raise_on_block = raise_on_block
        self.sinks: tuple[Sink, ...] = tuple(
            BackgroundSink(sink) if background_slow_sinks and sink.slow else sink for sink in sinks
        )
        self._errors_lock = threading.Lock()
        self._sink_errors = 0

    @classmethod
    def from_config(cls, path: str | os.PathLike[str]) -> Guard:
        """The guard a configuration file describes (see :class:`traceguard.config.GuardConfig`).

        The guard owns the auditor it builds: :meth:`close` closes it too.

        Raises:
            ConfigurationError: the file is unreadable or invalid (the message names the line
                and the key), or a part cannot be built.
        """
        from traceguard.config import GuardConfig

        return GuardConfig.from_file(path).build_guard()

    @property
    def sink_errors(self) -> int:
        """How many sink emits have failed since the guard was built."""
        with self._errors_lock:
            return self._sink_errors

    # -- public API ----------------------------------------------------------------------------

    def check(self, trace: Trace) -> Decision:
        """Audit ``trace`` and return the decision, or raise if the output must be held back.

        Raises:
            Escalated: the policy escalated and the output is held back meanwhile.
            Blocked: the policy blocked the output.
        """
        verdict = self._audit_sync([trace])[0]
        return self._conclude(trace, verdict, raise_on_block=self.raise_on_block)

    async def acheck(self, trace: Trace) -> Decision:
        """Async :meth:`check`; same rules, same outcome."""
        verdict = (await self._audit_async([trace]))[0]
        return await self._aconclude(trace, verdict, raise_on_block=self.raise_on_block)

    def check_batch(self, traces: Sequence[Trace]) -> list[Decision]:
        """Check several traces in one auditor batch; one decision each, in order.

        Never raises :class:`Blocked`: inspect ``decision.blocked`` instead, because one blocked
        trace must not hide the decisions about the others.
        """
        traces = list(traces)
        verdicts = self._audit_sync(traces)
        return [
            self._conclude(t, v, raise_on_block=False)
            for t, v in zip(traces, verdicts, strict=True)
        ]

    async def acheck_batch(self, traces: Sequence[Trace]) -> list[Decision]:
        """Async :meth:`check_batch`; never raises :class:`Blocked`."""
        traces = list(traces)
        verdicts = await self._audit_async(traces)
        return [
            await self._aconclude(t, v, raise_on_block=False)
            for t, v in zip(traces, verdicts, strict=True)
        ]

    def flush(self, timeout: float | None = None) -> bool:
        """Wait for background sinks to deliver; True when nothing is left pending."""
        # Flush every sink, not just up to the first that times out.
        results = [sink.flush(timeout) for sink in self.sinks]
        return all(results)

    def close(self) -> None:
        """Flush and close every sink (errors are logged, not raised), and the auditor when the
        guard owns it. Idempotent."""
        self._close_sinks()
        if self.owns_auditor:
            self.auditor.close()

    async def aclose(self) -> None:
        """Async :meth:`close`; waits for background sinks in a worker thread."""
        await asyncio.to_thread(self._close_sinks)
        if self.owns_auditor:
            await self.auditor.aclose()

    def _close_sinks(self) -> None:
        for sink in self.sinks:
            try:
                sink.close()
            except Exception as exc:
                logger.error("closing sink %r failed: %s", sink, exc)

    def __enter__(self) -> Guard:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    async def __aenter__(self) -> Guard:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # -- the shared steps ----------------------------------------------------------------------

    def _audit_sync(self, traces: list[Trace]) -> list[Verdict]:
        graded = [trace for trace in traces if not trace.is_empty]
        return self._with_empty(traces, self._grade_sync(graded) if graded else [])

    async def _audit_async(self, traces: list[Trace]) -> list[Verdict]:
        graded = [trace for trace in traces if not trace.is_empty]
        return self._with_empty(traces, await self._grade_async(graded) if graded else [])

    def _with_empty(self, traces: list[Trace], graded: list[Verdict]) -> list[Verdict]:
        # An empty trace is never graded: an auditor shown nothing answers "safe", and that
        # verdict would vouch for output nobody has seen. It is invalid input, which the policy
        # maps to its own action and the sinks record like any other verdict.
        verdicts = iter(graded)
        return [
            Verdict.failed(
                AuditStatus.INVALID_INPUT,
                auditor=self._name,
                error=ErrorInfo(
                    "EmptyTrace",
                    "nothing to audit: no query, thinking, response, tool call or image",
                ),
            )
            if trace.is_empty
            else next(verdicts)
            for trace in traces
        ]

    def _grade_sync(self, traces: list[Trace]) -> list[Verdict]:
        try:
            if len(traces) == 1:
                verdicts = [self.auditor.audit(traces[0])]
            else:
                verdicts = self.auditor.audit_batch(traces)
        except Exception as exc:
            return self._failed(traces, exc)
        return self._checked(traces, verdicts)

    async def _grade_async(self, traces: list[Trace]) -> list[Verdict]:
        try:
            if len(traces) == 1:
                verdicts = [await self.auditor.aaudit(traces[0])]
            else:
                verdicts = await self.auditor.aaudit_batch(traces)
        except Exception as exc:
            return self._failed(traces, exc)
        return self._checked(traces, verdicts)

    def _failed(self, traces: list[Trace], exc: Exception) -> list[Verdict]:
        # Auditors should return failures as verdicts; one that raises instead (a TraceguardError,
        # or a crash: a bug, a decoder choking on hostile input) still must not let the output
        # through, and must leave a record, so its error becomes an auditor-error verdict that the
        # policy acts on and the sinks see. Only the type and message are kept, like any verdict.
        logger.warning(
            "auditor %s raised %s instead of returning a verdict: %s",
            self._name,
            type(exc).__name__,
            exc,
        )
        return [
            Verdict.failed(AuditStatus.AUDITOR_ERROR, auditor=self._name, error=exc) for _ in traces
        ]

    def _checked(self, traces: list[Trace], verdicts: object) -> list[Verdict]:
        problem = _verdicts_problem(verdicts, len(traces))
        if problem is not None:
            return self._failed(traces, AuditorError(f"auditor {self._name} {problem}"))
        return cast("list[Verdict]", verdicts)

    @property
    def _name(self) -> str:
        return getattr(self.auditor, "name", type(self.auditor).__name__)

    def _conclude(self, trace: Trace, verdict: Verdict, *, raise_on_block: bool) -> Decision:
        """Decide, record, act: the one code path behind every check method."""
        decision = self.policy.decide(verdict, trace)
        if self.sinks:
            self._record(trace, decision)
        if raise_on_block and decision.blocked:
            if decision.action is Action.ESCALATE:
                raise Escalated(decision)
            raise Blocked(decision)
        return decision

    def _record(self, trace: Trace, decision: Decision) -> None:
        # Recording never changes the outcome: neither a failing sink nor a record that cannot be
        # built (a trace whose content cannot be hashed) may turn a block into an exception that
        # a caller could mistake for something else, or an allow into a crash.
        try:
            record = AuditRecord.from_decision(trace, decision)
        except Exception as exc:
            with self._errors_lock:
                self._sink_errors += len(self.sinks)
            logger.error("cannot build the audit record of trace %s: %r", trace.id, exc)
            return
        for sink in self.sinks:
            try:
                sink.emit(record)
            except Exception as exc:
                with self._errors_lock:
                    self._sink_errors += 1
                logger.error("sink %r failed: %s", sink, exc)

    async def _aconclude(self, trace: Trace, verdict: Verdict, *, raise_on_block: bool) -> Decision:
        if not self._needs_thread():
            return self._conclude(trace, verdict, raise_on_block=raise_on_block)
        # A file or SQLite sink does blocking I/O; keep it off the event loop.
        return await asyncio.to_thread(
            self._conclude, trace, verdict, raise_on_block=raise_on_block
        )

    def _needs_thread(self) -> bool:
        return any(not isinstance(sink, BackgroundSink) for sink in self.sinks)


def _verdicts_problem(verdicts: object, expected: int) -> str | None:
    """What is wrong with an auditor's answer for ``expected`` traces, or None if nothing."""
    if not isinstance(verdicts, list | tuple):
        return f"returned a {type(verdicts).__name__}, not a list of verdicts"
    if len(verdicts) != expected:
        return f"returned {len(verdicts)} verdict(s) for {expected} trace(s)"
    for verdict in verdicts:
        if not isinstance(verdict, Verdict):
            return f"returned a {type(verdict).__name__} instead of a Verdict"
        if verdict.is_ok and (
            not isinstance(verdict.label, Label) or verdict.risk != verdict.label.risk
        ):
            # Built by hand around Verdict.ok(): a risk the label does not match (or no label)
            # would let the policy and the records disagree about what the auditor said.
            return f"returned an OK verdict with risk {verdict.risk!r} and label {verdict.label!r}"
    return None
