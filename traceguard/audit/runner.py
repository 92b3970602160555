"""Auditing log files end to end: :func:`run_audit` (threads) and :func:`arun_audit` (asyncio).

Both read the inputs as a stream, audit the traces with bounded concurrency, and write one record
per trace to ``out`` in input order (see :mod:`traceguard.audit.records`). Both share all logic
in :class:`~traceguard.audit._pipeline.Pipeline`; they differ only in how they wait for the
auditor. Neither starts an event loop of its own.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Hashable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol, TypedDict, TypeVar

from traceguard._auditor import Auditor
from traceguard._exceptions import ConfigurationError
from traceguard._policy import Policy
from traceguard._sinks import Sink
from traceguard._verdict import Verdict
from traceguard.audit._delivery import Delivery, close_sinks
from traceguard.audit._messages import LogItem
from traceguard.audit._output import OutputWriter, existing_records, truncate_torn_tail
from traceguard.audit._pipeline import READER_AUDITOR, Job, Pipeline
from traceguard.audit.cache import VerdictCache
from traceguard.audit.progress import Progress
from traceguard.audit.readers import Format, LogReader, expand_inputs
from traceguard.audit.summary import AuditSummary

if TYPE_CHECKING:
    from typing import Unpack

__all__ = ["AuditOptions", "arun_audit", "common_image_root", "open_readers", "run_audit"]

PathLike = str | os.PathLike[str]

_THREADS = 4
_TASKS = 8


@dataclass(frozen=True)
class AuditOptions:
    """How an offline audit runs: everything but the inputs and the output file.

    Pass one to :func:`run_audit` / :func:`arun_audit` (``run_audit(logs, out, options)``), or
    give the same names as keywords; keywords override the options object.
    """

    auditor: Auditor | None = None
    """Who grades; default the rule baseline (:class:`~traceguard.BaselineAuditor`) with an
    :class:`~traceguard.ImageAccess` rooted at :func:`common_image_root`."""
    policy: Policy | None = None
    """Maps verdicts to actions; default ``Policy()``."""
    format: Format | Literal["auto"] = "auto"
    """The input format; ``auto`` detects each file's."""
    image_root: PathLike | None = None
    """The folder image paths resolve under (default: each log file's folder)."""
    batch_output: PathLike | None = None
    """The Batch API output file, when not found next to the request file."""
    concurrency: int | None = None
    """Auditor calls in flight at once; default 4 worker threads (:func:`run_audit`) or 8 tasks
    (:func:`arun_audit`)."""
    batch_size: int = 1
    """Traces per auditor call (``audit_batch``)."""
    resume: bool = False
    """Keep the records already in the output (checked against the input), audit the rest."""
    cache: PathLike | VerdictCache | None = None
    """A verdict cache (or its SQLite path); None disables caching."""
    report: PathLike | None = None
    """Also write a self-contained HTML report there."""
    progress: bool | Progress = False
    """Print progress on stderr (or pass a :class:`Progress`)."""
    sinks: Sequence[Sink] = ()
    """Also hand every decision to these sinks (a JSONL log, a webhook, the review queue);
    the run closes them when it ends. Records a sink could not take are counted in
    ``AuditSummary.sink_errors``, never silently lost."""


class _AuditKeywords(TypedDict, total=False):
    """The fields of :class:`AuditOptions`, as keywords of :func:`run_audit`."""

    auditor: Auditor | None
    policy: Policy | None
    format: Format | Literal["auto"]
    image_root: PathLike | None
    batch_output: PathLike | None
    concurrency: int | None
    batch_size: int
    resume: bool
    cache: PathLike | VerdictCache | None
    report: PathLike | None
    progress: bool | Progress
    sinks: Sequence[Sink]


def _options(options: AuditOptions | None, keywords: _AuditKeywords) -> AuditOptions:
    base = options if options is not None else AuditOptions()
    if not isinstance(base, AuditOptions):
        raise TypeError(f"options must be AuditOptions, not {type(base).__name__}")
    return replace(base, **keywords) if keywords else base


def open_readers(
    inputs: Sequence[PathLike] | PathLike,
    *,
    format: Format | Literal["auto"] = "auto",
    image_root: PathLike | None = None,
    batch_output: PathLike | None = None,
) -> list[LogReader]:
    """One reader per input file (folders expand to their log files); formats detected here."""
    paths = [Path(inputs)] if isinstance(inputs, str | os.PathLike) else [Path(p) for p in inputs]
    files = expand_inputs(paths)
    root = Path(image_root) if image_root is not None else None
    if root is not None and not root.is_dir():
        raise ConfigurationError(f"--image-root is not a folder: {root}")
    readers = [LogReader(f, format, image_root=root) for f in files]
    if batch_output is not None:
        batch_readers = [r for r in readers if r.format == "openai-batch"]
        if len(batch_readers) != 1:
            raise ConfigurationError("--batch-output needs exactly one openai-batch request file")
        output = Path(batch_output)
        if not output.is_file():
            raise ConfigurationError(f"batch output file not found: {output}")
        batch_readers[0].batch_output = output
    return readers


