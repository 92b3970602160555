"""The verdict cache on a log where half the traces repeat: auditor calls must halve.

Audits a log of N traces holding N/2 distinct contents (each appears twice, the copies far
apart) against the loopback server, counting the requests the server received; then runs again
on the same log to show a warm cache makes no request at all.

Usage::

    python bench/audit_cache.py [--traces 2000] [--delay 0.01]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import tempfile
from pathlib import Path

from _audit_common import save, write_log

from traceguard.audit import AuditSummary, arun_audit
from traceguard.auditors.guardtrace import GuardTraceAuditor
from traceguard.testing.openai_server import OpenAIServer


async def _audit(base_url: str, log: Path, out: Path, cache: Path | None) -> AuditSummary:
    auditor = GuardTraceAuditor.served(base_url, "guardtrace", max_concurrency=16)
    try:
        return await arun_audit(log, out, auditor=auditor, concurrency=16, cache=cache)
    finally:
        await auditor.aclose()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--traces", type=int, default=2000)
    parser.add_argument("--delay", type=float, default=0.01)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as scratch, OpenAIServer(fixed_delay_s=args.delay) as srv:
        log = write_log(Path(scratch) / "log.jsonl", args.traces, distinct=args.traces // 2)
        cache = Path(scratch) / "cache.sqlite"
        for name, cache_path in (("no cache", None), ("cold cache", cache), ("warm cache", cache)):
            before = len(srv.requests)
            summary = asyncio.run(_audit(srv.base_url, log, Path(scratch) / "o.jsonl", cache_path))
            rows.append(
                {
                    "run": name,
                    "traces": summary.records,
                    "auditor_requests": len(srv.requests) - before,
                    "cache_hits": summary.cache_hits,
                    "deduplicated": summary.deduplicated,
                }
            )
    print(f"{'run':<11} {'traces':>7} {'requests':>9} {'cache hits':>11} {'shared':>7}")
    for r in rows:
        print(
            f"{r['run']:<11} {r['traces']:>7} {r['auditor_requests']:>9} {r['cache_hits']:>11}"
            f" {r['deduplicated']:>7}"
        )
    halved = rows[1]["auditor_requests"] == args.traces // 2
    print(f"cold cache requests = traces / 2: {halved}")
    path = save(
        "audit_cache",
        {
            "rows": rows,
            "halved": halved,
            "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
        },
    )
    print(f"wrote {path}")
    return 0 if halved else 1


if __name__ == "__main__":
    raise SystemExit(main())
