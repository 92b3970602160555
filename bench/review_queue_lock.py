"""What filing an escalation costs the guarded call, with the review database free and locked.

``Guard.check`` with an instant auditor whose every verdict escalates and a ``ReviewQueue`` as
the only sink, ``--checks`` calls per variant: ``free`` (nothing else uses the database) and
``locked`` (another process holds its write lock for the whole run, as a long reviewer
transaction or a stuck process would). Reported: p50, p99 and max time per ``check``, and how
many escalations reached the database once the lock was released (issue 13, fault 8: the queue
used to stall each call for the whole lock wait and then lose the escalation).

Usage::

    python bench/review_queue_lock.py [--checks 2000]
        [--output bench/results/review_queue_lock.json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from traceguard import Guard, ReviewQueue, Trace
from traceguard.review import EscalationStore
from traceguard.testing import ScriptedAuditor, Step

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUTPUT = ROOT / "bench" / "results" / "review_queue_lock.json"

_HOLD = """
import sqlite3, sys
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("BEGIN IMMEDIATE")
db.execute("INSERT INTO facets (kind, value) VALUES ('lock', 'held')")
print("locked", flush=True)
sys.stdin.readline()
db.execute("ROLLBACK")
"""


def run(path: Path, checks: int, *, locked: bool) -> dict[str, Any]:
    EscalationStore(path).close()
    holder = None
    if locked:
        holder = subprocess.Popen(
            [sys.executable, "-c", _HOLD, str(path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
    queue = ReviewQueue(path)
    guard = Guard(
        ScriptedAuditor(rule=lambda trace: Step(error="timeout")),
        sinks=[queue],
        raise_on_block=False,
    )
    times: list[float] = []
    for n in range(checks):
        trace = Trace(query="q", thinking="some thinking " * 20, response=f"answer {n}")
        started = time.perf_counter()
        guard.check(trace)
        times.append((time.perf_counter() - started) * 1000)
    pending_while_locked = queue.pending_writes
    if holder is not None:
        assert holder.stdin is not None
        holder.stdin.write("\n")
        holder.stdin.flush()
        holder.wait(30)
    queue.flush(120)
    guard.close()
    store = EscalationStore(path)
    stored = store.counts()["pending"]
    store.close()
    ordered = sorted(times)
    return {
        "check_p50_ms": round(ordered[len(ordered) // 2], 3),
        "check_p99_ms": round(ordered[int(len(ordered) * 0.99)], 3),
        "check_max_ms": round(ordered[-1], 3),
        "pending_writes_at_end_of_calls": pending_while_locked,
        "escalations_stored": stored,
        "sink_errors": guard.sink_errors,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checks", type=int, default=2000)
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    args = parser.parse_args()
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="traceguard-queue-bench-") as scratch:
        for variant in ("free", "locked"):
            path = Path(scratch) / f"{variant}.sqlite"
            results[variant] = run(path, args.checks, locked=variant == "locked")
            row = results[variant]
            print(
                f"  {variant:7s} check p50 {row['check_p50_ms']:.3f} ms  p99 "
                f"{row['check_p99_ms']:.3f} ms  max {row['check_max_ms']:.1f} ms  stored "
                f"{row['escalations_stored']}/{args.checks}",
                file=sys.stderr,
            )
    report = {"benchmark": "review_queue_lock", "checks": args.checks, "variants": results}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"results: {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
