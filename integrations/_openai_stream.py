"""Guarded streams: the SDK's own stream classes, built by the SDK for each guarded call.

For a streamed call the wrapper hands the SDK, in place of the request's ``stream_cls``, a
subclass of :class:`GuardedStream` / :class:`GuardedAsyncStream` made for that one call (it
carries the call's :class:`StreamCall`). The SDK builds it wherever it would have built its own
stream (``create(stream=True)``, the ``chat.completions.stream`` / ``responses.stream`` helpers),
so ``isinstance(stream, openai.Stream)``, ``with`` blocks, ``close()`` and the helpers' event
APIs keep working. The shells only move chunks and await audits; every rule lives in
:class:`~traceguard._streaming.StreamState`. The two classes differ only in ``for`` vs
``async for`` and ``check`` vs ``acheck``.

Raw streamed bodies (``with_raw_response`` / ``with_streaming_response`` with ``stream=True``)
are audited one level lower: :func:`audited_sse_response` gives the SDK an HTTP response whose
bytes are the guarded stream's chunks, re-encoded as server-sent events, so ``iter_lines()``,
``iter_bytes()`` and ``.parse()`` all read audited output.

With checkpoints (``Guard(..., checkpoints=AuditSchedule(...))``) the partial output is audited
in the background while chunks keep flowing, one audit at a time; a blocking checkpoint closes
the upstream at once (the async stream even while it waits for the next chunk, the sync one at
the next chunk).

A passthrough stream cut short (closed by the caller, left in a ``with`` block, garbage
collected, or failed upstream) still audits what the caller was shown, once, before it ends
(:meth:`StreamState.partial_traces`). Closing never raises :class:`~traceguard.Blocked`; an
upstream error propagates unchanged once the audit is recorded.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Callable,
    Generator,
    Iterator,
    Sequence,
)
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, Literal, TypeVar, cast

import httpx2
from openai import AsyncStream, Stream

from traceguard._checkpoints import AsyncBackgroundAudit, BackgroundAudit
from traceguard._decision import Decision
from traceguard._guard import Guard
from traceguard._streaming import StreamState
from traceguard._trace import Trace

__all__ = [
    "GuardedAsyncStream",
    "GuardedStream",
    "StreamCall",
    "audited_sse_response",
    "replaced_body",
    "stream_class",
]

_T = TypeVar("_T")

logger = logging.getLogger("traceguard.integrations.openai")

_Cut = Literal["closed", "upstream_error"]

_AUDIT_FAILED = "traceguard: auditing what a stream cut short (%s) had shown failed"

# Headers that described the upstream bytes, not the re-encoded ones.
_BODY_HEADERS = frozenset({"content-length", "content-encoding", "transfer-encoding"})


@dataclass(frozen=True)
class StreamCall:
    """What a guarded stream needs from the call that opened it."""

    guard: Guard
    new_state: Callable[[], StreamState[Any]]
    concluded: Callable[[StreamState[Any], Sequence[Trace]], None]
    """Called once the stream is over, with its state and the traces of the whole output (or of
    what a stream cut short had shown): records the decisions, checks the usage."""


class _Guarded(Generic[_T]):
    """What both guarded streams hold: the call, the rules and the guard."""

    _traceguard_call: ClassVar[StreamCall]
    _traceguard_traces: tuple[Trace, ...] = ()
    """The whole output as audited, before any redaction (``check_tool_calls`` reads it)."""
    _state: StreamState[_T]
    _guard: Guard

    def _setup(self) -> None:
        self._state = self._traceguard_call.new_state()
        self._guard = self._traceguard_call.guard

    @property
    def decisions(self) -> list[Decision]:
        """The decisions taken so far (the last one covers the whole output)."""
        return list(self._state.decisions)

    @property
    def traceguard_decisions(self) -> tuple[Decision, ...]:
        """The decisions taken so far, as on every other guarded result."""
        return tuple(self._state.decisions)

    def _final_traces(self) -> list[Trace]:
        traces = self._state.final_traces()
        self._traceguard_traces = tuple(traces)
        return traces

    def _partial_traces(self, cause: _Cut) -> list[Trace]:
        traces = self._state.partial_traces(cause)
        if traces:
            self._traceguard_traces = tuple(traces)
        return traces

    def _conclude(self) -> None:
        try:
            self._traceguard_call.concluded(self._state, self._traceguard_traces)
        except Exception:  # bookkeeping must never change how a stream ends
            logger.exception("traceguard: recording a stream's decisions failed")


class GuardedStream(_Guarded[_T], Stream[_T]):
    """A sync SDK stream whose chunks are released as the guard allows.

    Attributes:
        decisions: every decision taken on this stream so far (early thinking audits first).
    """

    def __init__(self, *, cast_to: type[_T], response: httpx2.Response, **kwargs: Any) -> None:
        self._setup()  # before the SDK's __init__, which creates the (lazy) iterator
        super().__init__(cast_to=cast_to, response=response, **kwargs)

    def __stream__(self) -> Iterator[_T]:
        state = self._state
        upstream = cast("Generator[_T, None, None]", super().__stream__())
        audits = BackgroundAudit(self._check_checkpoint)
        try:
            while True:
                try:
                    chunk = next(upstream)
                except StopIteration:
                    break
                except Exception:
                    self._audit_partial("upstream_error", audits)
                    raise
                released = state.on_chunk(chunk)
                ending = self._audits_after_chunk(audits)
                if ending is not None:
                    self._close_upstream(upstream)  # stop paying for tokens nobody will see
                    yield from ending
                    return
                yield from released
            ending = _checkpoint_ending(state, audits.wait())
            if ending is not None:
                yield from ending
                return
            yield from state.after_final(self._guard.check_batch(self._final_traces()))
        except GeneratorExit:  # close(), a ``with`` exit, garbage collection
            self._audit_partial("closed", audits)
            raise
        finally:
            self._close_upstream(upstream)
            self._conclude()

    def _close_upstream(self, upstream: Generator[_T, None, None]) -> None:
        upstream.close()
        self.response.close()

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

    def _audit_partial(self, cause: _Cut, audits: BackgroundAudit) -> None:
        """Audit and record what was shown of a stream cut short; never raises.

        A checkpoint audit still running on its thread is waited for first (a thread cannot be
        cancelled): it would otherwise overlap the partial audit and outlive the stream, its
        decision recorded by the sinks after the stream's end and missing from ``decisions``.
        """
        try:
            late = audits.wait()
            if late is not None:
                self._state.after_late_checkpoint(late)
            traces = self._partial_traces(cause)
            if traces:
                self._state.after_partial(self._guard.check_batch(traces))
        except Exception:
            logger.exception(_AUDIT_FAILED, cause)

    def close(self) -> None:
        """Close this stream and the upstream HTTP response."""
        # A generator running in another thread cannot be closed from here; the response can.
        with contextlib.suppress(ValueError):
            self._iterator.close()  # type: ignore[attr-defined]
        self.response.close()


class GuardedAsyncStream(_Guarded[_T], AsyncStream[_T]):
    """The async twin of :class:`GuardedStream`; audits with ``Guard.acheck_batch``."""

    def __init__(self, *, cast_to: type[_T], response: httpx2.Response, **kwargs: Any) -> None:
        self._setup()
        super().__init__(cast_to=cast_to, response=response, **kwargs)

    async def __stream__(self) -> AsyncIterator[_T]:
        state = self._state
        upstream = cast("AsyncGenerator[_T, None]", super().__stream__())
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
                await self._close_upstream(upstream)
                for out in ending:
                    yield out
                return
            ending = _checkpoint_ending(state, await audits.wait())
            if ending is not None:
                for out in ending:
                    yield out
                return
            final = await self._guard.acheck_batch(self._final_traces())
            for out in state.after_final(final):
                yield out
        except GeneratorExit:  # aclose(): close(), an ``async with`` exit, the loop's finalizer
            await audits.cancel()
            await self._audit_partial("closed")
            raise
        finally:
            await audits.cancel()
            await self._close_upstream(upstream)
            self._conclude()

    async def _close_upstream(self, upstream: AsyncGenerator[_T, None]) -> None:
        await upstream.aclose()
        await self.response.aclose()

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
            traces = self._partial_traces(cause)
            if traces:
                self._state.after_partial(await self._guard.acheck_batch(traces))
        except Exception:
            logger.exception(_AUDIT_FAILED, cause)

    async def close(self) -> None:
        """Close this stream and the upstream HTTP response."""
        with contextlib.suppress(RuntimeError):
            await self._iterator.aclose()  # type: ignore[attr-defined]
        await self.response.aclose()


def _checkpoint_ending(state: StreamState[_T], decisions: list[Decision] | None) -> list[_T] | None:
    """A finished checkpoint's decisions, handed to the state: the ending chunks, or None."""
    return None if decisions is None else state.after_checkpoint(decisions)