def common_image_root(readers: Sequence[LogReader], image_root: PathLike | None = None) -> Path:
    """The folder an auditor's :class:`ImageAccess` should allow: ``image_root`` if given, else
    the deepest folder holding every input file (each file's images resolve under its own
    folder, which this contains)."""
    if image_root is not None:
        return Path(image_root).resolve()
    if not readers:
        return Path.cwd()
    return Path(os.path.commonpath([str(r.path.resolve().parent) for r in readers]))


def _chain(readers: Sequence[LogReader]) -> Iterator[LogItem]:
    for reader in readers:
        yield from reader.items()


class _Run:
    """Setup and teardown shared by both drivers (and the Ray engine): readers, resume, cache,
    writer, progress, sinks."""

    def __init__(
        self,
        inputs: Sequence[PathLike] | PathLike,
        out: PathLike,
        options: AuditOptions,
        *,
        default_concurrency: int,
    ) -> None:
        concurrency = (
            options.concurrency if options.concurrency is not None else default_concurrency
        )
        batch_size = options.batch_size
        if concurrency < 1:
            raise ConfigurationError("concurrency must be at least 1")
        if batch_size < 1:
            raise ConfigurationError("batch size must be at least 1")
        image_root, cache, progress = options.image_root, options.cache, options.progress
        auditor, policy, report = options.auditor, options.policy, options.report
        self.started = time.monotonic()
        self.out = Path(out)
        self.readers = open_readers(
            inputs,
            format=options.format,
            image_root=image_root,
            batch_output=options.batch_output,
        )
        self.concurrency = concurrency
        self.owns_auditor = auditor is None
        if auditor is None:
            from traceguard._images import ImageAccess
            from traceguard.auditors.baseline import BaselineAuditor

            access = ImageAccess(root=common_image_root(self.readers, image_root))
            auditor = BaselineAuditor(image_access=access)
        self.auditor = auditor
        self.policy = policy if policy is not None else Policy()
        self.report = Path(report) if report is not None else None
        self.summary = AuditSummary(output=self.out)
        self.owns_cache = cache is not None and not isinstance(cache, VerdictCache)
        self.cache = (
            cache
            if isinstance(cache, VerdictCache) or cache is None
            else VerdictCache(os.fspath(cache))
        )
        items = _chain(self.readers)
        if options.resume and self.out.exists():
            self._skip_written(items)
        self.writer = OutputWriter(self.out, append=options.resume)
        self.delivery = Delivery(options.sinks)
        total = sum(r.size for r in self.readers)
        if isinstance(progress, Progress):
            self.progress = progress
        else:
            self.progress = Progress(total, enabled=progress)
        self.pipeline = Pipeline(
            items,
            auditor_name=auditor.name,
            mode=str(getattr(auditor, "mode", "full")),
            policy=self.policy,
            writer=self.writer,
            summary=self.summary,
            cache=self.cache,
            batch_size=batch_size,
            window=concurrency * batch_size * 4 + 32,
            on_write=self._on_write,
            on_decision=self.delivery.emit if self.delivery else None,
        )

    def _skip_written(self, items: Iterator[LogItem]) -> None:
        """Check the records already in ``out`` against the input and skip past them."""
        truncate_torn_tail(self.out)
        for number, record in enumerate(existing_records(self.out), start=1):
            item = next(items, None)
            if item is None:
                raise ConfigurationError(
                    f"cannot resume: {self.out} has more records than the input has traces"
                )
            if record.get("id") != item.id:
                raise ConfigurationError(
                    f"cannot resume: record {number} of {self.out} is {record.get('id')!r} but "
                    f"trace {number} of the input is {item.id!r}; the input changed since the "
                    "interrupted run (run again without --resume)"
                )
            written_by = record.get("auditor")
            if written_by not in (None, READER_AUDITOR, self.auditor.name):
                # Mixing two auditors' verdicts in one file would make it look like one audit.
                raise ConfigurationError(
                    f"cannot resume: record {number} of {self.out} was graded by "
                    f"{written_by!r} but this run uses {self.auditor.name!r}; resume with the "
                    "same auditor and mode (or run again without --resume)"
                )
            self.summary.add(record)
            self.summary.resumed += 1

    def _on_write(self) -> None:
        self.progress.update(self.summary.records, sum(r.counter.bytes for r in self.readers))

    def finish(self) -> AuditSummary:
        """Close everything, write the report, and return the summary."""
        self.close()
        self.progress.close()
        if self.report is not None:
            from traceguard.audit.report import write_report

            write_report(
                self.out,
                self.report,
                image_root=common_image_root(self.readers),
                summary=self.summary,
            )
            self.summary.report = self.report
        self.summary.elapsed_s = time.monotonic() - self.started
        self.summary.cache_disabled = self.cache.disabled if self.cache is not None else None
        return self.summary

    def close(self) -> None:
        """Release files, the cache and the sinks (and the auditor, when this run created it)."""
        self.writer.close()
        self.summary.sink_errors = self.delivery.close()
        if self.cache is not None and self.owns_cache:
            self.cache.close()
        elif self.cache is not None:
            self.cache.flush()
        if self.owns_auditor:
            self.auditor.close()


