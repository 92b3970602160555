"""Throughput of ``traceguard audit`` against a served auditor with a fixed latency.

The loopback server (a child process) answers every audit after ``--delay`` seconds. With
``--concurrency C`` audits in flight the ideal rate is C / delay; the figure of merit is the
achieved rate over the whole run (reading, hashing, cache, policy, writing included) as a share
of that ideal. Target: at least 0.9 at concurrency 32 on 20,000 traces.

Usage::

    python bench/audit_throughput.py [--traces 20000] [--delay 0.2] [--concurrency 32]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import tempfile
import time
from pathlib import Path

from _audit_common import loopback_server, save, write_log

from traceguard.audit import arun_audit
from traceguard.auditors.guardtrace import GuardTraceAuditor

TARGET = 0.9


async def _run(base_url: str, log: Path, out: Path, concurrency: int) -> tuple[float, float, int]:
    auditor = GuardTraceAuditor.served(base_url, "guardtrace", max_concurrency=concurrency)
    try:
        started, cpu_started = time.perf_counter(), time.process_time()
        summary = await arun_audit(log, out, auditor=auditor, concurrency=concurrency)
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    finally:
        await auditor.aclose()
    return elapsed, cpu, summary.by_status.get("ok", 0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--traces", type=int, default=20_000)
    parser.add_argument("--delay", type=float, default=0.2)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        log = write_log(Path(scratch) / "log.jsonl", args.traces)
        with loopback_server(args.delay) as base_url:
            elapsed, cpu, ok = asyncio.run(
                _run(base_url, log, Path(scratch) / "out.jsonl", args.concurrency)
            )
    ideal = args.concurrency / args.delay
    achieved = args.traces / elapsed
    ratio = achieved / ideal
    print(f"{'traces':>8} {'conc':>5} {'delay s':>8} {'ideal/s':>8} {'got/s':>8} {'ratio':>6}")
    print(
        f"{args.traces:>8} {args.concurrency:>5} {args.delay:>8} {ideal:>8.1f} {achieved:>8.1f}"
        f" {ratio:>6.3f}  ({'meets' if ratio >= TARGET else 'misses'} the {TARGET} target)"
    )
    path = save(
        "audit_throughput",
        {
            "traces": args.traces,
            "ok_records": ok,
            "concurrency": args.concurrency,
            "delay_s": args.delay,
            "elapsed_s": round(elapsed, 2),
            "ideal_per_s": ideal,
            "achieved_per_s": round(achieved, 1),
            "ratio": round(ratio, 4),
            "client_cpu_ms_per_trace": round(cpu / args.traces * 1000, 3),
            "target": TARGET,
            "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
        },
    )
    print(f"wrote {path}")
    return 0 if ok == args.traces else 1


if __name__ == "__main__":
    raise SystemExit(main())