def _start_due(state: StreamState[_T], audits: BackgroundAudit | AsyncBackgroundAudit[_T]) -> None:
    """Start the audit of a checkpoint that is due, if any (none while one is in flight)."""
    traces = state.checkpoint_traces()
    if traces:
        audits.start(traces)


def stream_class(chunk_type: type[Any], call: StreamCall, *, is_async: bool) -> type[Any]:
    """A guarded stream class for one call, yielding ``chunk_type`` chunks."""
    guarded: type[Any] = GuardedAsyncStream if is_async else GuardedStream
    sdk_base: Any = AsyncStream if is_async else Stream
    # __orig_bases__ names the chunk type the way the SDK reads it (extract_stream_chunk_type)
    # when it builds the stream from a raw response's parse().
    namespace = {
        "_traceguard_call": call,
        "__orig_bases__": (sdk_base[chunk_type],),
        "__module__": __name__,
        "__qualname__": guarded.__qualname__,
    }
    return type(guarded.__name__, (guarded,), namespace)


# -- raw streamed bodies -----------------------------------------------------------------------


def _sse(chunk: Any) -> bytes:
    data = chunk.model_dump_json(exclude_unset=True, by_alias=True)
    kind = getattr(chunk, "type", None)
    head = f"event: {kind}\n" if isinstance(kind, str) else ""
    return f"{head}data: {data}\n\n".encode()


