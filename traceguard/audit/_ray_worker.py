"""The Ray Data worker of an audit: one auditor per actor, built from the shipped spec.

Each actor of the pool builds its auditor from the :class:`~traceguard.config.GuardConfig` it is
given (the spec travels, never a model: a local checkpoint loads on the actor's own GPU, a
served backend opens its own connections). For each batch of rows it runs the in-process
engine's :class:`~traceguard.audit._pipeline.Pipeline` over the batch's items, driven by the
same async driver (``concurrency`` auditor calls in flight, ``batch_size`` traces per call), so
invalid items, repeats, auditor failures, the policy and the records are exactly those of
``traceguard audit`` without Ray. The batch's cache hits (looked up by the read task) stand in
for the verdict cache; the verdicts it produced go back to the driver, which stores them.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import pyarrow

from traceguard._auditor import Auditor
from traceguard._verdict import Verdict
from traceguard.audit._messages import LogItem
from traceguard.audit._pipeline import Pipeline
from traceguard.audit._ray_source import ITEM
from traceguard.audit.cache import cache_key
from traceguard.audit.runner import _drive_tasks
from traceguard.audit.summary import AuditSummary
from traceguard.config import GuardConfig

__all__ = ["AuditWorker", "OUTPUT_COLUMNS"]

OUTPUT_COLUMNS = ("seq", "kind", "line", "key", "fresh", "read_bytes", "counts")
"""One output row per input row; ``counts`` (audited, calls, cache hits, repeats) is set on the
first row of each batch only."""


class _Lines:
    """The pipeline's writer: keeps the batch's encoded records, in order."""

    def __init__(self) -> None:
        self.lines: list[bytes] = []

    def write(self, line: bytes) -> None:
        self.lines.append(line)


class _BatchStore:
    """The pipeline's verdict cache for one batch: the hits it came with; what it learns is
    kept for the driver's cache (the worker may be on a machine without that file)."""

    def __init__(self, hits: dict[str, Verdict]) -> None:
        self.hits = hits
        self.fresh: dict[str, Verdict] = {}

    def get(self, key: str) -> Verdict | None:
        return self.hits.get(key)

    def put(self, key: str, verdict: Verdict) -> None:
        self.fresh[key] = verdict


def _actor_number() -> int:
    """A number that differs between the actors of the pool (their Ray actor ids, hashed)."""
    import zlib

    import ray

    actor = ray.get_runtime_context().get_actor_id() or ""
    return zlib.crc32(actor.encode())


def _spread_endpoints(config: dict[str, Any], number: int) -> dict[str, Any]:
    """Start each actor at a different replica of a served backend's endpoint list.

    The list is a failover order (the first URL that is up gets every request); rotated per
    actor, N actors spread over N replicas and each keeps the others as its fallbacks.
    """
    auditor = config.get("auditor")
    if not isinstance(auditor, dict) or not isinstance(auditor.get("backend"), dict):
        return config
    backend: dict[str, Any] = auditor["backend"]
    endpoints = backend.get("endpoints")
    if not isinstance(endpoints, list) or len(endpoints) < 2:
        return config
    shift = number % len(endpoints)
    rotated = endpoints[shift:] + endpoints[:shift]
    return {**config, "auditor": {**auditor, "backend": {**backend, "endpoints": rotated}}}


class AuditWorker:
    """The callable class Ray Data instantiates once per actor (``map_batches``)."""

    def __init__(self, config: dict[str, Any], concurrency: int, batch_size: int) -> None:
        config = _spread_endpoints(config, _actor_number())
        spec = GuardConfig.from_mapping(config, source="the driver's configuration")
        self.auditor: Auditor = spec.build_auditor()
        self.policy = spec.build_policy()
        self.mode = str(getattr(self.auditor, "mode", "full"))
        self.concurrency = concurrency
        self.batch_size = batch_size

    def _key(self, item: LogItem) -> str | None:
        if item.trace is None:
            return None
        try:
            return cache_key(item.trace, self.auditor.name, self.mode)
        except Exception:
            return None

    async def __call__(self, batch: pyarrow.Table) -> pyarrow.Table:
        kinds = batch.column("kind").to_pylist()
        payloads = batch.column("item").to_pylist()
        hit_payloads = batch.column("hit").to_pylist()
        items: list[LogItem] = []
        hits: dict[str, Verdict] = {}
        for kind, payload, hit in zip(kinds, payloads, hit_payloads, strict=True):
            if kind != ITEM:
                continue
            item: LogItem = pickle.loads(payload)
            items.append(item)
            if hit is not None:
                # Keyed as this worker's pipeline keys it (image files stat'ed here).
                key = self._key(item)
                if key is not None:
                    hits[key] = pickle.loads(hit)
        lines = _Lines()
        store = _BatchStore(hits)
        summary = AuditSummary(output=Path("-"))
        pipeline = Pipeline(
            iter(items),
            auditor_name=self.auditor.name,
            mode=self.mode,
            policy=self.policy,
            writer=lines,
            summary=summary,
            cache=store,
            batch_size=self.batch_size,
            window=self.concurrency * self.batch_size * 4 + 32,
        )
        await _drive_tasks(pipeline, self.auditor, self.concurrency)
        return self._output(batch, kinds, items, lines.lines, store, summary)

    def _output(
        self,
        batch: pyarrow.Table,
        kinds: list[str],
        items: list[LogItem],
        lines: list[bytes],
        store: _BatchStore,
        summary: AuditSummary,
    ) -> pyarrow.Table:
        out_lines: list[bytes | None] = []
        fresh: list[bytes | None] = []
        remaining = iter(zip(items, lines, strict=True))
        sent: set[str] = set()
        for kind in kinds:
            if kind != ITEM:
                out_lines.append(None)
                fresh.append(None)
                continue
            item, line = next(remaining)
            out_lines.append(line)
            key = self._key(item)
            verdict = store.fresh.get(key) if key is not None else None
            if verdict is not None and key not in sent:
                sent.add(key or "")
                fresh.append(pickle.dumps(verdict))
            else:
                fresh.append(None)
        counts: list[list[int] | None] = [None] * len(kinds)
        counts[0] = [
            summary.audited,
            summary.auditor_calls,
            summary.cache_hits,
            summary.deduplicated,
        ]
        return pyarrow.table(
            {
                "seq": batch.column("seq"),
                "kind": batch.column("kind"),
                "line": pyarrow.array(out_lines, pyarrow.binary()),
                "key": batch.column("key"),
                "fresh": pyarrow.array(fresh, pyarrow.binary()),
                "read_bytes": batch.column("read_bytes"),
                "counts": pyarrow.array(counts, pyarrow.list_(pyarrow.int64())),
            }
        )
