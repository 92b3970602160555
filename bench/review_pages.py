"""Server time of the review app's pages with 100,000 queued items.

One queue file of ``--items`` escalations (mixed states, risk levels, categories, auditors,
sources, a year of dates; each with a few hundred characters of query, thinking, response and
analysis), served by the real app under uvicorn on 127.0.0.1, requested over HTTP with a
bearer token. Per page kind, ``--requests`` requests; reported: the app's own time per request
from its ``Server-Timing`` header (routing, queries, template rendering; p50 and p99), the
server process's CPU time per request (the same header; it shows the cost apart from waiting
for a core on a busy machine), and the client's wall time. Target: p99 server time under 50 ms
for list and detail pages.

Page kinds: the default list (pending, first page); a list with two filters; a category filter;
a date range; all states; a page deep in the list (keyset cursor in the middle); item pages at
random.

Usage::

    python bench/review_pages.py [--items 100000] [--requests 300]
        [--output bench/results/review_pages.json]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import random
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from traceguard import AuditRecord, AuditStatus, Decision, ErrorInfo, Policy, Trace, Verdict
from traceguard.review import EscalationStore, NewEscalation

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUTPUT = ROOT / "bench" / "results" / "review_pages.json"
TOKEN = "bench-token-0123456789abcdef"
TARGET_MS = 50.0

INTEGRATIONS = ("openai", "langchain", "langgraph", "proxy", "offline")
CATEGORIES = (
    "crime_and_illegal_activities",
    "cybersecurity",
    "data_privacy",
    "physical_and_mental_health",
    "hate_speech",
    "misleading_advice",
)
AUDITORS = ("guardtrace-vl-3b@http", "llavaguard-7b@local", "baseline-rules")
POLICY = Policy(potentially_harmful="escalate", harmful="escalate")


def _entry(n: int, rng: random.Random, start: dt.datetime) -> NewEscalation:
    integration = INTEGRATIONS[n % len(INTEGRATIONS)]
    metadata: dict[str, Any] = {"integration": integration}
    if integration == "offline":
        metadata["source"] = {"path": f"logs/day-{n % 365:03d}.jsonl", "line": n, "turn": 1}
    if integration == "langgraph":
        metadata["thread_id"] = f"thread-{n}"
    trace = Trace(
        query=f"Question {n}: " + "how would someone go about this? " * 4,
        thinking=f"Item {n}. " + "The user asks for something borderline; weigh it. " * 6,
        response=f"Answer {n}. " + "Here is a careful answer without specifics. " * 5,
        id=f"t{n}",
        model="qwen2.5-vl-7b",
        metadata=metadata,
    )
    roll = rng.random()
    auditor = AUDITORS[n % len(AUDITORS)]
    if roll < 0.05:
        verdict = Verdict.failed(
            AuditStatus.AUDITOR_ERROR, auditor=auditor, error=ErrorInfo("AuditorTimeout", "slow")
        )
    else:
        verdict = Verdict.ok(
            auditor=auditor,
            risk=0.5 if roll < 0.6 else 1.0,
            categories=tuple(rng.sample(CATEGORIES, k=1 + n % 2)),
            analysis="The thinking weighs the request and names one risky step. " * 3,
            probabilities={"0": 0.2, "0.5": 0.5, "1": 0.3},
        )
    decided = POLICY.decide(verdict, trace)
    decision = Decision(
        action=decided.action,
        reason=decided.reason,
        verdict=verdict,
        disposition=decided.disposition,
        trace_id=trace.id,
        escalation_id=f"bench-{n:06d}",
    )
    record = AuditRecord.from_decision(trace, decision)
    entry = NewEscalation.from_record(record)
    moment = start + dt.timedelta(seconds=n * 315)  # about a year over 100,000 items
    entry.row["created_at"] = moment.isoformat(timespec="milliseconds")
    entry.thumbnails_done = True
    return entry


def build_queue(path: Path, items: int) -> float:
    """Fill ``path`` with ``items`` escalations (30% resolved); returns seconds taken."""
    started = time.perf_counter()
    rng = random.Random(7)
    start = dt.datetime(2025, 6, 1, tzinfo=dt.timezone.utc)
    store = EscalationStore(path)
    batch: list[NewEscalation] = []
    for n in range(items):
        batch.append(_entry(n, rng, start))
        if len(batch) == 2000:
            store.insert(batch)
            batch = []
            print(f"\r  filled {n + 1:,}/{items:,}", end="", file=sys.stderr, flush=True)
    store.insert(batch)
    store.close()
    print(file=sys.stderr)
    # Resolve 30% in bulk, through SQL (the tally triggers see it like any resolution).
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute(
        "UPDATE escalations SET status = 'resolved', resolved_at = created_at, reviewer = 'bench',"
        " resolution = CASE WHEN id % 3 = 0 THEN 'rejected' ELSE 'approved' END WHERE id % 10 < 3"
    )
    conn.execute("ANALYZE")
    conn.close()
    return time.perf_counter() - started


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


_SERVE = """
import sys, uvicorn
from traceguard.review import create_app
uvicorn.run(create_app(sys.argv[1], token=sys.argv[2]), host="127.0.0.1", port=int(sys.argv[3]),
            log_level="warning", access_log=False)