def _open_run(
    inputs: Sequence[PathLike] | PathLike,
    out: PathLike,
    options: AuditOptions,
    *,
    default_concurrency: int,
) -> _Run:
    """A :class:`_Run`; if it cannot start, the sinks it was given are closed all the same."""
    try:
        return _Run(inputs, out, options, default_concurrency=default_concurrency)
    except BaseException:
        close_sinks(options.sinks)
        raise


def run_audit(
    inputs: Sequence[PathLike] | PathLike,
    out: PathLike,
    options: AuditOptions | None = None,
    **keywords: Unpack[_AuditKeywords],
) -> AuditSummary:
    """Audit log files and write one verdict record per trace to ``out``, in input order.

    Args:
        inputs: log files or folders of them.
        out: the JSON Lines output; overwritten unless ``resume``.
        options: how to run (:class:`AuditOptions`): auditor, policy, format, image root,
            concurrency (worker threads, default 4), batch size, resume, cache, report, progress,
            sinks.
        keywords: the fields of :class:`AuditOptions` by name (``auditor=..., resume=True``);
            they override ``options``.

    Raises:
        ConfigurationError: bad options, missing inputs, or an output that cannot be resumed.
        TypeError: a keyword that is not a field of :class:`AuditOptions`.
    """
    run = _open_run(inputs, out, _options(options, keywords), default_concurrency=_THREADS)
    try:
        _drive_threads(run.pipeline, run.auditor, run.concurrency)
    except BaseException:
        run.close()
        raise
    return run.finish()


def _drive_threads(pipeline: Pipeline, auditor: Auditor, concurrency: int) -> None:
    with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="traceguard-audit") as pool:
        in_flight: dict[Future[list[Verdict]], Job] = {}

        def submit(job: Job) -> Future[list[Verdict]]:
            return pool.submit(auditor.audit_batch, job.traces)

        try:
            while _submit(pipeline, in_flight, concurrency, submit):
                done, _ = wait(in_flight, return_when=FIRST_COMPLETED)
                for future in done:
                    pipeline.complete(in_flight.pop(future), _outcome(future))
        finally:
            for future in in_flight:
                future.cancel()
    _check_drained(pipeline)


async def arun_audit(
    inputs: Sequence[PathLike] | PathLike,
    out: PathLike,
    options: AuditOptions | None = None,
    **keywords: Unpack[_AuditKeywords],
) -> AuditSummary:
    """Async :func:`run_audit`: auditor calls go through ``aaudit_batch`` as concurrent tasks
    (default 8 in flight).

    Prefer it for served auditors (native async HTTP, no thread per request in flight).
    Arguments are those of :func:`run_audit`.
    """
    run = _open_run(inputs, out, _options(options, keywords), default_concurrency=_TASKS)
    try:
        await _drive_tasks(run.pipeline, run.auditor, run.concurrency)
    except BaseException:
        run.close()
        raise
    return run.finish()


async def _drive_tasks(pipeline: Pipeline, auditor: Auditor, concurrency: int) -> None:
    in_flight: dict[asyncio.Task[list[Verdict]], Job] = {}

    def submit(job: Job) -> asyncio.Task[list[Verdict]]:
        return asyncio.ensure_future(auditor.aaudit_batch(job.traces))

    try:
        while _submit(pipeline, in_flight, concurrency, submit):
            done, _ = await asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                pipeline.complete(in_flight.pop(task), _outcome(task))
    finally:
        for task in in_flight:
            task.cancel()
        if in_flight:
            await asyncio.gather(*in_flight, return_exceptions=True)
    _check_drained(pipeline)


_Call = TypeVar("_Call", bound=Hashable)


def _submit(
    pipeline: Pipeline,
    in_flight: dict[_Call, Job],
    concurrency: int,
    submit: Callable[[Job], _Call],
) -> bool:
    """Start auditor calls until ``concurrency`` are in flight or no job is ready.

    Returns False when nothing is in flight, i.e. the run is over.
    """
    while len(in_flight) < concurrency:
        job = pipeline.next_job()
        if job is None:
            break
        in_flight[submit(job)] = job
    return bool(in_flight)


class _Done(Protocol):
    """A finished auditor call: a thread pool future or an asyncio task."""

    def cancelled(self) -> bool: ...

    def exception(self) -> BaseException | None: ...

    def result(self) -> list[Verdict]: ...


def _outcome(call: _Done) -> list[Verdict] | BaseException:
    """What the auditor answered: its verdicts, or the exception it raised."""
    if call.cancelled():  # from inside the auditor: this run cancels only calls it abandons
        return asyncio.CancelledError("auditor call was cancelled")
    exc = call.exception()
    return exc if exc is not None else call.result()


def _check_drained(pipeline: Pipeline) -> None:
    # Guards the "never fewer records" promise against a scheduling bug.
    if not pipeline.exhausted or pipeline.unwritten:
        raise RuntimeError(f"audit pipeline stopped early ({pipeline.unwritten} records unwritten)")
