"""The I/O shell of one relayed SSE stream: it moves the upstream's bytes to the client and
awaits the audits (the thinking-done audit holds the stream; checkpoints run beside it); every
rule of what to release, hold or end lives in the relay (:mod:`._relay`)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Literal, Protocol

from traceguard._checkpoints import AsyncBackgroundAudit
from traceguard._exceptions import Blocked

from ._apis import GuardedApi, Unreadable
from ._asgi import Send, Sender, send_error
from ._cycle import Cycle
from ._errors import ProxyError, error_event
from ._http_client import UpstreamError, UpstreamResponse
from ._keys import Client
from ._outcome import decision_headers, held_error
from ._relay import BufferFull, StreamRelay, UpstreamFailed
from ._runtime import Proxy
from ._sse import FrameTooLarge
from ._upstream_calls import upstream_problem

__all__ = ["StreamShell"]

logger = logging.getLogger("traceguard.proxy")


class Exchange(Protocol):
    """What the shell needs of the guarded request it answers (``_guarded._Exchange``)."""

    proxy: Proxy
    api: GuardedApi
    client: Client
    cycle: Cycle
    send: Send


class StreamShell:
    """Moves one stream's bytes and awaits its audits (rules in the relay)."""

    def __init__(
        self, exchange: Exchange, relay: StreamRelay, out: Sender, response: UpstreamResponse
    ) -> None:
        self.exchange = exchange
        self.relay = relay
        self.out = out
        self.response = response
        self.metrics = exchange.proxy.metrics
        self.audits: AsyncBackgroundAudit[bytes] = AsyncBackgroundAudit(self._checkpoint_audit)

    def _decided(self) -> list[tuple[str, str]]:
        headers = decision_headers(self.relay.state.decisions)
        if headers:
            self.exchange.cycle.note(action=headers[0][1])
        return headers

    async def _audit(self, traces: list[Any]) -> list[Any]:
        ex = self.exchange
        return await ex.proxy.audit(ex.client, ex.api, traces)

    async def _checkpoint_audit(self, traces: list[Any]) -> list[Any]:
        ex = self.exchange
        return await ex.proxy.audit(ex.client, ex.api, traces, checkpoint=True)

    async def _take(self, frame: Any) -> bool:
        """Handle one frame; True when the stream was ended early."""
        step = self.relay.on_frame(frame)
        decided = self.audits.done()
        if decided is not None and await self._heard(decided):
            return True
        if step.early:
            # The thinking-done audit holds the stream; a checkpoint in flight is heard first.
            waited = await self.audits.wait()
            if waited is not None and await self._heard(waited):
                return True
            ending = self.relay.after_early(await self._audit(step.early))
            if ending is not None:
                await self._end_early(ending, "early_stop")
                return True
        else:
            self._start_checkpoint()
        await self.out.write(step.release)
        return False

    def _start_checkpoint(self) -> None:
        traces = self.relay.checkpoint_traces()
        if traces:
            self.audits.start(traces)

    async def _heard(self, decisions: list[Any]) -> bool:
        """A finished checkpoint's decisions; True when they ended the stream."""
        ending = self.relay.after_checkpoint(decisions)
        if ending is None:
            return False
        await self._end_early(ending, "checkpoint_stop")
        return True

    async def _end_early(self, ending: bytes, reason: str) -> None:
        await self.audits.cancel()
        await self.response.aclose()  # stop paying for tokens nobody will see
        self._stopped(reason)
        await self.out.write(ending, headers=self._decided())
        await self.out.end()

    def _stopped(self, reason: str) -> None:
        self.metrics.inc("traceguard_proxy_stream_stops_total", reason=reason)
        self.exchange.cycle.note(stream_stop=reason)

    async def run(self) -> None:
        try:
            try:
                await self._relay_all()
            finally:
                await self.audits.cancel()
        except Blocked as exc:
            await self.response.aclose()
            self._stopped("blocked")
            await self._fail(held_error(exc.decision, self.exchange.proxy.spec.block))
        except UpstreamFailed as exc:
            self._stopped("upstream_error")
            await self._partial("upstream_error")
            self.metrics.inc("traceguard_proxy_upstream_errors_total", kind="stream_error")
            await self.out.write(exc.frame, headers=self._decided())
            await self.out.end()
        except (Unreadable, FrameTooLarge, BufferFull, UpstreamError) as exc:
            self._stopped("upstream_error")
            await self._partial("upstream_error")
            await self._fail(upstream_problem(self.metrics, exc))
        except asyncio.CancelledError:
            # The client left (or the server's shutdown deadline passed): close the upstream
            # request and record what the client was shown, then let the cancellation go on.
            await self.response.aclose()
            self._stopped("client_closed")
            await self._partial("closed")
            raise

    async def _relay_all(self) -> None:
        """Relay every upstream read; a checkpoint that ends in between is heard at once."""
        reads = self.response.aiter_bytes().__aiter__()
        while True:
            data, decided = await self.audits.pull(reads)
            if decided is not None:
                if await self._heard(decided):
                    return
                self._start_checkpoint()  # one fell due while that one ran
                continue
            if data is None:
                break
            for frame in self.relay.feed(data):
                if await self._take(frame):
                    return
            if self.relay.done:
                break  # [DONE] ends the stream, whatever the upstream sends after it
        for frame in self.relay.finish():
            if await self._take(frame):
                return
        waited = await self.audits.wait()
        if waited is not None and await self._heard(waited):
            return
        final = await self._audit(self.relay.final_traces())
        tail = self.relay.after_final(final)
        await self.out.write(tail, headers=self._decided())
        await self.out.end(headers=self._decided())

    async def _partial(self, cause: Literal["closed", "upstream_error"]) -> None:
        try:
            traces = self.relay.partial_traces(cause)
            if traces:
                self.relay.after_partial(await self._audit(traces))
        except Exception as exc:
            logger.error("auditing a stream cut short failed", exc_info=exc)

    async def _fail(self, error: ProxyError) -> None:
        cycle = self.exchange.cycle
        cycle.note(error=error.code)
        if not self.out.started:
            # Nothing was sent yet (buffer mode): a plain HTTP error, as for JSON.
            cycle.status = error.http_status
            await send_error(self.exchange.send, error)
            return
        await self.out.write(error_event(error.code, error.message))
        await self.out.end()
