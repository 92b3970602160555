"""Issue 13, fault 8: the review queue must neither stall the agent nor lose escalations.

Another process holds the database's write lock for as long as a test says. Before the fix,
every ``guard.check`` waited for that lock (the whole lock wait) and, with a short timeout,
failed and lost its escalation. Now the call path never touches the database: everything is
accepted, counted as pending, kept in a spill file, written once the lock is gone, and replayed
by the next queue if the process dies first.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from traceguard import Guard, ReviewQueue, Trace
from traceguard.review import EscalationStore
from traceguard.review._spill import spill_dir
from traceguard.testing import ScriptedAuditor, Step

_HOLD_LOCK = """
import sqlite3, sys
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("BEGIN IMMEDIATE")
db.execute("INSERT INTO facets (kind, value) VALUES ('lock', 'held')")
print("locked", flush=True)
sys.stdin.readline()
db.execute("ROLLBACK")
"""


class LockHolder:
    """Another process holding the database's write lock until :meth:`release`."""

    def __init__(self, path: Path) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", _HOLD_LOCK, str(path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        assert self.process.stdout.readline().strip() == "locked"

    def release(self) -> None:
        if self.process.poll() is None:
            assert self.process.stdin is not None
            self.process.stdin.write("\n")
            self.process.stdin.flush()
            assert self.process.wait(30) == 0


@pytest.fixture
def queue_path(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "reviews.sqlite"
    EscalationStore(path).close()  # the schema exists before the lock is taken
    yield path


def _escalating_guard(queue: ReviewQueue) -> Guard:
    return Guard(
        ScriptedAuditor(rule=lambda trace: Step(error="timeout")),
        sinks=[queue],
        raise_on_block=False,
    )


def _eventually(condition: Callable[[], bool]) -> None:
    for _ in range(3000):  # a hang guard (30 s), not a timing assertion
        if condition():
            return
        time.sleep(0.01)
    raise AssertionError("condition never became true")


def _run_with_hang_guard(work: threading.Thread) -> None:
    work.start()
    work.join(120)  # a hang guard, not a timing assertion: a stalled call never returns here
    assert not work.is_alive(), "guard.check stalled on the locked review queue"


def test_checks_never_wait_for_a_locked_database_and_nothing_is_lost(queue_path: Path) -> None:
    queue = ReviewQueue(queue_path, timeout=0.05)
    guard = _escalating_guard(queue)
    holder = LockHolder(queue_path)
    decisions = []

    def check_all() -> None:
        for n in range(450):
            decisions.append(guard.check(Trace(query="q", response=f"r{n}", id=f"t{n}")))

    try:
        _run_with_hang_guard(threading.Thread(target=check_all))
        # The lock was held throughout: every escalation was accepted without the database.
        assert guard.sink_errors == 0
        assert queue.pending_writes == 450
        assert all(d.escalated and d.escalation_id for d in decisions)
        _eventually(lambda: queue.failures > 0)  # the writer tries, fails, keeps everything
        assert "locked" in (queue.last_error or "")
        assert queue.pending_writes == 450
    finally:
        holder.release()
    assert queue.flush(60)
    assert queue.pending_writes == 0 and queue.written == 450
    store = EscalationStore(queue_path)
    assert store.counts()["pending"] == 450
    assert {store.get(d.escalation_id or "").trace_id for d in decisions} == {
        f"t{n}" for n in range(450)
    }
    store.close()
    queue.close()
    assert not spill_dir(queue_path).exists()  # emptied and removed once all is stored


def test_close_says_what_it_could_not_write_and_the_next_queue_writes_it(
    queue_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    queue = ReviewQueue(queue_path, timeout=0.05)
    guard = _escalating_guard(queue)
    holder = LockHolder(queue_path)
    try:
        for n in range(20):
            guard.check(Trace(query="q", response=f"r{n}", id=f"t{n}"))
        with caplog.at_level(logging.WARNING, logger="traceguard.review"):
            queue.close(timeout=0.2)
        assert queue.undelivered == 20
        assert "20 escalation(s) not in the database" in caplog.text
        assert len(list(spill_dir(queue_path).glob("*.spill"))) == 1
    finally:
        holder.release()
    reopened = ReviewQueue(queue_path)
    assert reopened.counts()["pending"] == 20  # replayed from the spill file
    reopened.close()
    assert not spill_dir(queue_path).exists()


_EMIT_THEN_DIE = """
import sys
from traceguard import Guard, ReviewQueue, Trace
from traceguard.testing import ScriptedAuditor, Step
queue = ReviewQueue(sys.argv[1], timeout=0.05)
guard = Guard(ScriptedAuditor(rule=lambda t: Step(error="timeout")), sinks=[queue],
              raise_on_block=False)
ids = [guard.check(Trace(query="q", response=str(n), id=f"k{n}")).escalation_id
       for n in range(50)]
print(",".join(ids), flush=True)
sys.stdin.readline()  # killed here, the database still locked
"""


def test_escalations_of_a_killed_process_are_replayed(queue_path: Path) -> None:
    holder = LockHolder(queue_path)
    child = subprocess.Popen(
        [sys.executable, "-c", _EMIT_THEN_DIE, str(queue_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        ids = child.stdout.readline().strip().split(",")
        assert len(ids) == 50
        os.kill(child.pid, signal.SIGKILL)
        child.wait(30)
    finally:
        holder.release()
    store = EscalationStore(queue_path)
    assert store.counts()["pending"] == 0  # the killed process never reached the database
    store.close()
    queue = ReviewQueue(queue_path)  # a restart: adopts the dead process's spill file
    assert queue.counts()["pending"] == 50
    assert {queue.get(i).trace_id for i in ids} == {f"k{n}" for n in range(50)}
    queue.close()
    again = ReviewQueue(queue_path)  # replays nothing twice
    assert again.counts()["pending"] == 50
    again.close()


def test_a_live_queue_does_not_adopt_another_live_queues_spill(queue_path: Path) -> None:
    holder = LockHolder(queue_path)
    first = ReviewQueue(queue_path, timeout=0.05)
    try:
        _escalating_guard(first).check(Trace(query="q", response="r", id="a"))
        second = ReviewQueue(queue_path, timeout=0.05)
        assert second.pending_writes == 0 and first.pending_writes == 1
    finally:
        holder.release()
    assert first.flush(30) and second.flush(30)
    assert second.counts()["pending"] == 1
    first.close()
    second.close()


def test_backlog_over_max_pending_waits_on_disk(queue_path: Path) -> None:
    holder = LockHolder(queue_path)
    queue = ReviewQueue(queue_path, timeout=0.05, max_pending=5)
    guard = _escalating_guard(queue)
    try:
        for n in range(12):
            guard.check(Trace(query="q", response=f"r{n}", id=f"t{n}"))
        assert queue.pending_writes == 12
    finally:
        holder.release()
    assert queue.flush(60)
    assert queue.counts()["pending"] == 12
    queue.close()
