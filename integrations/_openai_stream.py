"""Guarded streams that stay ``openai.Stream`` / ``openai.AsyncStream`` instances.

They subclass the SDK's stream classes so ``isinstance`` checks, ``with`` blocks and ``close()``
keep working, and drive a :class:`StreamState` (all the rules) over the upstream stream (all the
I/O). The two classes differ only in ``for`` vs ``async for`` and ``check`` vs ``acheck``.

With checkpoints (``Guard(..., checkpoints=AuditSchedule(...))``) the partial output is audited
in the background while chunks keep flowing, one audit at a time; a blocking checkpoint closes
the upstream at once (the async stream even while it waits for the next chunk, the sync one at
the next chunk).

A passthrough stream cut short (closed by the caller, left in a ``with`` block, garbage
collected, or failed upstream) still audits what the caller was shown, once, before it ends
(:meth:`StreamState.partial_traces`). Closing never raises :class:`~traceguard.Blocked`; an upstream
error propagates unchanged once the audit is recorded.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Iterator
from typing import Generic, Literal, TypeVar

from openai import AsyncStream, Stream

from traceguard._checkpoints import AsyncBackgroundAudit, BackgroundAudit
from traceguard._decision import Decision
from traceguard._guard import Guard
from traceguard._streaming import StreamState
from traceguard._trace import Trace

__all__ = ["GuardedAsyncStream", "GuardedStream"]

_T = TypeVar("_T")

logger = logging.getLogger("traceguard.integrations.openai")

_Cut = Literal["closed", "upstream_error"]

_AUDIT_FAILED = "traceguard: auditing what a stream cut short (%s) had shown failed"

# What ``Stream.__init__`` / ``AsyncStream.__init__`` set and callers may read.
_UPSTREAM_ATTRIBUTES = ("response", "_cast_to", "_client", "_options", "_decoder")


class _Guarded(Generic[_T]):
    """The state both guarded streams hold: the upstream's attributes, the rules, the guard."""

    _state: StreamState[_T]
    _guard: Guard

    def _adopt(
        self, upstream: Stream[_T] | AsyncStream[_T], state: StreamState[_T], guard: Guard
    ) -> None:
        # Not calling Stream.__init__ on purpose: it would start a second SSE decoder over the
        # upstream's HTTP response. The attributes callers may read are shared instead.
        for name in _UPSTREAM_ATTRIBUTES:
            setattr(self, name, getattr(upstream, name))
        self._state = state
        self._guard = guard

    @property
    def decisions(self) -> list[Decision]:
        """The decisions taken so far (the last one covers the whole output)."""
        return list(self._state.decisions)


class GuardedStream(_Guarded[_T], Stream[_T]):
    """A sync SDK stream whose chunks are released as the guard allows.

    Attributes:
        decisions: every decision taken on this stream so far (early thinking audits first).
    """

    def __init__(self, upstream: Stream[_T], state: StreamState[_T], guard: Guard) -> None:
        self._adopt(upstream, state, guard)
        self._upstream = upstream
        self._iterator = self._run()

    def _run(self) -> Iterator[_T]:
        state = self._state
        upstream = iter(self._upstream)
        audits = BackgroundAudit(self._check_checkpoint)
        try:
            while True:
                try:
                    chunk = next(upstream)
                except StopIteration:
                    break
                except Exception:
                    self._audit_partial("upstream_error")
                    raise
                released = state.on_chunk(chunk)
                ending = self._audits_after_chunk(audits)
                if ending is not None:
                    self._upstream.close()  # stop paying for tokens nobody will see
                    yield from ending
                    return
                yield from released
            ending = _checkpoint_ending(state, audits.wait())
            if ending is not None:
                yield from ending
                return
            yield from state.after_final(self._guard.check_batch(state.final_traces()))
        except GeneratorExit:  # close(), a ``with`` exit, garbage collection
            self._audit_partial("closed")
            raise
        finally:
            self._upstream.close()

    def _audits_after_chunk(self, audits: BackgroundAudit) -> list[_T] | None:
        """Run the audits a chunk calls for; the chunks that end the stream, or None."""
        state = self._state
        ending = _checkpoint_ending(state, audits.done())
        if ending is not None:
            return ending
        early = state.early_traces()
        if early:
            # The chunk that ended the thinking waits for its audit: in passthrough mode the
            # first answer token would otherwise slip out ahead of a block. A checkpoint still
            # in flight is heard first, so that a stream never has two audits running.
            ending = _checkpoint_ending(state, audits.wait())
            if ending is not None:
                return ending
            return state.after_early(self._guard.check_batch(early))
        _start_due(state, audits)
        return None

    def _check_checkpoint(self, traces: list[Trace]) -> list[Decision]:
        return self._guard.checkpoint_guard.check_batch(traces, wait_for_review=False)

    def _audit_partial(self, cause: _Cut) -> None:
        """Audit and record what was shown of a stream cut short; never raises."""
        try:
            traces = self._state.partial_traces(cause)
            if traces:
                self._state.after_partial(self._guard.check_batch(traces))
        except Exception:
            logger.exception(_AUDIT_FAILED, cause)

    def close(self) -> None:
        """Close this stream and the upstream HTTP response."""
        # A generator running in another thread cannot be closed from here; the upstream can.
        with contextlib.suppress(ValueError):
            self._iterator.close()  # type: ignore[attr-defined]
        self._upstream.close()


