"""Bounded pools of httpx clients: the HTTP backend's concurrency limit and connection reuse.

A pool holds ``max_concurrency`` *slots* spread over a few small clients. Taking a slot is the
concurrency limit (a blocking queue for threads, an asyncio queue for coroutines); the slot's
client always has a free connection, so httpx never queues a request internally.

Why several small clients rather than one big one: httpcore re-scans its whole connection list,
quadratically, each time a request enters or leaves the pool. At 32 connections that costs
milliseconds of CPU per request, more than the rest of the client path together; with shards
of :data:`SHARD_SIZE` connections it is negligible.
"""

from __future__ import annotations

import asyncio
import queue
import ssl
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Generic, TypeVar

import httpx

__all__ = ["SHARD_SIZE", "AsyncClientPool", "ClientPool", "shard_sizes", "shared_ssl_context"]

SHARD_SIZE = 4

_C = TypeVar("_C", httpx.Client, httpx.AsyncClient)

_ssl_context: ssl.SSLContext | None = None


def shared_ssl_context() -> ssl.SSLContext:
    """One verifying SSL context for every client (building one loads the CA bundle, ~20 ms)."""
    global _ssl_context
    if _ssl_context is None:
        _ssl_context = httpx.create_ssl_context()
    return _ssl_context


def shard_sizes(total: int, shard: int = SHARD_SIZE) -> list[int]:
    """Split ``total`` connections over as few clients of at most ``shard`` as possible, evenly."""
    if total < 1 or shard < 1:
        raise ValueError("total and shard must be positive")
    count = -(-total // shard)
    base, extra = divmod(total, count)
    return [base + (1 if i < extra else 0) for i in range(count)]


def _slot_order(sizes: list[int]) -> list[int]:
    # Interleaved (0, 1, 2, 0, 1, 2, ...) so that light load still spreads over the clients.
    order: list[int] = []
    for depth in range(max(sizes)):
        order.extend(i for i, size in enumerate(sizes) if depth < size)
    return order


class _Pool(Generic[_C]):
    def __init__(self, total: int, make_client: Callable[[int], _C]) -> None:
        sizes = shard_sizes(total)
        self.clients: list[_C] = [make_client(size) for size in sizes]
        self._order = _slot_order(sizes)


class ClientPool(_Pool[httpx.Client]):
    """Sync clients behind a thread-safe slot queue."""

    def __init__(self, total: int, make_client: Callable[[int], httpx.Client]) -> None:
        super().__init__(total, make_client)
        self._free: queue.SimpleQueue[int] = queue.SimpleQueue()
        for index in self._order:
            self._free.put(index)

    @contextmanager
    def slot(self, timeout: float | None = None) -> Iterator[httpx.Client]:
        """Wait (up to ``timeout`` s) for a free slot and lend its client.

        Raises:
            TimeoutError: no slot came free in time.
        """
        try:
            index = self._free.get(timeout=None if timeout is None else max(timeout, 0.0))
        except queue.Empty:
            raise TimeoutError("no free connection in time") from None
        try:
            yield self.clients[index]
        finally:
            self._free.put(index)

    def close(self) -> None:
        """Close every client."""
        for client in self.clients:
            client.close()


class AsyncClientPool(_Pool[httpx.AsyncClient]):
    """Async clients behind an asyncio slot queue; belongs to the event loop that uses it."""

    def __init__(self, total: int, make_client: Callable[[int], httpx.AsyncClient]) -> None:
        super().__init__(total, make_client)
        self._free: asyncio.Queue[int] = asyncio.Queue()
        for index in self._order:
            self._free.put_nowait(index)

    @asynccontextmanager
    async def slot(self, timeout: float | None = None) -> AsyncIterator[httpx.AsyncClient]:
        """Wait (up to ``timeout`` s) for a free slot and lend its client.

        Raises:
            TimeoutError: no slot came free in time.
        """
        index = await (self._free.get() if timeout is None else self._get_within(timeout))
        try:
            yield self.clients[index]
        finally:
            self._free.put_nowait(index)

    async def _get_within(self, timeout: float) -> int:
        # Not asyncio.wait_for: before Python 3.12 it can drop an item that arrives as the
        # timeout fires, and a slot lost that way would shrink the pool for good.
        getter = asyncio.ensure_future(self._free.get())
        try:
            await asyncio.wait({getter}, timeout=max(timeout, 0.0))
        except BaseException:
            if getter.done() and not getter.cancelled():
                self._free.put_nowait(getter.result())  # taken as we were cancelled: give back
            else:
                getter.cancel()
            raise
        if getter.done():
            return getter.result()
        getter.cancel()  # Queue.get leaves the item queued when cancelled before taking it
        raise TimeoutError("no free connection in time")

    async def aclose(self) -> None:
        """Close every client."""
        for client in self.clients:
            await client.aclose()
