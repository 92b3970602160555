"""The :class:`Guard`: audit a trace, decide with a policy, record to sinks, act."""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import logging
import os
import re
import threading
import time
import uuid
from collections.abc import Sequence
from typing import Literal, cast

from traceguard._auditor import Auditor
from traceguard._checkpoints import AuditSchedule, checkpoint_auditor
from traceguard._decision import Decision, ReviewOutcome
from traceguard._exceptions import AuditorError, Blocked, ConfigurationError, Escalated
from traceguard._policy import Policy
from traceguard._redaction_check import DecisionFlow
from traceguard._sinks import AuditRecord, BackgroundSink, Sink
from traceguard._tools import ToolContext, tool_call_trace
from traceguard._trace import ToolCall, Trace
from traceguard._verdict import AuditStatus, ErrorInfo, Label, Verdict
from traceguard.review._sink import ReviewQueue
from traceguard.review._wait import ReviewWait

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

    Every escalated decision carries an ``escalation_id``: the id under which a
    :class:`~traceguard.ReviewQueue` among the sinks files it. With ``on_escalate="wait"`` the
    check holds until a reviewer decides or ``review_timeout`` seconds pass: approved, the
    output goes on as allowed; rejected, it is blocked (:class:`Blocked`); no decision in time,
    the policy's ``escalation_fallback`` stands (:class:`Escalated` when that blocks). Batch
    checks wait for all their escalations within one ``review_timeout``.

    The guard does not own the auditor: :meth:`close` flushes and closes the sinks only, unless
    ``owns_auditor`` is True (a guard built from a configuration, :meth:`from_config`).

    ``checkpoints`` (an :class:`~traceguard.AuditSchedule`) makes every streaming integration
    audit the partial output while the model is still writing it, and stop the upstream as soon
    as a checkpoint blocks (see the README's "Mid-stream audit").
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
        on_escalate: Literal["fallback", "wait"] = "fallback",
        review_timeout: float = 300.0,
        checkpoints: AuditSchedule | None = None,
    ) -> None:
        if on_escalate not in ("fallback", "wait"):
            raise ConfigurationError(
                f"on_escalate must be 'fallback' or 'wait', not {on_escalate!r}"
            )
        if not review_timeout > 0:
            raise ConfigurationError("review_timeout must be a positive number of seconds")
        self.auditor = auditor
        self.owns_auditor = owns_auditor
        self.policy = policy if policy is not None else Policy()
        self.raise_on_block = raise_on_block
        self.on_escalate = on_escalate
        self.review_timeout = float(review_timeout)
        self.sinks: tuple[Sink, ...] = tuple(
            BackgroundSink(sink) if background_slow_sinks and sink.slow else sink for sink in sinks
        )
        self.review_queue = _review_queue(self.sinks)
        """The :class:`~traceguard.ReviewQueue` among the sinks, if any."""
        if on_escalate == "wait" and self.review_queue is None:
            raise ConfigurationError(
                "on_escalate='wait' needs a ReviewQueue among the guard's sinks: "
                "nobody could approve what it waits for"
            )
        self._errors_lock = threading.Lock()
        self._sink_errors = 0
        self.checkpoints = checkpoints
        """When streams are audited before they end; None: only complete thinking and output."""
        self._checkpoint_guard: Guard | None = None

    @property
    def checkpoint_guard(self) -> Guard:
        """The guard checkpoint audits go through: this one's policy, sinks and review settings
        with the checkpoint auditor (the schedule's, else :func:`checkpoint_auditor` of this
        guard's: a GuardTrace auditor in full mode scores checkpoints in score mode)."""
        if self._checkpoint_guard is None:
            chosen = self.checkpoints.auditor if self.checkpoints is not None else None
            auditor = chosen if chosen is not None else checkpoint_auditor(self.auditor)
            if auditor is self.auditor:
                self._checkpoint_guard = self
            else:
                twin = copy.copy(self)
                twin.auditor = auditor
                twin.owns_auditor = False  # this guard closes what it owns
                twin._checkpoint_guard = twin
                self._checkpoint_guard = twin
        return self._checkpoint_guard

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
            Escalated: the policy escalated and the output is held back meanwhile (with
                ``on_escalate="wait"``: no reviewer decided within ``review_timeout``).
            Blocked: the policy blocked the output, or a reviewer rejected it.
        """
        decision = self._settle(trace, self._decide_sync([trace])[0])
        if self._holds(decision):
            assert decision.escalation_id is not None
            decision = _reviewed(decision, self.wait_for_review(decision.escalation_id), trace)
        return _act(decision, raise_on_block=self.raise_on_block)

    async def acheck(self, trace: Trace) -> Decision:
        """Async :meth:`check`; same rules, same outcome. Waiting for a reviewer never blocks
        the event loop."""
        decision = await self._asettle(trace, (await self._decide_async([trace]))[0])
        if self._holds(decision):
            assert decision.escalation_id is not None
            outcome = await self.await_review(decision.escalation_id)
            decision = _reviewed(decision, outcome, trace)
        return _act(decision, raise_on_block=self.raise_on_block)

    def check_batch(
        self, traces: Sequence[Trace], *, wait_for_review: bool | None = None
    ) -> list[Decision]:
        """Check several traces in one auditor batch; one decision each, in order.

        Never raises :class:`Blocked`: inspect ``decision.blocked`` instead, because one blocked
        trace must not hide the decisions about the others. ``wait_for_review`` overrides
        ``on_escalate`` for this call (False: return escalations at once, for a caller that
        handles the review itself, as the LangGraph gate does by pausing the graph).
        """
        traces = list(traces)
        decided = self._decide_sync(traces)
        decisions = [self._settle(t, d) for t, d in zip(traces, decided, strict=True)]
        deadline = time.monotonic() + self.review_timeout
        for index, (trace, decision) in enumerate(zip(traces, decisions, strict=True)):
            if self._holds(decision, wait_for_review):
                assert decision.escalation_id is not None
                left = max(0.0, deadline - time.monotonic())
                outcome = self.wait_for_review(decision.escalation_id, left)
                decisions[index] = _reviewed(decision, outcome, trace)
        return decisions

    async def acheck_batch(
        self, traces: Sequence[Trace], *, wait_for_review: bool | None = None
    ) -> list[Decision]:
        """Async :meth:`check_batch`; never raises :class:`Blocked`."""
        traces = list(traces)
        decided = await self._decide_async(traces)
        decisions = [await self._asettle(t, d) for t, d in zip(traces, decided, strict=True)]
        held = [i for i, d in enumerate(decisions) if self._holds(d, wait_for_review)]
        if held:
            outcomes = await asyncio.gather(
                *(self.await_review(cast(str, decisions[i].escalation_id)) for i in held)
            )
            for index, outcome in zip(held, outcomes, strict=True):
                decisions[index] = _reviewed(decisions[index], outcome, traces[index])
        return decisions

    def wait_for_review(self, escalation_id: str, timeout: float | None = None) -> ReviewOutcome:
        """Wait until a reviewer decides on ``escalation_id``, at most ``timeout`` seconds
        (default ``review_timeout``); the outcome's resolution is ``timeout`` if none did.

        Raises:
            ConfigurationError: the guard has no review queue among its sinks.
        """
        queue = self._queue_for_review()
        wait = ReviewWait(escalation_id, self._timeout(timeout), now=time.monotonic())
        while True:
            step = wait.step(_lookup(queue, escalation_id), now=time.monotonic())
            if isinstance(step, ReviewOutcome):
                return step
            time.sleep(step)

    async def await_review(self, escalation_id: str, timeout: float | None = None) -> ReviewOutcome:
        """Async :meth:`wait_for_review`: sleeps with ``asyncio.sleep`` and looks the item up in
        a worker thread, so the event loop is never blocked."""
        queue = self._queue_for_review()
        wait = ReviewWait(escalation_id, self._timeout(timeout), now=time.monotonic())
        while True:
            outcome = await asyncio.to_thread(_lookup, queue, escalation_id)
            step = wait.step(outcome, now=time.monotonic())
            if isinstance(step, ReviewOutcome):
                return step
            await asyncio.sleep(step)

    def check_tool_call(self, call: ToolCall, context: ToolContext | None = None) -> Decision:
        """Audit a pending tool call, with the reasoning that led to it, before it runs.

        ``context`` defaults to the one published with :func:`traceguard.tool_context`. Never
        raises :class:`Blocked`: run the tool only when ``decision.blocked`` is False; else send
        ``decision.tool_message`` back as its result, or end the run when ``decision.stop_run``.
        """
        return self.check_batch([tool_call_trace(call, context)])[0]

    async def acheck_tool_call(
        self, call: ToolCall, context: ToolContext | None = None
    ) -> Decision:
        """Async :meth:`check_tool_call`."""
        return (await self.acheck_batch([tool_call_trace(call, context)]))[0]

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
            extra = self._owned_checkpoint_auditor()
            if extra is not None:
                extra.close()

    async def aclose(self) -> None:
        """Async :meth:`close`; waits for background sinks in a worker thread."""
        await asyncio.to_thread(self._close_sinks)
        if self.owns_auditor:
            await self.auditor.aclose()
            extra = self._owned_checkpoint_auditor()
            if extra is not None:
                await extra.aclose()

    def _owned_checkpoint_auditor(self) -> Auditor | None:
        """A checkpoint auditor of its own, built with this guard (from a configuration)."""
        chosen = self.checkpoints.auditor if self.checkpoints is not None else None
        return chosen if chosen is not None and chosen is not self.auditor else None

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

    def _decide_sync(self, traces: list[Trace]) -> list[Decision]:
        """Audit and decide, redaction checks included (:mod:`traceguard._redaction_check`)."""
        flow = DecisionFlow(self.policy, traces, self._audit_sync(traces))
        if flow.checks:
            flow.resolve(self._audit_sync(flow.checks))
        return flow.decisions

    async def _decide_async(self, traces: list[Trace]) -> list[Decision]:
        flow = DecisionFlow(self.policy, traces, await self._audit_async(traces))
        if flow.checks:
            flow.resolve(await self._audit_async(flow.checks))
        return flow.decisions

    def _settle(self, trace: Trace, decision: Decision) -> Decision:
        """Number an escalation and record: the one code path behind every check method."""
        if decision.escalated:
            decision = dataclasses.replace(decision, escalation_id=_new_escalation_id(trace))
        if self.sinks:
            self._record(trace, decision)
        return decision

    async def _asettle(self, trace: Trace, decision: Decision) -> Decision:
        if not self._needs_thread():
            return self._settle(trace, decision)
        # A file or SQLite sink does blocking I/O; keep it off the event loop.
        return await asyncio.to_thread(self._settle, trace, decision)

    def _holds(self, decision: Decision, wait: bool | None = None) -> bool:
        """True when this decision waits for a reviewer before it is acted on."""
        if not (
            (self.on_escalate == "wait" if wait is None else wait)
            and decision.escalated
            and decision.escalation_id is not None
            and decision.review is None
        ):
            return False
        # A queue that did not take the escalation (closed, broken) has nothing a reviewer
        # could ever decide: waiting would only add the whole timeout to the fallback.
        queue = self.review_queue
        if queue is None or not queue.accepted(decision.escalation_id):
            logger.warning(
                "escalation %s is not in the review queue: the policy's fallback applies at once",
                decision.escalation_id,
            )
            return False
        return True

    def _queue_for_review(self) -> ReviewQueue:
        if self.review_queue is None:
            raise ConfigurationError(
                "waiting for a review needs a ReviewQueue among the guard's sinks"
            )
        return self.review_queue

    def _timeout(self, timeout: float | None) -> float:
        return self.review_timeout if timeout is None else max(0.0, float(timeout))

    def _record(self, trace: Trace, decision: Decision) -> None:
        # Recording never changes the outcome: neither a failing sink nor a record that cannot be
        # built (a trace whose content cannot be hashed) may turn a block into an exception that
        # a caller could mistake for something else, or an allow into a crash.
        try:
            link = None
            if self.review_queue is not None and decision.escalation_id is not None:
                link = self.review_queue.link(decision.escalation_id)
            record = AuditRecord.from_decision(trace, decision, review_url=link)
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

    def _needs_thread(self) -> bool:
        return any(not isinstance(sink, BackgroundSink) for sink in self.sinks)


def _act(decision: Decision, *, raise_on_block: bool) -> Decision:
    """Return ``decision``, or raise when it holds the output back and the caller wants that."""
    if raise_on_block and decision.blocked:
        if decision.awaiting_review:
            raise Escalated(decision)
        raise Blocked(decision)
    return decision


def _reviewed(decision: Decision, outcome: ReviewOutcome, trace: Trace) -> Decision:
    return decision.after_review(outcome, thinking=trace.thinking, response=trace.response)


# Ids appear in URLs and file names: letters, digits and a few separators only.
_ESCALATION_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")


def _new_escalation_id(trace: Trace) -> str:
    """A fresh id, unless the integration fixed one in the trace's metadata (a LangGraph node
    re-run on resume must file the same item again, not a new one)."""
    given = trace.metadata.get("escalation_id") if trace.metadata else None
    if isinstance(given, str) and _ESCALATION_ID.fullmatch(given):
        return given
    return uuid.uuid4().hex


def _review_queue(sinks: Sequence[Sink]) -> ReviewQueue | None:
    queues = [
        s.inner if isinstance(s, BackgroundSink) else s
        for s in sinks
        if isinstance(s.inner if isinstance(s, BackgroundSink) else s, ReviewQueue)
    ]
    if len(queues) > 1:
        raise ConfigurationError("a guard takes at most one ReviewQueue among its sinks")
    return cast("ReviewQueue | None", queues[0]) if queues else None


def _lookup(queue: ReviewQueue, escalation_id: str) -> ReviewOutcome | None:
    """The reviewer's decision so far; a database hiccup reads as "not yet" (the wait goes on
    to its deadline and then takes the policy's fallback, never an approval)."""
    try:
        return queue.outcome(escalation_id)[1]
    except Exception as exc:
        logger.debug("review lookup of %s failed: %r", escalation_id, exc)
        return None


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
