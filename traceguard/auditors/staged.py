"""Staged composition: a cheap image screen first, then the trace audit, one verdict out.

::

    staged = StagedAuditor(
        [HoliSafeAuditor("etri-vilab/SafeQwen2.5-VL-7B"), GuardTraceAuditor.served(url, model)]
    )
    guard = Guard(staged, policy)

Stages run in order. The auditors *within* a stage do not depend on each other and run
concurrently (``asyncio.gather`` on the async path, threads on the sync path):
``StagedAuditor([[holisafe, llavaguard], guardtrace])``. After each stage, traces the verdicts so
far already grade harmful skip the remaining stages (``stop_on_harmful``): a harmful image is
blocked without paying for a minute of trace-audit decoding.

The combined verdict follows :func:`~traceguard.auditors._combine.combine_verdicts`: harmful if
any auditor says so (even when another failed); otherwise failed if any auditor failed (status of
the first failure); otherwise the highest risk. Categories are merged through
:mod:`traceguard.taxonomy`. ``details["stages"]`` keeps every auditor's own verdict (as data) and
``details["skipped"]`` the auditors a trace skipped.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from traceguard._auditor import Auditor
from traceguard._exceptions import AuditorError, ConfigurationError
from traceguard._trace import Trace
from traceguard._verdict import AuditStatus, Verdict
from traceguard.auditors._combine import combine_verdicts

__all__ = ["StagedAuditor", "combine_verdicts"]


class StagedAuditor(Auditor):
    """Runs auditors in stages and merges their verdicts into one per trace.

    Args:
        stages: each item is an auditor, or a sequence of auditors that run concurrently.
        stop_on_harmful: skip later stages for a trace already graded harmful.
        name: the merged verdicts' ``auditor`` field; ``staged(a+b,c)`` by default.
    """

    def __init__(
        self,
        stages: Sequence[Auditor | Sequence[Auditor]],
        *,
        stop_on_harmful: bool = True,
        name: str | None = None,
    ) -> None:
        normalised: list[tuple[Auditor, ...]] = []
        for stage in stages:
            group = (stage,) if isinstance(stage, Auditor) else tuple(stage)
            if not group or not all(isinstance(a, Auditor) for a in group):
                raise ConfigurationError("every stage must be an auditor or a list of auditors")
            normalised.append(group)
        if not normalised:
            raise ConfigurationError("StagedAuditor needs at least one stage")
        names = [a.name for group in normalised for a in group]
        if len(set(names)) != len(names):
            raise ConfigurationError(f"auditor names must be unique across stages: {names}")
        self.stages = normalised
        self.stop_on_harmful = stop_on_harmful
        self.name = (
            name or "staged(" + ",".join("+".join(a.name for a in g) for g in normalised) + ")"
        )

    def audit_batch(self, traces: Sequence[Trace]) -> list[Verdict]:
        """Audit several traces; one merged verdict each, in input order."""
        runs = _Runs(len(traces))
        for group in self.stages:
            pending = runs.pending(self.stop_on_harmful)
            if not pending:
                runs.skip(group)
                continue
            subset = [traces[i] for i in pending]
            if len(group) == 1:
                results = [_safely(group[0], subset)]
            else:
                with ThreadPoolExecutor(max_workers=len(group)) as pool:
                    results = list(pool.map(_safely, group, [subset] * len(group)))
            runs.record(group, pending, results)
        return runs.verdicts(self.name)

    async def aaudit_batch(self, traces: Sequence[Trace]) -> list[Verdict]:
        """Async :meth:`audit_batch`: a stage's auditors run as concurrent tasks."""
        runs = _Runs(len(traces))
        for group in self.stages:
            pending = runs.pending(self.stop_on_harmful)
            if not pending:
                runs.skip(group)
                continue
            subset = [traces[i] for i in pending]
            results = list(await asyncio.gather(*(_asafely(a, subset) for a in group)))
            runs.record(group, pending, results)
        return runs.verdicts(self.name)

    def close(self) -> None:
        """Close every stage's auditor."""
        for group in self.stages:
            for auditor in group:
                auditor.close()

    async def aclose(self) -> None:
        """Async :meth:`close`."""
        for group in self.stages:
            for auditor in group:
                await auditor.aclose()


class _Runs:
    """Per-trace bookkeeping: which auditor said what, and who was skipped."""

    def __init__(self, count: int) -> None:
        self.parts: list[list[Verdict]] = [[] for _ in range(count)]
        self.skipped: list[list[str]] = [[] for _ in range(count)]

    def pending(self, stop_on_harmful: bool) -> list[int]:
        if not stop_on_harmful:
            return list(range(len(self.parts)))
        return [
            i
            for i, parts in enumerate(self.parts)
            if not any(v.is_ok and v.risk == 1.0 for v in parts)
        ]

    def skip(self, group: Sequence[Auditor]) -> None:
        for skipped in self.skipped:
            skipped.extend(a.name for a in group)

    def record(
        self, group: Sequence[Auditor], pending: list[int], results: list[list[Verdict]]
    ) -> None:
        waiting = set(pending)
        for index in range(len(self.parts)):
            if index not in waiting:
                self.skipped[index].extend(a.name for a in group)
        for auditor, verdicts in zip(group, results, strict=True):
            if len(verdicts) != len(pending):
                error = AuditorError(
                    f"{auditor.name} returned {len(verdicts)} verdicts for {len(pending)} traces"
                )
                verdicts = [
                    Verdict.failed(AuditStatus.AUDITOR_ERROR, auditor=auditor.name, error=error)
                ] * len(pending)
            for index, verdict in zip(pending, verdicts, strict=True):
                self.parts[index].append(verdict)

    def verdicts(self, name: str) -> list[Verdict]:
        out = []
        for parts, skipped in zip(self.parts, self.skipped, strict=True):
            details: dict[str, Any] = {
                "stages": [v.to_dict() for v in parts],
                "skipped": list(skipped),
            }
            out.append(combine_verdicts(parts, auditor=name, details=details))
        return out


def _safely(auditor: Auditor, traces: list[Trace]) -> list[Verdict]:
    try:
        return auditor.audit_batch(traces)
    except Exception as exc:  # auditors must not raise; one that does must not fail open
        return _failed(auditor, exc, len(traces))


async def _asafely(auditor: Auditor, traces: list[Trace]) -> list[Verdict]:
    try:
        return await auditor.aaudit_batch(traces)
    except Exception as exc:
        return _failed(auditor, exc, len(traces))


def _failed(auditor: Auditor, exc: Exception, count: int) -> list[Verdict]:
    error = exc if isinstance(exc, AuditorError) else AuditorError(f"{type(exc).__name__}: {exc}")
    return [
        Verdict.failed(AuditStatus.AUDITOR_ERROR, auditor=auditor.name, error=error)
        for _ in range(count)
    ]
