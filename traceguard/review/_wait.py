"""Waiting for a reviewer, without I/O: :class:`ReviewWait` says when to look again.

``Guard.wait_for_review`` (sleeping thread) and ``Guard.await_review`` (``asyncio.sleep``, the
lookup in a worker thread) drive the same object, so both wait the same way: poll the queue
soon after filing (a reviewer may already be looking), then less and less often, never past
the deadline.
"""

from __future__ import annotations

from traceguard._decision import ReviewOutcome

__all__ = ["FIRST_POLL_S", "MAX_POLL_S", "ReviewWait"]

FIRST_POLL_S = 0.02
MAX_POLL_S = 0.5
"""The longest a decided review waits to be noticed."""


class ReviewWait:
    """The schedule of one wait for ``escalation_id``, ``timeout`` seconds from ``now``."""

    def __init__(self, escalation_id: str, timeout: float, *, now: float) -> None:
        if timeout < 0:
            raise ValueError("a review timeout cannot be negative")
        self.escalation_id = escalation_id
        self.deadline = now + timeout
        self._interval = FIRST_POLL_S

    def step(self, outcome: ReviewOutcome | None, *, now: float) -> ReviewOutcome | float:
        """Given what the queue says now: the outcome when decided or out of time, else the
        seconds to sleep before looking again."""
        if outcome is not None:
            return outcome
        remaining = self.deadline - now
        if remaining <= 0:
            return ReviewOutcome(escalation_id=self.escalation_id, resolution="timeout")
        delay = min(self._interval, remaining)
        self._interval = min(self._interval * 1.5, MAX_POLL_S)
        return delay