class GuardedAsyncStream(_Guarded[_T], AsyncStream[_T]):
    """The async twin of :class:`GuardedStream`; audits with ``Guard.acheck_batch``."""

    def __init__(self, upstream: AsyncStream[_T], state: StreamState[_T], guard: Guard) -> None:
        self._adopt(upstream, state, guard)
        self._upstream = upstream
        self._iterator = self._run()

    async def _run(self) -> AsyncIterator[_T]:
        state = self._state
        upstream = self._upstream.__aiter__()
        audits: AsyncBackgroundAudit[_T] = AsyncBackgroundAudit(self._check_checkpoint)
        try:
            while True:
                try:
                    chunk, decided = await audits.pull(upstream)
                except Exception:
                    await self._audit_partial("upstream_error")
                    raise
                if decided is not None:  # a checkpoint finished before the next chunk came
                    ending = _checkpoint_ending(state, decided)
                    if ending is None:
                        _start_due(state, audits)  # one fell due meanwhile: it goes now
                        continue
                elif chunk is None:
                    break
                else:
                    released = state.on_chunk(chunk)
                    ending = await self._audits_after_chunk(audits)
                    if ending is None:
                        for out in released:
                            yield out
                        continue
                await audits.cancel()
                await self._upstream.close()
                for out in ending:
                    yield out
                return
            ending = _checkpoint_ending(state, await audits.wait())
            if ending is not None:
                for out in ending:
                    yield out
                return
            final = await self._guard.acheck_batch(state.final_traces())
            for out in state.after_final(final):
                yield out
        except GeneratorExit:  # aclose(): close(), an ``async with`` exit, the loop's finalizer
            await audits.cancel()
            await self._audit_partial("closed")
            raise
        finally:
            await audits.cancel()
            await self._upstream.close()

    async def _audits_after_chunk(self, audits: AsyncBackgroundAudit[_T]) -> list[_T] | None:
        """The async twin of :meth:`GuardedStream._audits_after_chunk`."""
        state = self._state
        ending = _checkpoint_ending(state, audits.done())
        if ending is not None:
            return ending
        early = state.early_traces()
        if early:
            ending = _checkpoint_ending(state, await audits.wait())
            if ending is not None:
                return ending
            return state.after_early(await self._guard.acheck_batch(early))
        _start_due(state, audits)
        return None

    async def _check_checkpoint(self, traces: list[Trace]) -> list[Decision]:
        return await self._guard.checkpoint_guard.acheck_batch(traces, wait_for_review=False)

    async def _audit_partial(self, cause: _Cut) -> None:
        """Audit and record what was shown of a stream cut short; never raises."""
        try:
            traces = self._state.partial_traces(cause)
            if traces:
                self._state.after_partial(await self._guard.acheck_batch(traces))
        except Exception:
            logger.exception(_AUDIT_FAILED, cause)

    async def close(self) -> None:
        """Close this stream and the upstream HTTP response."""
        with contextlib.suppress(RuntimeError):
            await self._iterator.aclose()  # type: ignore[attr-defined]
        await self._upstream.close()


def _checkpoint_ending(state: StreamState[_T], decisions: list[Decision] | None) -> list[_T] | None:
    """A finished checkpoint's decisions, handed to the state: the ending chunks, or None."""
    return None if decisions is None else state.after_checkpoint(decisions)


def _start_due(state: StreamState[_T], audits: BackgroundAudit | AsyncBackgroundAudit[_T]) -> None:
    """Start the audit of a checkpoint that is due, if any (none while one is in flight)."""
    traces = state.checkpoint_traces()
    if traces:
        audits.start(traces)
