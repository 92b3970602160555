"""Peak memory of ``traceguard audit`` on a 10k-line and a 200k-line log: it must stay flat.

Each run is a fresh ``python -m traceguard audit`` child process with the embedded baseline
auditor; its peak resident set (``ru_maxrss`` of the child) is read after it exits.

Usage::

    python bench/audit_memory.py [--sizes 10000 200000]
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _audit_common import save, write_log


def _peak_mib(log: Path, out: Path) -> tuple[float, float]:
    started = time.perf_counter()
    command = [sys.executable, "-m", "traceguard", "audit", str(log), "--out", str(out), "-q"]
    child = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(child.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"audit failed on {log}")
    return usage.ru_maxrss / 1024, time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 200_000])
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for size in args.sizes:
            log = write_log(Path(scratch) / f"log{size}.jsonl", size)
            peak, elapsed = _peak_mib(log, Path(scratch) / f"out{size}.jsonl")
            rows.append(
                {
                    "lines": size,
                    "log_mib": round(log.stat().st_size / 2**20, 1),
                    "peak_rss_mib": round(peak, 1),
                    "seconds": round(elapsed, 1),
                }
            )
    print(f"{'lines':>8} {'log MiB':>8} {'peak RSS MiB':>13} {'seconds':>8}")
    for row in rows:
        print(
            f"{row['lines']:>8} {row['log_mib']:>8} {row['peak_rss_mib']:>13} {row['seconds']:>8}"
        )
    growth = rows[-1]["peak_rss_mib"] / rows[0]["peak_rss_mib"]
    print(f"peak RSS ratio largest/smallest: {growth:.2f}")
    path = save(
        "audit_memory",
        {
            "rows": rows,
            "peak_ratio": round(growth, 3),
            "auditor": "baseline-rules (embedded)",
            "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
        },
    )
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