_DONE = b"data: [DONE]\n\n"


class _AuditedBytes(httpx2.SyncByteStream):
    def __init__(self, stream: GuardedStream[Any]) -> None:
        self._stream = stream

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self._stream:
            yield _sse(chunk)
        yield _DONE

    def close(self) -> None:
        self._stream.close()


class _AuditedAsyncBytes(httpx2.AsyncByteStream):
    def __init__(self, stream: GuardedAsyncStream[Any]) -> None:
        self._stream = stream

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._stream:
            yield _sse(chunk)
        yield _DONE

    async def aclose(self) -> None:
        await self._stream.close()


def audited_sse_response(
    response: httpx2.Response, stream: GuardedStream[Any] | GuardedAsyncStream[Any]
) -> httpx2.Response:
    """An HTTP response whose body is ``stream``'s released chunks as server-sent events."""
    headers = [(k, v) for k, v in response.headers.multi_items() if k.lower() not in _BODY_HEADERS]
    body: httpx2.SyncByteStream | httpx2.AsyncByteStream
    if isinstance(stream, GuardedAsyncStream):
        body = _AuditedAsyncBytes(stream)
    else:
        body = _AuditedBytes(stream)
    return httpx2.Response(
        response.status_code,
        headers=headers,
        stream=body,
        request=response.request,
        extensions=response.extensions,
    )


def replaced_body(response: httpx2.Response, content: bytes) -> httpx2.Response:
    """``response`` with ``content`` as its (already read) body."""
    headers = [(k, v) for k, v in response.headers.multi_items() if k.lower() not in _BODY_HEADERS]
    replaced = httpx2.Response(
        response.status_code,
        headers=headers,
        content=content,
        request=response.request,
        extensions=response.extensions,
    )
    replaced.read()
    with contextlib.suppress(Exception):
        replaced.elapsed = response.elapsed
    return replaced
