"""LangGraph: pause a graph on an escalation, continue it when a reviewer decides.

Inside any node, :func:`review_gate` audits a trace. When the policy escalates and the graph
runs with a checkpointer and a ``thread_id``, the node pauses with LangGraph's ``interrupt()``;
the interrupt's value is small and carries no audited text::

    {"type": "traceguard_review", "escalation_id": "...", "reason": "...", "risk": 0.5,
     "label": "potentially_harmful", "categories": [...], "held_as": "block"}

The item waits in the guard's :class:`~traceguard.ReviewQueue` (with the thread id). Resuming
with ``Command(resume=outcome)`` (``ReviewOutcome.to_dict()``, or just ``"approved"`` /
``"rejected"``) makes the gate return: approved, the held output goes on as if allowed;
rejected, the decision blocks (the node answers with the policy's refusal). The queue is the
source of truth: its record wins over the resume value, and an approval it does not record
releases nothing (the node pauses again), so a caller who can resume a thread cannot approve
its own output. Without a queue the resume value is trusted as it is. Without a
checkpointer or a thread id nothing can pause: the gate returns the policy's fallback
disposition (or, if the guard has ``on_escalate="wait"``, waits for the reviewer in place).

:func:`resume_reviewed` resumes every paused thread whose item a reviewer has resolved, each
exactly once (it claims a delivery mark in the queue before resuming, and releases it if the
resume fails)::

    def call_model(state):
        reply = model.invoke(state["messages"])
        decision = review_gate(guard, trace_of(state, reply))
        if decision.blocked:
            return {"messages": [AIMessage(refusal)]}
        return {"messages": [reply]}

    graph = builder.compile(checkpointer=InMemorySaver())
    ...
    resume_reviewed(graph, queue)     # e.g. every few seconds, or after each review

**Re-execution.** LangGraph runs a paused node again from its start when it resumes. The gate
derives the escalation id from the thread, the task and the trace's content, so the re-run finds
its item instead of filing a new one, and takes the recorded verdict instead of auditing again;
the reviewer's decision applies only to the exact output they saw. Put the gate where the
output to hold is already fixed (after the model call, or in a node of its own), because a
node that calls the model again before the gate gets a new output, which is audited afresh.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from traceguard._decision import Decision, ReviewOutcome
from traceguard._guard import Guard
from traceguard._trace import Trace
from traceguard._version import install_hint
from traceguard.review._model import Escalation, verdict_from_dict
from traceguard.review._sink import ReviewQueue
from traceguard.review._store import EscalationStore

try:
    from langchain_core.runnables import RunnableConfig
    from langgraph.config import get_config
    from langgraph.types import Command, Interrupt, interrupt
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        f"traceguard.integrations.langgraph needs langgraph: {install_hint('langgraph')}"
    ) from exc

__all__ = [
    "INTERRUPT_TYPE",
    "ResumedThread",
    "areview_gate",
    "aresume_reviewed",
    "gate_trace",
    "pause_for_review",
    "review_gate",
    "resume_reviewed",
]

logger = logging.getLogger("traceguard.integrations.langgraph")

INTERRUPT_TYPE = "traceguard_review"
"""``type`` of the interrupt values this module raises (to tell them from others)."""

_CHECKPOINTER_KEY = "__pregel_checkpointer"
_MAX_RESUME_MISMATCHES = 8


# -- the gate: shared, I/O-free steps ----------------------------------------------------------


@dataclass(frozen=True)
class _Gate:
    """What the gate knows about the node it runs in."""

    trace: Trace
    """The trace with the LangGraph origin (and, when it can pause, a fixed escalation id)."""
    can_pause: bool


def _checkpointer_key() -> str:
    try:
        from langgraph.constants import CONFIG_KEY_CHECKPOINTER

        return str(CONFIG_KEY_CHECKPOINTER)
    except ImportError:  # pragma: no cover - later langgraph versions
        return _CHECKPOINTER_KEY


def _current_config(config: RunnableConfig | None) -> Mapping[str, Any]:
    if config is not None:
        return config
    try:
        return get_config()
    except RuntimeError:  # called outside a graph: nothing to pause
        return {}


def _prepare(trace: Trace, config: RunnableConfig | None) -> _Gate:
    current = _current_config(config)
    configurable = current.get("configurable") or {}
    thread_id = configurable.get("thread_id")
    namespace = configurable.get("checkpoint_ns") or ""
    can_pause = configurable.get(_checkpointer_key()) is not None and thread_id is not None
    metadata: dict[str, Any] = {**trace.metadata, "integration": "langgraph"}
    if thread_id is not None:
        metadata["thread_id"] = str(thread_id)
    run_id = current.get("run_id")
    if run_id is not None and "run_id" not in metadata:
        metadata["run_id"] = str(run_id)
    if can_pause:
        # The same thread, task and content give the same id: a node re-run on resume finds
        # its item. A new output (the node called the model again) gets a new item.
        key = f"langgraph\0{thread_id}\0{namespace}\0{trace.content_hash()}"
        metadata["escalation_id"] = "lg-" + hashlib.sha256(key.encode()).hexdigest()[:32]
    return _Gate(trace=dataclasses.replace(trace, metadata=metadata), can_pause=can_pause)


def _payload(decision: Decision) -> dict[str, Any]:
    verdict = decision.verdict
    return {
        "type": INTERRUPT_TYPE,
        "escalation_id": decision.escalation_id,
        "reason": decision.reason,
        "risk": verdict.risk,
        "label": verdict.label.value if verdict.label is not None else None,
        "categories": list(verdict.categories),
        "held_as": decision.disposition.value,
    }


def _outcome_of(value: Any, escalation_id: str) -> ReviewOutcome | None:
    """The review outcome a resume value carries for ``escalation_id``; None when the value is
    meant for another item (its id differs)."""
    if isinstance(value, ReviewOutcome):
        return value if value.escalation_id == escalation_id else None
    if isinstance(value, str):
        value = {"resolution": value}
    if isinstance(value, Mapping):
        given = value.get("escalation_id")
        if given is not None and given != escalation_id:
            return None
        resolution = value.get("resolution")
        if resolution in ("approved", "rejected"):
            return ReviewOutcome(
                escalation_id=escalation_id,
                resolution=resolution,
                reviewer=_text(value.get("reviewer")),
                note=_text(value.get("note")),
                resolved_at=_text(value.get("resolved_at")),
            )
    # Unreadable: no decision, so the policy's fallback applies (never an approval).
    logger.warning("unreadable resume value for escalation %s: no decision taken", escalation_id)
    return ReviewOutcome(escalation_id=escalation_id, resolution="timeout")


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def _recorded(queue: ReviewQueue | None, gate: _Gate) -> Escalation | None:
    """The item a previous run of this node filed, when it holds this very output."""
    if queue is None or not gate.can_pause:
        return None
    escalation_id = gate.trace.metadata["escalation_id"]
    filed, _ = queue.outcome(escalation_id)
    if not filed:
        return None
    item = queue.store.find(escalation_id)
    if item is None:  # accepted by this process but not written yet
        queue.flush(queue.close_timeout)
        item = queue.store.find(escalation_id)
    if item is None or item.content_hash != gate.trace.content_hash():
        return None
    return item


def _replayed(guard: Guard, gate: _Gate, item: Escalation) -> Decision | None:
    """The decision recorded for ``item``, rebuilt from its stored verdict (no new audit)."""
    decision = guard.policy.decide(verdict_from_dict(item.verdict), gate.trace)
    if not decision.escalated:
        return None  # the policy changed since: decide afresh
    return dataclasses.replace(decision, escalation_id=item.escalation_id)


def _store_outcome(queue: ReviewQueue, escalation_id: str) -> ReviewOutcome | None:
    try:
        return queue.store.outcome(escalation_id)[1]
    except Exception:
        return None  # unknown reads as "no decision recorded", never as an approval


def _checked(
    outcome: ReviewOutcome, queue: ReviewQueue | None, escalation_id: str
) -> ReviewOutcome | None:
    """The outcome to act on for a resume value, or None to keep waiting.

    With a queue, the queue is the source of truth: a resume value is only a wake-up call,
    since whoever can call ``Command(resume=...)`` (an agent server's API client, say) is not
    necessarily a reviewer. The queue's record wins over any value; an approval the queue does
    not record releases nothing (the gate pauses again). A rejection or a timeout without a
    record is honoured: it only holds the output back. Without a queue there is no record to
    check, and the caller's value is all there is.
    """
    if queue is None:
        return outcome
    recorded = _store_outcome(queue, escalation_id)
    if recorded is not None:
        if recorded.resolution != outcome.resolution:
            logger.warning(
                "escalation %s resumed as %s but the queue records %s by %s: using the queue",
                escalation_id,
                outcome.resolution,
                recorded.resolution,
                recorded.reviewer,
            )
        return recorded
    if outcome.resolution == "approved":
        logger.warning(
            "escalation %s resumed as approved but the queue records no decision: still held",
            escalation_id,
        )
        return None
    return outcome


def _pause(decision: Decision, gate: _Gate, queue: ReviewQueue | None) -> Decision:
    """Interrupt the graph for ``decision``; on resume, the decision after the review."""
    escalation_id = decision.escalation_id
    assert escalation_id is not None
    for _ in range(_MAX_RESUME_MISMATCHES):
        outcome = _outcome_of(interrupt(_payload(decision)), escalation_id)
        if outcome is None:
            continue  # a resume value for another item this node raised before: pause again
        checked = _checked(outcome, queue, escalation_id)
        if checked is None:
            continue  # an approval no reviewer recorded: pause again
        return decision.after_review(
            checked, thinking=gate.trace.thinking, response=gate.trace.response
        )
    return decision


# -- the gate in two steps, for a caller that audits in one node and pauses in another ----------


def gate_trace(trace: Trace, *, config: RunnableConfig | None = None) -> tuple[Trace, bool]:
    """``trace`` with its LangGraph origin, and whether the running graph can pause here.

    The origin goes into ``trace.metadata``: ``integration="langgraph"``, ``thread_id`` and
    ``run_id`` from ``config`` (default: the running node's), and, when the graph can pause (a
    checkpointer and a thread id), a fixed ``escalation_id`` derived from the thread and the
    content. Audit the returned trace with ``guard.check_batch([trace], wait_for_review=False)``
    when it can pause, then hand an escalated decision to :func:`pause_for_review`.
    """
    gate = _prepare(trace, config)
    return gate.trace, gate.can_pause


def pause_for_review(
    decision: Decision,
    *,
    thinking: str | None,
    response: str | None,
    queue: ReviewQueue | None = None,
) -> Decision:
    """Pause the graph on an escalated ``decision``; on resume, the decision after review.

    The split form of :func:`review_gate` for middleware that audits in one node (the model
    call) and pauses in a later one (``after_model``), so the re-run on resume repeats only the
    pause, never the model call. ``thinking`` and ``response`` are the held output's (approved,
    they go on as allowed). ``queue`` (the guard's ``review_queue``) is the source of truth:
    its record overrides the resume value, and an approval it does not record pauses again.
    """
    if not decision.escalated or decision.escalation_id is None:
        raise ValueError("only an escalation with an escalation_id can pause for review")
    held = Trace(query="", response=response or "", thinking=thinking)
    return _pause(decision, _Gate(trace=held, can_pause=True), queue)


# -- the gate: sync and async shells --------------------------------------------------------------


def review_gate(guard: Guard, trace: Trace, *, config: RunnableConfig | None = None) -> Decision:
    """Audit ``trace`` inside a LangGraph node; on an escalation, pause the graph until review.

    Returns the decision to act on: unchanged when nothing escalated; after a resume,
    approved → ``disposition`` allow with the held output, rejected → block. Without a
    checkpointer (or thread id) the escalation keeps the policy's fallback disposition.
    ``config`` defaults to the running node's (``langgraph.config.get_config()``).

    Raises:
        langgraph.errors.GraphInterrupt: (via ``interrupt()``) to pause the graph; LangGraph
            handles it. Do not catch it in the node.
    """
    gate = _prepare(trace, config)
    queue = guard.review_queue
    item = _recorded(queue, gate)
    decision = _replayed(guard, gate, item) if item is not None else None
    if decision is None:
        wait = None if not gate.can_pause else False
        decision = guard.check_batch([gate.trace], wait_for_review=wait)[0]
    if decision.escalated and gate.can_pause and decision.review is None:
        return _pause(decision, gate, queue)
    return decision


async def areview_gate(
    guard: Guard, trace: Trace, *, config: RunnableConfig | None = None
) -> Decision:
    """Async :func:`review_gate` (the audit and any wait never block the event loop)."""
    import asyncio

    gate = _prepare(trace, config)
    queue = guard.review_queue
    item = await asyncio.to_thread(_recorded, queue, gate)
    decision = _replayed(guard, gate, item) if item is not None else None
    if decision is None:
        wait = None if not gate.can_pause else False
        decision = (await guard.acheck_batch([gate.trace], wait_for_review=wait))[0]
    if decision.escalated and gate.can_pause and decision.review is None:
        return _pause(decision, gate, queue)
    return decision


# -- resuming reviewed threads ------------------------------------------------------------------


@dataclass(frozen=True)
class ResumedThread:
    """One thread :func:`resume_reviewed` took care of."""

    escalation_id: str
    thread_id: str
    resolution: str
    resumed: bool
    """False when no interrupt of this item was waiting (already resumed, or the thread is
    gone); the item is marked delivered so it is not tried again."""
    result: Any = None
    """What the graph returned when resumed."""


def _store_of(queue: ReviewQueue | EscalationStore) -> EscalationStore:
    return queue.store if isinstance(queue, ReviewQueue) else queue


def _thread_config(config: RunnableConfig | None, thread_id: str) -> RunnableConfig:
    base: RunnableConfig = RunnableConfig(**(config or {}))
    base["configurable"] = {**base.get("configurable", {}), "thread_id": thread_id}
    return base


def _waiting_interrupt(interrupts: Sequence[Interrupt], escalation_id: str) -> Interrupt | None:
    for pending in interrupts:
        value = pending.value
        if (
            isinstance(value, Mapping)
            and value.get("type") == INTERRUPT_TYPE
            and value.get("escalation_id") == escalation_id
        ):
            return pending
    return None


def _pending_interrupts(state: Any) -> list[Interrupt]:
    found = list(getattr(state, "interrupts", ()) or ())
    for task in getattr(state, "tasks", ()) or ():
        found.extend(getattr(task, "interrupts", ()) or ())
    return found


def resume_reviewed(
    graph: Any,
    queue: ReviewQueue | EscalationStore,
    *,
    config: RunnableConfig | None = None,
    consumer: str = "resume_reviewed",
    limit: int = 100,
) -> list[ResumedThread]:
    """Resume every thread of ``graph`` paused on an item a reviewer resolved, once each.

    Args:
        graph: the compiled graph (with the checkpointer the threads were paused with).
        queue: the review queue (or its store).
        config: extra config for each resume (its ``thread_id`` is set per item).
        consumer: the name recorded in the item's delivery mark.
        limit: items handled per call.

    An item is claimed (delivery mark) before its thread resumes; when resuming raises, the
    claim is released (the item is tried again next call) and the exception propagates.
    """
    store = _store_of(queue)
    done: list[ResumedThread] = []
    for item in store.undelivered(integration="langgraph", limit=limit):
        outcome = item.outcome()
        if outcome is None or item.thread_id is None:
            continue
        thread_config = _thread_config(config, item.thread_id)
        waiting = _waiting_interrupt(
            _pending_interrupts(graph.get_state(thread_config)), item.escalation_id
        )
        if not store.claim_delivery(item.escalation_id, consumer):
            continue  # another resumer has it
        if waiting is None:
            done.append(_not_waiting(item, outcome))
            continue
        try:
            result = graph.invoke(Command(resume={waiting.id: outcome.to_dict()}), thread_config)
        except BaseException:
            store.release_delivery(item.escalation_id, consumer)
            raise
        done.append(
            ResumedThread(item.escalation_id, item.thread_id, outcome.resolution, True, result)
        )
    return done


async def aresume_reviewed(
    graph: Any,
    queue: ReviewQueue | EscalationStore,
    *,
    config: RunnableConfig | None = None,
    consumer: str = "resume_reviewed",
    limit: int = 100,
) -> list[ResumedThread]:
    """Async :func:`resume_reviewed` (``aget_state`` / ``ainvoke``; the queue in a thread)."""
    import asyncio

    store = _store_of(queue)
    done: list[ResumedThread] = []
    items = await asyncio.to_thread(store.undelivered, integration="langgraph", limit=limit)
    for item in items:
        outcome = item.outcome()
        if outcome is None or item.thread_id is None:
            continue
        thread_config = _thread_config(config, item.thread_id)
        state = await graph.aget_state(thread_config)
        waiting = _waiting_interrupt(_pending_interrupts(state), item.escalation_id)
        if not await asyncio.to_thread(store.claim_delivery, item.escalation_id, consumer):
            continue
        if waiting is None:
            done.append(_not_waiting(item, outcome))
            continue
        try:
            result = await graph.ainvoke(
                Command(resume={waiting.id: outcome.to_dict()}), thread_config
            )
        except BaseException:
            await asyncio.to_thread(store.release_delivery, item.escalation_id, consumer)
            raise
        done.append(
            ResumedThread(item.escalation_id, item.thread_id, outcome.resolution, True, result)
        )
    return done


def _not_waiting(item: Escalation, outcome: ReviewOutcome) -> ResumedThread:
    logger.info(
        "escalation %s: thread %s has no interrupt waiting for it (already resumed?)",
        item.escalation_id,
        item.thread_id,
    )
    assert item.thread_id is not None
    return ResumedThread(item.escalation_id, item.thread_id, outcome.resolution, False)
