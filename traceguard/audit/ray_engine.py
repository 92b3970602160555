"""The offline audit on a Ray cluster: :func:`run_audit_ray` (``traceguard audit --engine ray``).

Same readers, formats, policy, verdict cache and output records as :func:`~traceguard.audit.
run_audit`; the auditing runs on Ray Data across machines and GPUs::

    read task (driver's node)  ->  map_batches over an actor pool  ->  driver
    open_readers, cache hits       one auditor per actor, built       writes the records in
    (streamed, backpressured)      from the GuardConfig it is sent    input order, commits
                                   (a local model per GPU, or a       blocks that finish
                                   served backend with C calls in     early, merges, reports
                                   flight per actor)

Exactly once: every trace has a number in input order (its record id is the in-process
engine's). The driver appends a block of records to ``out`` when all blocks before it are
written; a block that finishes early is committed to ``<out>.parts/`` atomically (see
:mod:`traceguard.audit._ray_parts`). A worker that dies mid-block has its block retried by Ray
Data; a block seen twice is written once. After the driver itself dies, ``resume=True`` keeps
the records in ``out`` (checked against the input, as in-process) and the committed blocks, and
audits only the rest. At the end ``out`` holds one record per input record, in input order, and
the parts folder is gone.

Ray is an optional extra (``pip install 'traceguard-vl[ray]'``); nothing else imports this
module.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pickle
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

from traceguard._exceptions import ConfigurationError
from traceguard._version import install_hint
from traceguard.audit._ray_parts import PartStore, Range, input_fingerprint
from traceguard.audit.runner import AuditOptions, PathLike, _open_run, _options, _Run
from traceguard.audit.summary import AuditSummary
from traceguard.config import GuardConfig

__all__ = ["RayOptions", "run_audit_ray"]

_log = logging.getLogger("traceguard.audit.ray")


@dataclass(frozen=True)
class RayOptions:
    """Where and how wide the Ray engine runs (the audit itself is :class:`AuditOptions`)."""

    address: str | None = None
    """The cluster (``ray://head:10001``, ``head:6379`` or ``auto``); None starts a local Ray
    for this run and stops it at the end. Ignored when Ray is already initialised."""
    actors: int = 2
    """Auditor actors in the pool (one model replica or one HTTP client each)."""
    gpus_per_actor: float = 0.0
    """GPUs reserved by each actor (1 for a local model on a GPU node; 0 for a served backend)."""
    cpus_per_actor: float = 1.0
    """CPUs reserved by each actor."""
    rows_per_block: int = 512
    """Traces per block: the unit of work sent to an actor and of commit. Large enough that
    the calls still in flight at the end of a block (the block's tail, when the actor's
    concurrency is not used in full) are a small share of it."""


def _import_ray() -> Any:
    try:
        import ray
        import ray.data
    except ImportError as exc:  # pragma: no cover - the [ray] extra is part of dev
        raise ImportError(f"the Ray engine needs Ray Data: {install_hint('ray')} ({exc})") from exc
    return ray


def _default_concurrency(config: GuardConfig) -> int:
    # As the command line: a local model batches in one call, a served one overlaps many.
    return 1 if config.runs_locally() else 16 if config.is_served() else 4


def run_audit_ray(
    inputs: Sequence[PathLike] | PathLike,
    out: PathLike,
    config: GuardConfig,
    options: AuditOptions | None = None,
    ray_options: RayOptions | None = None,
) -> AuditSummary:
    """Audit log files on Ray and write one record per trace to ``out``, in input order.

    Args:
        inputs: log files or folders of them (readable from the driver's machine).
        out: the JSON Lines output (the in-process engine's schema); overwritten unless
            ``options.resume``.
        config: the guard: every actor builds its auditor and policy from it. Image paths and a
            local checkpoint must be readable on the worker machines (a shared file system).
        options: as for :func:`~traceguard.audit.run_audit`; ``concurrency`` and
            ``batch_size`` apply per actor. ``auditor`` must be unset (it comes from
            ``config``); ``policy``, when set, replaces the configuration's.
        ray_options: the cluster and the actor pool (:class:`RayOptions`).

    Raises:
        ConfigurationError: bad options, an output or committed blocks that cannot be resumed.
        ImportError: Ray Data is not installed.
    """
    ray = _import_ray()
    options = _options(options, {})
    ray_options = ray_options or RayOptions()
    if options.auditor is not None:
        raise ConfigurationError(
            "the Ray engine builds its auditors from the configuration: leave options.auditor unset"
        )
    if options.sinks:
        raise ConfigurationError(
            "the Ray engine does not hand decisions to sinks; the output file holds every one "
            "(run the in-process engine to feed sinks)"
        )
    if ray_options.actors < 1 or ray_options.rows_per_block < 1:
        raise ConfigurationError("actors and rows per block must be at least 1")
    if options.policy is not None:
        config = config.model_copy(update={"policy": options.policy})
    # Built here for its name and mode only (models load on first use, which never comes).
    auditor = config.build_auditor()
    run = _open_run(
        inputs,
        out,
        replace(options, auditor=auditor, policy=config.policy),
        default_concurrency=_default_concurrency(config),
    )
    try:
        started_ray = _connect(ray, ray_options.address)
        try:
            _Driver(run, config, options, ray_options).run(ray)
        finally:
            if started_ray:
                ray.shutdown()
    except BaseException:
        run.close()
        auditor.close()
        raise
    summary = run.finish()
    auditor.close()
    return summary


def _connect(ray: Any, address: str | None) -> bool:
    """Initialise Ray unless it is; True when this run started it (and must stop it)."""
    if ray.is_initialized():
        return False
    if address is None:
        ray.init(address="local", include_dashboard=False, logging_level=logging.WARNING)
    else:
        ray.init(address=address, logging_level=logging.WARNING)
    return True


_BLOCK_BYTES = 64 * 1024
"""Ray Data's block size for this dataset. Its default (128 MiB) would let the read task pack
the whole of a small input, or a large share of a big one, into one block, which one actor
then audits alone; blocks this small stream to every actor as soon as they are read."""


@contextlib.contextmanager
def _data_context() -> Iterator[None]:
    """Ray Data settings for the audit's dataset, restored afterwards (the context is the
    process's, shared with whatever else the caller runs on Ray Data)."""
    from ray.data import DataContext

    context = DataContext.get_current()
    saved = (
        context.target_max_block_size,
        context.enable_progress_bars,
        context.execution_options.preserve_order,
    )
    context.target_max_block_size = _BLOCK_BYTES
    context.enable_progress_bars = False  # the audit shows its own progress line
    context.execution_options.preserve_order = False  # the driver puts records in order
    try:
        yield
    finally:
        (
            context.target_max_block_size,
            context.enable_progress_bars,
            context.execution_options.preserve_order,
        ) = saved


class _Driver:
    """Runs the dataset and turns its rows into the output file, exactly once each."""

    def __init__(
        self, run: _Run, config: GuardConfig, options: AuditOptions, ray_options: RayOptions
    ) -> None:
        self.run_state = run
        self.config = config
        self.options = options
        self.ray_options = ray_options
        self.rows_per_block = ray_options.rows_per_block
        auditor = run.auditor
        self.mode = str(getattr(auditor, "mode", "full"))
        self.parts = PartStore(run.out)
        manifest = {
            "inputs": input_fingerprint([r.path for r in run.readers]),
            "format": options.format,
            "auditor": auditor.name,
            "mode": self.mode,
            "rows_per_block": self.rows_per_block,
        }
        self.next_seq = run.summary.records
        """The number of the next record ``out`` needs (records before it are written)."""
        self.start = self.next_seq
        """Where this run's reading starts (the records before are in ``out`` already)."""
        if options.resume:
            earlier = self.parts.resume(manifest)
        else:
            self.parts.start_fresh(manifest)
            earlier = []
        self.earlier: list[Range] = []
        for block in earlier:
            if block.end <= self.next_seq:
                self.parts.remove(block)  # merged before the interruption
            else:
                self.earlier.append(block)
        self.unmerged = list(self.earlier)
        """The interrupted run's parts not merged yet."""
        self.committed: dict[int, Range] = {}
        """Blocks of this run committed as parts, by first trace number."""
        self.total: int | None = None
        self.pending: dict[int, dict[int, bytes]] = {}
        self.read_bytes = 0

    # -- the dataset ---------------------------------------------------------------------------

    def _dataset(self, ray: Any) -> Any:
        from ray.data import ActorPoolStrategy

        from traceguard.audit._ray_source import LogSource, ReadPlan
        from traceguard.audit._ray_worker import AuditWorker

        run, options = self.run_state, self.options
        plan = ReadPlan(
            inputs=tuple(str(r.path) for r in run.readers),
            format=options.format,
            image_root=os.fspath(options.image_root) if options.image_root is not None else None,
            batch_output=os.fspath(options.batch_output)
            if options.batch_output is not None
            else None,
            auditor_name=run.auditor.name,
            mode=self.mode,
            cache=str(run.cache.path) if run.cache is not None else None,
            start=self.start,
            committed=tuple(self.earlier),
            rows_per_block=self.rows_per_block,
        )
        node = ray.get_runtime_context().get_node_id()
        dataset = ray.data.read_datasource(
            LogSource(plan),
            override_num_blocks=1,
            num_cpus=0,
            # The logs and the verdict cache are on the driver's machine: read there, as Ray's
            # own from_torch(local_read=True) does.
            label_selector={"ray.io/node-id": node},
        )
        return dataset.map_batches(
            AuditWorker,
            fn_constructor_kwargs={
                "config": self.config.model_dump(mode="json"),
                "concurrency": run.concurrency,
                "batch_size": options.batch_size,
            },
            batch_size=self.rows_per_block,
            batch_format="pyarrow",
            zero_copy_batch=True,
            compute=ActorPoolStrategy(size=self.ray_options.actors),
            num_gpus=self.ray_options.gpus_per_actor or None,
            num_cpus=self.ray_options.cpus_per_actor,
        )

    def run(self, ray: Any) -> None:
        """Audit everything not yet written or committed, then merge."""
        self._drain()
        with _data_context():
            dataset = self._dataset(ray)
            for batch in dataset.iter_batches(batch_size=None, batch_format="pyarrow"):
                self._take(batch)
        if self.total is None:
            raise RuntimeError("the Ray audit ended without reading the whole input")
        self._complete_pending()
        self._drain()
        if self.next_seq != self.total or self.pending:
            missing = self.total - self.next_seq
            raise RuntimeError(
                f"the Ray audit stopped early: {missing} records are not written; run again "
                "with --resume"
            )
        self.run_state.writer.sync()
        self.parts.remove_all()

    # -- rows in -------------------------------------------------------------------------------

    def _take(self, batch: Any) -> None:
        from traceguard.audit._ray_source import END

        summary = self.run_state.summary
        cache = self.run_state.cache
        columns = {name: batch.column(name).to_pylist() for name in batch.column_names}
        touched: set[int] = set()
        for seq, kind, line, key, fresh, read_bytes, counts in zip(
            columns["seq"],
            columns["kind"],
            columns["line"],
            columns["key"],
            columns["fresh"],
            columns["read_bytes"],
            columns["counts"],
            strict=True,
        ):
            if counts is not None:
                audited, calls, hits, repeats = counts
                summary.audited += audited
                summary.auditor_calls += calls
                summary.cache_hits += hits
                summary.deduplicated += repeats
            self.read_bytes = max(self.read_bytes, read_bytes)
            if kind == END:
                self.total = seq
                continue
            if fresh is not None and key is not None and cache is not None:
                cache.put(key, pickle.loads(fresh))
            block = self._block_of(seq)
            if seq < self.next_seq or block.start in self.committed:
                continue  # a retried block seen twice: the first copy counts
            self.pending.setdefault(block.start, {})[seq] = line
            touched.add(block.start)
        for start in sorted(touched):
            self._complete(start)
        if self.total is not None:
            self._complete_pending()
        self._drain()

    def _block_of(self, seq: int) -> Range:
        """The unit ``seq`` is committed in: its aligned block, less the traces this run does
        not read (before ``start``, or in an interrupted run's parts), up to the end of the
        input once known. Every trace of a unit comes from this run's reading."""
        size = self.rows_per_block
        low = max(seq - seq % size, self.start)
        high = seq - seq % size + size
        for block in self.earlier:
            if block.end <= seq:
                low = max(low, block.end)
            elif block.start > seq:
                high = min(high, block.start)
        if self.total is not None:
            high = min(high, self.total)
        return Range(low, high)

    def _complete(self, start: int) -> None:
        lines = self.pending.get(start)
        if lines is None:
            return
        block = self._block_of(start)
        if len(lines) < block.end - block.start:
            return
        del self.pending[start]
        ordered = [lines[seq] for seq in range(block.start, block.end)]
        if block.start == self.next_seq:
            self._write(ordered)
        else:
            self.parts.commit(block, ordered)
            self.committed[block.start] = block

    def _complete_pending(self) -> None:
        for start in sorted(self.pending):
            self._complete(start)

    # -- lines out -----------------------------------------------------------------------------

    def _write(self, lines: Sequence[bytes]) -> None:
        run = self.run_state
        for line in lines:
            run.writer.write(line)
            run.summary.add(json.loads(line))
        self.next_seq += len(lines)
        run.progress.update(run.summary.records, self.read_bytes)

    def _next_part(self) -> tuple[Range, bool] | None:
        """The committed block holding ``next_seq``, and whether an earlier run wrote it."""
        block = self.committed.get(self.next_seq)
        if block is not None:
            return block, False
        for block in self.unmerged:
            if self.next_seq in block:
                return block, True
        return None

    def _drain(self) -> None:
        """Merge committed blocks that now continue the output, oldest first."""
        while (found := self._next_part()) is not None:
            block, earlier = found
            lines = self.parts.read(block)
            if len(lines) != block.end - block.start:
                raise RuntimeError(f"committed block {block} has {len(lines)} lines")
            kept = lines[self.next_seq - block.start :]
            self._write(kept)
            if earlier:
                self.run_state.summary.resumed += len(kept)
                self.unmerged.remove(block)
            else:
                del self.committed[block.start]
            self.run_state.writer.sync()  # before the part goes: the lines must be on disk
            self.parts.remove(block)
