"""Guarded streams that stay ``openai.Stream`` / ``openai.AsyncStream`` instances.

They subclass the SDK's stream classes so ``isinstance`` checks, ``with`` blocks and ``close()``
keep working, and drive a :class:`StreamState` (all the rules) over the upstream stream (all the
I/O). The two classes differ only in ``for`` vs ``async for`` and ``check`` vs ``acheck``.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from typing import Generic, TypeVar

from openai import AsyncStream, Stream

from traceguard._decision import Decision
from traceguard._guard import Guard

from ._openai_stream_state import StreamState

__all__ = ["GuardedAsyncStream", "GuardedStream"]

_T = TypeVar("_T")

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
        try:
            for chunk in self._upstream:
                released = state.on_chunk(chunk)
                early = state.early_traces()
                if early:
                    # The chunk that ended the thinking waits for its audit: in passthrough mode
                    # the first answer token would otherwise slip out ahead of a block.
                    ending = state.after_early(self._guard.check_batch(early))
                    if ending is not None:
                        self._upstream.close()  # stop paying for tokens nobody will see
                        yield from ending
                        return
                yield from released
            yield from state.after_final(self._guard.check_batch(state.final_traces()))
        finally:
            self._upstream.close()

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
        try:
            async for chunk in self._upstream:
                released = state.on_chunk(chunk)
                early = state.early_traces()
                if early:
                    ending = state.after_early(await self._guard.acheck_batch(early))
                    if ending is not None:
                        await self._upstream.close()
                        for out in ending:
                            yield out
                        return
                for out in released:
                    yield out
            final = await self._guard.acheck_batch(state.final_traces())
            for out in state.after_final(final):
                yield out
        finally:
            await self._upstream.close()

    async def close(self) -> None:
        """Close this stream and the upstream HTTP response."""
        with contextlib.suppress(RuntimeError):
            await self._iterator.aclose()  # type: ignore[attr-defined]
        await self._upstream.close()
