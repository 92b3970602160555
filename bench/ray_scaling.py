"""Throughput of the Ray engine against 1 and 2 actors, next to the in-process engine.

The loopback server (a child process) answers every audit after ``--delay`` seconds, standing in
for a GPU server. Each actor keeps ``--concurrency`` calls in flight, so with A actors the ideal
rate is A * C / delay; the in-process engine with C calls in flight has C / delay. Each row
reports the achieved rate as a share of its ideal, twice:

- ``steady``: from the first record written to the last (the pipeline running), and
- ``end_to_end``: the whole call, including Ray starting the actors (seconds on this machine:
  a new Python worker per actor imports traceguard), which a long audit amortises.

The Ray rows run on one local Ray instance (``--cpus``, default 2: the development machine);
the actors, the read task, the driver and the server share those cores with the client work.

Usage::

    python bench/ray_scaling.py [--traces 3000] [--delay 0.1] [--concurrency 16]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

from _audit_common import loopback_server, save, write_log

from traceguard.audit import arun_audit
from traceguard.audit.progress import Progress
from traceguard.audit.runner import AuditOptions
from traceguard.config import GuardConfig


class _Clock(Progress):
    """A silent progress sink that notes when the first and last records were written."""

    def __init__(self) -> None:
        super().__init__(0, enabled=False)
        self.first: float | None = None
        self.first_records = 0
        self.last: float | None = None
        self.last_records = 0

    def update(self, records: int, bytes_done: int, *, force: bool = False) -> None:
        now = time.perf_counter()
        if self.first is None and records:
            self.first, self.first_records = now, records
        self.last, self.last_records = now, records


def _config(base_url: str, concurrency: int) -> GuardConfig:
    return GuardConfig.from_mapping(
        {
            "auditor": {
                "kind": "guardtrace",
                "backend": {
                    "kind": "served",
                    "base_url": base_url,
                    "model": "guardtrace",
                    "max_concurrency": concurrency,
                },
            }
        }
    )


def _check(out: Path, traces: int) -> None:
    """Every record must carry a verdict: a failed audit is fast and would pass for speed."""
    with out.open(encoding="utf-8") as fh:
        ok = sum(json.loads(line)["status"] == "ok" for line in fh)
    if ok != traces:
        raise RuntimeError(f"{out.name}: {traces - ok} of {traces} traces got no verdict")


def _row(
    engine: str, actors: int, traces: int, elapsed: float, clock: _Clock, ideal: float
) -> dict[str, Any]:
    steady = None
    if clock.first is not None and clock.last is not None and clock.last > clock.first:
        steady = (clock.last_records - clock.first_records) / (clock.last - clock.first)
    return {
        "engine": engine,
        "actors": actors,
        "traces": traces,
        "elapsed_s": round(elapsed, 2),
        "ideal_per_s": round(ideal, 1),
        "end_to_end_per_s": round(traces / elapsed, 1),
        "end_to_end_ratio": round(traces / elapsed / ideal, 3),
        "steady_per_s": round(steady, 1) if steady is not None else None,
        "steady_ratio": round(steady / ideal, 3) if steady is not None else None,
    }


def _in_process(base_url: str, log: Path, out: Path, concurrency: int) -> tuple[float, _Clock]:
    config = _config(base_url, concurrency)
    auditor = config.build_auditor()
    clock = _Clock()

    async def go() -> None:
        try:
            await arun_audit(
                log, out, AuditOptions(auditor=auditor, concurrency=concurrency, progress=clock)
            )
        finally:
            await auditor.aclose()

    started = time.perf_counter()
    asyncio.run(go())
    return time.perf_counter() - started, clock


def _on_ray(
    base_url: str, log: Path, out: Path, concurrency: int, actors: int, rows: int
) -> tuple[float, _Clock]:
    from traceguard.audit.ray_engine import RayOptions, run_audit_ray

    clock = _Clock()
    started = time.perf_counter()
    run_audit_ray(
        log,
        out,
        _config(base_url, concurrency),
        AuditOptions(concurrency=concurrency, progress=clock),
        RayOptions(actors=actors, rows_per_block=rows),
    )
    return time.perf_counter() - started, clock


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--traces", type=int, default=3000)
    parser.add_argument("--delay", type=float, default=0.1)
    parser.add_argument("--concurrency", type=int, default=16, help="calls in flight per actor")
    parser.add_argument("--actors", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rows-per-block", type=int, default=512)
    parser.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray instance")
    args = parser.parse_args()

    import ray

    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as scratch:
        log = write_log(Path(scratch) / "log.jsonl", args.traces)
        with loopback_server(args.delay) as base_url:
            elapsed, clock = _in_process(
                base_url, log, Path(scratch) / "inprocess.jsonl", args.concurrency
            )
            _check(Path(scratch) / "inprocess.jsonl", args.traces)
            ideal = args.concurrency / args.delay
            rows.append(_row("inprocess", 0, args.traces, elapsed, clock, ideal))
            ray.init(
                num_cpus=args.cpus,
                include_dashboard=False,
                _node_ip_address="127.0.0.1",
                logging_level=logging.WARNING,
            )
            try:
                for actors in args.actors:
                    elapsed, clock = _on_ray(
                        base_url,
                        log,
                        Path(scratch) / f"ray{actors}.jsonl",
                        args.concurrency,
                        actors,
                        args.rows_per_block,
                    )
                    _check(Path(scratch) / f"ray{actors}.jsonl", args.traces)
                    ideal = actors * args.concurrency / args.delay
                    rows.append(_row("ray", actors, args.traces, elapsed, clock, ideal))
            finally:
                ray.shutdown()

    print(f"{args.traces} traces, server delay {args.delay} s, {args.concurrency} in flight/actor")
    print(f"{'engine':>10} {'actors':>6} {'ideal/s':>8} {'steady/s':>9} {'ratio':>6} {'e2e/s':>7}")
    for row in rows:
        print(
            f"{row['engine']:>10} {row['actors']:>6} {row['ideal_per_s']:>8} "
            f"{row['steady_per_s']!s:>9} {row['steady_ratio']!s:>6} {row['end_to_end_per_s']:>7}"
        )
    path = save(
        "ray_scaling",
        {
            "benchmark": "ray_scaling",
            "traces": args.traces,
            "delay_s": args.delay,
            "concurrency_per_actor": args.concurrency,
            "rows_per_block": args.rows_per_block,
            "ray_cpus": args.cpus,
            "rows": rows,
            "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
        },
    )
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
