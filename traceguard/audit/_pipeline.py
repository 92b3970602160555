"""The audit pipeline without I/O to the auditor: admit items, deduplicate, reorder, write.

The sync (threads) and async (event loop) drivers in :mod:`traceguard.audit.runner` share this
class and differ only in how they wait for a batch of verdicts. Everything here runs in the
driver's coordinating thread, so the cache, the writer and the counters need no locks.

Memory stays flat: at most ``window`` items are read but not yet written. When the oldest
item's audit is slow, reading pauses instead of buffering the rest of the file.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

from traceguard._decision import Decision
from traceguard._policy import Policy
from traceguard._trace import Trace
from traceguard._verdict import AuditStatus, ErrorInfo, Verdict
from traceguard.audit._messages import LogItem
from traceguard.audit.cache import cache_key
from traceguard.audit.records import build_record, encode_record
from traceguard.audit.summary import AuditSummary

__all__ = ["Job", "LineWriter", "Pipeline", "READER_AUDITOR", "VerdictStore"]

READER_AUDITOR = "traceguard-reader"
"""The ``auditor`` of records for inputs that never reached an auditor (malformed lines)."""

_EMPTY_TRACE = Trace(query="", response="")


class LineWriter(Protocol):
    """Where finished lines go, in input order: the output file (:class:`OutputWriter`), or a
    list when a Ray worker audits one block for the driver to write."""

    def write(self, line: bytes) -> None: ...


class VerdictStore(Protocol):
    """Verdicts by cache key: the SQLite :class:`~traceguard.audit.cache.VerdictCache`, or the
    hits a Ray worker was handed with its block."""

    def get(self, key: str) -> Verdict | None: ...

    def put(self, key: str, verdict: Verdict) -> None: ...


@dataclass
class Job:
    """A batch of traces for one auditor call."""

    entries: list[tuple[int, LogItem, str | None]] = field(default_factory=list)
    """``(sequence number, item, cache key)`` for each trace, in order."""

    @property
    def traces(self) -> list[Trace]:
        """The traces to send to the auditor."""
        return [item.trace for _, item, _ in self.entries if item.trace is not None]


class Pipeline:
    """Turns items into output lines in input order, around an auditor the driver calls."""

    def __init__(
        self,
        items: Iterator[LogItem],
        *,
        auditor_name: str,
        mode: str,
        policy: Policy,
        writer: LineWriter,
        summary: AuditSummary,
        cache: VerdictStore | None,
        batch_size: int,
        window: int,
        on_write: Callable[[], None] = lambda: None,
        on_decision: Callable[[LogItem, Decision], None] | None = None,
    ) -> None:
        self._items = items
        self._auditor_name = auditor_name
        self._mode = mode
        self._policy = policy
        self._writer = writer
        self._summary = summary
        self._cache = cache
        self._batch_size = max(1, batch_size)
        self._window = max(window, self._batch_size)
        self._on_write = on_write
        self._on_decision = on_decision
        self._next_seq = 0
        self._next_write = 0
        self._ready: dict[int, bytes] = {}
        # Keys of traces in flight -> later items with the same content, waiting for its verdict.
        self._waiting: dict[str, list[tuple[int, LogItem]]] = {}
        self.exhausted = False

    @property
    def unwritten(self) -> int:
        """Items read but not yet written."""
        return self._next_seq - self._next_write

    def next_job(self) -> Job | None:
        """Read items until a batch of traces to audit is full; None when nothing to send now.

        Items that need no audit (malformed, cached, repeats of a trace in flight) are settled
        on the way. Reading stops at the end of the input or when the window is full.
        """
        job = Job()
        while len(job.entries) < self._batch_size and self.unwritten < self._window:
            item = next(self._items, None)
            if item is None:
                self.exhausted = True
                break
            seq = self._next_seq
            self._next_seq += 1
            self._admit(seq, item, job)
        return job if job.entries else None

    def _admit(self, seq: int, item: LogItem, job: Job) -> None:
        if item.trace is None:
            problem = item.problem or ErrorInfo("InputError", "nothing to audit")
            status = (
                AuditStatus.AUDITOR_ERROR
                if item.problem_status == "error"
                else AuditStatus.INVALID_INPUT
            )
            self._settle(seq, item, Verdict.failed(status, auditor=READER_AUDITOR, error=problem))
            return
        try:
            key: str | None = cache_key(item.trace, self._auditor_name, self._mode)
        except Exception:
            key = None
        if key is not None:
            if key in self._waiting:
                self._waiting[key].append((seq, item))
                self._summary.deduplicated += 1
                return
            if self._cache is not None:
                cached = self._cache.get(key)
                if cached is not None:
                    self._summary.cache_hits += 1
                    self._settle(seq, item, cached, cached=True)
                    return
            self._waiting[key] = []
        job.entries.append((seq, item, key))

    def complete(self, job: Job, verdicts: list[Verdict] | BaseException) -> None:
        """Take the auditor's answer for ``job``: its verdicts, or the exception it raised."""
        self._summary.auditor_calls += 1
        self._summary.audited += len(job.entries)
        if isinstance(verdicts, BaseException):
            verdicts = self._failed_batch(job, ErrorInfo.from_exception(verdicts))
        elif len(verdicts) != len(job.entries) or not all(isinstance(v, Verdict) for v in verdicts):
            verdicts = self._failed_batch(
                job,
                ErrorInfo(
                    "AuditorError",
                    f"the auditor returned {len(verdicts)} verdicts for {len(job.entries)} traces",
                ),
            )
        for (seq, item, key), verdict in zip(job.entries, verdicts, strict=True):
            self._settle(seq, item, verdict)
            if key is None:
                continue
            if self._cache is not None:
                self._cache.put(key, verdict)
            for wait_seq, wait_item in self._waiting.pop(key, []):
                self._settle(wait_seq, wait_item, verdict, cached=True)

    def _failed_batch(self, job: Job, error: ErrorInfo) -> list[Verdict]:
        return [
            Verdict.failed(AuditStatus.AUDITOR_ERROR, auditor=self._auditor_name, error=error)
            for _ in job.entries
        ]

    def _settle(self, seq: int, item: LogItem, verdict: Verdict, *, cached: bool = False) -> None:
        decision = self._policy.decide(verdict, item.trace or _EMPTY_TRACE)
        if self._on_decision is not None:
            self._on_decision(item, decision)
        record = build_record(item, verdict, decision, cached=cached)
        self._summary.add(record)
        self._ready[seq] = encode_record(record)
        wrote = False
        while self._next_write in self._ready:
            self._writer.write(self._ready.pop(self._next_write))
            self._next_write += 1
            wrote = True
        if wrote:
            self._on_write()
