"""The Ray Data source of an audit: the log items, read on the driver's machine as a stream.

One read task runs on the node of the driver (the log files and the verdict cache are there)
and streams the items of :func:`~traceguard.audit.runner.open_readers` in input order, each
numbered (``seq``). Items that need no auditor are settled on the way, as in the in-process
engine: a trace whose verdict is in the cache carries it along (the worker records it as a
cache hit), a malformed record carries its problem. Traces before the resume point, and those
of blocks committed by an interrupted run, are skipped. A last ``end`` row tells the driver how
many traces the input holds, so it can check that every one came back.

Ray Data streams the blocks to the workers and applies its backpressure: the read task pauses
when the blocks it produced are not consumed, so memory stays bounded on any input size.
"""

from __future__ import annotations

import pickle
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import pyarrow
import ray
from ray.data.block import BlockMetadata
from ray.data.datasource import Datasource, ReadTask
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from traceguard.audit._ray_parts import Range
from traceguard.audit.cache import VerdictCache, cache_key
from traceguard.audit.readers import Format

__all__ = ["END", "ITEM", "LogSource", "ReadPlan", "driver_node_affinity", "read_rows"]

ITEM = "item"
END = "end"


@dataclass(frozen=True)
class ReadPlan:
    """Everything the read task needs, shipped to it by value (paths, never open files)."""

    inputs: tuple[str, ...]
    format: Format | Literal["auto"]
    image_root: str | None
    batch_output: str | None
    auditor_name: str
    mode: str
    cache: str | None
    """The verdict cache's SQLite file, read for hits (the driver writes it)."""
    start: int
    """Traces before this number are already in the output file."""
    committed: tuple[Range, ...]
    """Blocks of an interrupted run, committed as parts: not audited again."""
    rows_per_block: int


def _covered(seq: int, plan: ReadPlan, committed: list[Range]) -> bool:
    if seq < plan.start:
        return True
    while committed and committed[0].end <= seq:
        committed.pop(0)
    return bool(committed) and seq in committed[0]


def read_rows(plan: ReadPlan) -> Iterator[pyarrow.Table]:
    """The read task: blocks of rows ``seq, kind, item, key, hit, read_bytes``."""
    from traceguard.audit.runner import open_readers

    readers = open_readers(
        list(plan.inputs),
        format=plan.format,
        image_root=plan.image_root,
        batch_output=plan.batch_output,
    )
    cache = VerdictCache(plan.cache) if plan.cache is not None else None
    committed = sorted(plan.committed)
    rows: list[dict[str, Any]] = []
    seq = 0
    try:
        for reader in readers:
            for item in reader.items():
                if _covered(seq, plan, committed):
                    if rows:
                        yield _table(rows)
                        rows = []
                    seq += 1
                    continue
                key: str | None = None
                hit = None
                if item.trace is not None:
                    try:
                        key = cache_key(item.trace, plan.auditor_name, plan.mode)
                    except Exception:
                        key = None  # the worker's pipeline sees the same failure
                    if key is not None and cache is not None:
                        hit = cache.get(key)
                rows.append(
                    {
                        "seq": seq,
                        "kind": ITEM,
                        "item": pickle.dumps(item, protocol=pickle.HIGHEST_PROTOCOL),
                        "key": key,
                        "hit": pickle.dumps(hit) if hit is not None else None,
                        "read_bytes": sum(r.counter.bytes for r in readers),
                    }
                )
                seq += 1
                if len(rows) >= plan.rows_per_block:
                    yield _table(rows)
                    rows = []
        if rows:
            yield _table(rows)
        total_bytes = sum(r.size for r in readers)
        yield _table(
            [
                {
                    "seq": seq,
                    "kind": END,
                    "item": None,
                    "key": None,
                    "hit": None,
                    "read_bytes": total_bytes,
                }
            ]
        )
    finally:
        if cache is not None:
            cache.close()


def _table(rows: Sequence[dict[str, Any]]) -> pyarrow.Table:
    return pyarrow.table(
        {
            "seq": pyarrow.array([r["seq"] for r in rows], pyarrow.int64()),
            "kind": pyarrow.array([r["kind"] for r in rows], pyarrow.string()),
            "item": pyarrow.array([r["item"] for r in rows], pyarrow.binary()),
            "key": pyarrow.array([r["key"] for r in rows], pyarrow.string()),
            "hit": pyarrow.array([r["hit"] for r in rows], pyarrow.binary()),
            "read_bytes": pyarrow.array([r["read_bytes"] for r in rows], pyarrow.int64()),
        }
    )


class LogSource(Datasource):
    """A Ray Data source with one streaming read task: :func:`read_rows` of a plan."""

    def __init__(self, plan: ReadPlan) -> None:
        self.plan = plan

    def estimate_inmemory_data_size(self) -> int | None:
        return None

    def get_name(self) -> str:
        return "TraceguardLogs"

    def get_read_tasks(
        self, parallelism: int, per_task_row_limit: int | None = None, data_context: Any = None
    ) -> list[ReadTask]:
        plan = self.plan
        metadata = BlockMetadata(num_rows=None, size_bytes=None, input_files=None, exec_stats=None)
        return [ReadTask(lambda: read_rows(plan), metadata)]


def driver_node_affinity() -> dict[str, Any]:
    """Remote arguments that run a task on this process's node (where the logs are)."""
    node = ray.get_runtime_context().get_node_id()
    return {"scheduling_strategy": NodeAffinitySchedulingStrategy(node, soft=False)}
