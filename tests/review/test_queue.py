"""The review queue as first released: escalations in, resolutions out, across threads and
processes. These tests predate the content-keeping queue and must keep passing unchanged in
meaning (the old API stays)."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from traceguard._decision import Action
from traceguard._exceptions import AuditorTimeout
from traceguard._policy import Policy
from traceguard._sinks import AuditRecord, SinkError
from traceguard._trace import Trace
from traceguard._verdict import AuditStatus, Verdict
from traceguard.review import Escalation, ReviewQueue


def record(trace_id: str, *, escalate: bool = True) -> AuditRecord:
    trace = Trace(query="q", response="r", id=trace_id)
    verdict = (
        Verdict.failed(AuditStatus.AUDITOR_ERROR, auditor="t", error=AuditorTimeout("slow"))
        if escalate
        else Verdict.ok(auditor="t", risk=1.0)
    )
    return AuditRecord.from_decision(trace, Policy().decide(verdict, trace))


@pytest.fixture
def queue(tmp_path: Path) -> ReviewQueue:
    return ReviewQueue(tmp_path / "review.db")


def test_stores_only_escalations_by_default(queue: ReviewQueue) -> None:
    queue.emit(record("a"))
    queue.emit(record("b", escalate=False))
    pending = queue.pending()
    assert [e.trace_id for e in pending] == ["a"]
    item = pending[0]
    assert isinstance(item, Escalation)
    assert item.status == "pending" and item.resolution is None
    assert item.action == "escalate" and item.disposition == "block"
    assert item.reason.startswith("auditor error (AuditorTimeout: slow)")
    assert item.verdict["status"] == "auditor_error"
    assert len(item.content_hash) == 64
    assert queue.counts() == {"pending": 1, "approved": 0, "rejected": 0}


def test_can_store_every_record(tmp_path: Path) -> None:
    queue = ReviewQueue(tmp_path / "all.db", escalations_only=False)
    queue.emit(record("b", escalate=False))
    assert queue.pending()[0].action == Action.BLOCK.value


def test_resolve_and_counts(queue: ReviewQueue) -> None:
    for name in "abc":
        queue.emit(record(name))
    first, second, _ = queue.pending()
    done = queue.resolve(first.id, "approved", reviewer="ana", note="fine in context")
    assert (done.status, done.resolution, done.reviewer, done.note) == (
        "resolved",
        "approved",
        "ana",
        "fine in context",
    )
    assert done.resolved_at is not None
    queue.resolve(second.id, "rejected", reviewer="bo")
    assert queue.counts() == {"pending": 1, "approved": 1, "rejected": 1}
    assert [e.trace_id for e in queue.pending()] == ["c"]
    assert queue.get(first.id) == done


def test_resolving_twice_or_unknown_ids_fail(queue: ReviewQueue) -> None:
    queue.emit(record("a"))
    item = queue.pending()[0]
    queue.resolve(item.id, "approved", reviewer="ana")
    with pytest.raises(ValueError, match="already approved by ana"):
        queue.resolve(item.id, "rejected", reviewer="bo")
    with pytest.raises(KeyError):
        queue.resolve(999, "approved", reviewer="ana")
    with pytest.raises(KeyError):
        queue.get(999)
    with pytest.raises(ValueError, match="resolution"):
        queue.resolve(item.id, "maybe", reviewer="ana")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="reviewer"):
        queue.resolve(item.id, "approved", reviewer="")


def test_pending_limit_and_order(queue: ReviewQueue) -> None:
    for i in range(5):
        queue.emit(record(f"t{i}"))
    assert [e.trace_id for e in queue.pending(limit=2)] == ["t0", "t1"]


def test_duplicate_record_is_stored_once(queue: ReviewQueue) -> None:
    item = record("a")
    queue.emit(item)
    queue.emit(item)  # e.g. a retried delivery
    assert queue.counts()["pending"] == 1


def test_database_is_a_real_wal_sqlite_file(tmp_path: Path) -> None:
    path = tmp_path / "review.db"
    queue = ReviewQueue(path)
    queue.emit(record("a"))
    queue.close()
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("SELECT trace_id, status FROM escalations").fetchall() == [
            ("a", "pending")
        ]
    finally:
        conn.close()
    reopened = ReviewQueue(path)
    assert reopened.counts()["pending"] == 1
    reopened.close()


def test_closed_queue_refuses(queue: ReviewQueue) -> None:
    queue.close()
    queue.close()
    with pytest.raises(SinkError, match="closed"):
        queue.emit(record("a"))


def test_threads_share_one_queue(queue: ReviewQueue) -> None:
    def work(prefix: str) -> None:
        for i in range(25):
            queue.emit(record(f"{prefix}{i}"))

    threads = [threading.Thread(target=work, args=(p,)) for p in "wxyz"]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert queue.counts()["pending"] == 100


_CHILD_EMIT = """
import sys
from traceguard._exceptions import AuditorTimeout
from traceguard._policy import Policy
from traceguard.review import ReviewQueue
from traceguard._sinks import AuditRecord
from traceguard._trace import Trace
from traceguard._verdict import AuditStatus, Verdict
queue = ReviewQueue(sys.argv[1])
verdict = Verdict.failed(AuditStatus.AUDITOR_ERROR, auditor="t", error=AuditorTimeout("slow"))
for i in range(20):
    trace = Trace(query="q", response="r", id=f"{sys.argv[2]}{i}")
    queue.emit(AuditRecord.from_decision(trace, Policy().decide(verdict, trace)))
queue.close()
"""


def test_processes_share_one_database(tmp_path: Path) -> None:
    # Subprocesses rather than fork: forking a process that runs threads is unsafe.
    path = tmp_path / "review.db"
    ReviewQueue(path).close()
    children = [
        subprocess.Popen([sys.executable, "-c", _CHILD_EMIT, str(path), prefix]) for prefix in "ab"
    ]
    assert [child.wait(60) for child in children] == [0, 0]
    queue = ReviewQueue(path)
    assert queue.counts()["pending"] == 40
    queue.close()