"""


def measure(path: Path, requests: int, items: int) -> dict[str, Any]:
    # The server runs in its own process, as `traceguard review` does: the client's work here
    # never competes with it for the interpreter lock.
    port = _free_port()
    server = subprocess.Popen([sys.executable, "-c", _SERVE, str(path), TOKEN, str(port)])
    try:
        return _requests(port, requests, items)
    finally:
        server.terminate()
        server.wait(30)


def _requests(port: int, requests: int, items: int) -> dict[str, Any]:
    for _ in range(3000):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.01)
    rng = random.Random(11)
    middle = items // 2
    kinds: dict[str, Any] = {
        "list: pending, first page": lambda: "/",
        "list: source + risk filters": lambda: "/?state=all&integration=langgraph&risk=harmful",
        "list: category filter": lambda: "/?state=pending&category=data_privacy",
        "list: date range": lambda: "/?state=all&since=2025-09-01&until=2025-09-30",
        "list: all states": lambda: "/?state=all",
        "list: deep page": lambda: f"/?state=all&before={middle + rng.randrange(1000)}",
        "detail: random item": lambda: f"/items/bench-{rng.randrange(items):06d}",
    }
    results: dict[str, Any] = {}
    headers = {"authorization": f"Bearer {TOKEN}"}
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=headers) as client:
        for _ in range(20):  # warm the page cache and the templates
            client.get("/")
        for name, target in kinds.items():
            server_ms: list[float] = []
            cpu_ms: list[float] = []
            wall_ms: list[float] = []
            for _ in range(requests):
                began = time.perf_counter()
                response = client.get(target())
                wall_ms.append((time.perf_counter() - began) * 1000)
                assert response.status_code == 200, (name, response.status_code)
                timing = dict(
                    part.strip().split(";dur=")
                    for part in response.headers["server-timing"].split(",")
                )
                server_ms.append(float(timing["app"]))
                cpu_ms.append(float(timing["cpu"]))
            results[name] = _summary(server_ms, cpu_ms, wall_ms)
            row = results[name]
            print(
                f"  {name:32s} server p50 {row['server_p50_ms']:6.2f} ms  "
                f"p99 {row['server_p99_ms']:6.2f} ms  (cpu p50 {row['server_cpu_p50_ms']:5.2f}, "
                f"p99 {row['server_cpu_p99_ms']:5.2f})",
                file=sys.stderr,
            )
    return results


def _summary(server_ms: list[float], cpu_ms: list[float], wall_ms: list[float]) -> dict[str, float]:
    def p(values: list[float], q: float) -> float:
        ordered = sorted(values)
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 3)

    return {
        "server_p50_ms": p(server_ms, 0.50),
        "server_p99_ms": p(server_ms, 0.99),
        "server_mean_ms": round(statistics.fmean(server_ms), 3),
        "server_cpu_p50_ms": p(cpu_ms, 0.50),
        "server_cpu_p99_ms": p(cpu_ms, 0.99),
        "wall_p50_ms": p(wall_ms, 0.50),
        "wall_p99_ms": p(wall_ms, 0.99),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="traceguard-review-bench-") as scratch:
        path = Path(scratch) / "reviews.sqlite"
        print(f"building a queue of {args.items:,} items", file=sys.stderr)
        fill_s = build_queue(path, args.items)
        size_mb = path.stat().st_size / 2**20
        pages = measure(path, args.requests, args.items)
    worst = max(result["server_p99_ms"] for result in pages.values())
    report = {
        "benchmark": "review_pages",
        "items": args.items,
        "requests_per_page_kind": args.requests,
        "database_mib": round(size_mb, 1),
        "fill_seconds": round(fill_s, 1),
        "target_server_p99_ms": TARGET_MS,
        "worst_server_p99_ms": worst,
        "meets_target": worst < TARGET_MS,
        "pages": pages,
        "machine": {
            "python": platform.python_version(),
            "cpus": _cpus(),
            "load_average_1m_at_end": round(_load(), 2),
        },
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    verdict = "meets" if worst < TARGET_MS else "MISSES"
    print(f"worst server p99 {worst:.2f} ms: {verdict} the target < {TARGET_MS:g} ms")
    print(f"results: {args.output}")
    return 0


def _load() -> float:
    import os

    try:
        return os.getloadavg()[0]
    except OSError:
        return float("nan")


def _cpus() -> int | None:
    import os

    return os.cpu_count()


if __name__ == "__main__":
    sys.exit(main())
