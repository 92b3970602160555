"""The I/O shells of the proxy's routes: they move bytes and await audits, nothing more.

- :func:`guarded` answers ``POST /v1/chat/completions`` and ``POST /v1/responses``: admit the
  client, read the body, forward it unchanged, then audit the JSON result (decisions applied by
  :mod:`._outcome`) or relay the SSE stream (rules in :mod:`._relay` and
  :class:`~traceguard._streaming.StreamState`).
- :func:`passthrough` forwards the endpoints ``serve.passthrough`` lists, unaudited; every other
  path under ``/v1`` is refused (``endpoint_not_guarded``).

Upstream errors (a non-2xx answer) carry no generated output: their status and headers pass
through, their body rebuilt in the OpenAI error shape only (``upstream_error_body``). A redirect
is refused (the proxy neither follows nor forwards one). Everything else the upstream sends on a
guarded endpoint is read by the SDK's types before it reaches the client, or refused; every
header and body has the proxy's own secrets scrubbed (``_upstream.py``). A request body has
``limits.body_timeout_s`` to arrive.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import Mapping
from typing import Any, Literal

from traceguard._checkpoints import AsyncBackgroundAudit
from traceguard._exceptions import Blocked
from traceguard._streaming import StreamOptions, StreamState

from ._apis import GuardedApi, Unreadable
from ._asgi import (
    ClientGone,
    Receive,
    Scope,
    Send,
    Sender,
    race_disconnect,
    read_body,
    send_error,
    send_response,
)
from ._errors import ProxyError, error_event, upstream_error_body
from ._http_client import UpstreamError, UpstreamResponse, UpstreamTimeout
from ._keys import Client
from ._logs import access_log
from ._outcome import decision_headers, held_error, settle_result
from ._relay import BufferFull, StreamRelay, UpstreamFailed
from ._runtime import Proxy
from ._sse import FrameTooLarge
from ._telemetry import span
from ._upstream import client_headers, header_value

__all__ = ["guarded", "passthrough"]

logger = logging.getLogger("traceguard.proxy")

_ID_HEADERS = {
    "x-traceguard-thread-id": "thread_id",
    "x-traceguard-session-id": "session_id",
    "x-traceguard-run-id": "run_id",
}
_MAX_ID = 128
_STREAM_MODE_HEADER = "x-traceguard-stream-mode"


class _Cycle:
    """One request's facts for the access log and the metrics (never content)."""

    def __init__(self, proxy: Proxy, scope: Scope, endpoint: str) -> None:
        self.proxy = proxy
        self.endpoint = endpoint
        self.started = time.perf_counter()
        self.request_id = uuid.uuid4().hex[:16]
        self.fields: dict[str, Any] = {
            "request_id": self.request_id,
            "method": scope.get("method"),
            "path": scope.get("path"),
            "endpoint": endpoint,
        }
        self.status = 0
        self.response_started = False

    def wrap(self, send: Send) -> Send:
        """``send`` that tags the response with the request id and notes that it started."""
        request_id = self.request_id.encode()

        async def tagged(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                self.response_started = True
                message["headers"] = [
                    *message["headers"],
                    (b"x-traceguard-request-id", request_id),
                ]
            await send(message)

        return tagged

    def note(self, **fields: Any) -> None:
        self.fields.update(fields)

    def finish(self) -> None:
        elapsed = time.perf_counter() - self.started
        metrics = self.proxy.metrics
        metrics.inc(
            "traceguard_proxy_requests_total", endpoint=self.endpoint, status=str(self.status)
        )
        metrics.observe("traceguard_proxy_request_seconds", elapsed, endpoint=self.endpoint)
        self.fields.update(status=self.status, duration_ms=round(elapsed * 1000, 3))
        access_log.info("request", extra={"fields": self.fields})


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        value = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise ProxyError("invalid_json", "The request body is not valid JSON.") from None
    if not isinstance(value, dict):
        raise ProxyError("invalid_json", "The request body must be a JSON object.")
    stream = value.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise ProxyError("invalid_body", "'stream' must be true or false.")
    return value


def _metadata(client: Client, cycle: _Cycle, headers: list[tuple[bytes, bytes]]) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "integration": "proxy",
        "client": client.name,
        "request_id": cycle.request_id,
    }
    for header, key in _ID_HEADERS.items():
        value = header_value(headers, header)
        if value and len(value) <= _MAX_ID and value.isprintable():
            meta[key] = value
    return meta


def _is_json(headers: list[tuple[bytes, bytes]]) -> bool:
    kind = header_value(headers, "content-type").split(";", 1)[0].strip().lower()
    return kind == "application/json"


async def guarded(
    proxy: Proxy, api: GuardedApi, scope: Scope, receive: Receive, send: Send
) -> None:
    """Answer one request to a guarded endpoint (see the module documentation)."""
    cycle = _Cycle(proxy, scope, api.name)
    send = cycle.wrap(send)
    headers: list[tuple[bytes, bytes]] = list(scope.get("headers", ()))
    counted = False
    with span("traceguard.proxy.request", endpoint=api.name) as request_span:
        try:
            if scope.get("method") != "POST":
                raise ProxyError("method_not_allowed", f"{api.name} takes POST only.")
            client = proxy.admit(headers)
            proxy.metrics.in_flight += 1
            counted = True
            cycle.note(client=client.name)
            if request_span is not None:
                request_span.set_attribute("traceguard.client", client.name)
            body = await read_body(
                receive,
                limit=proxy.spec.limits.max_body_bytes,
                declared=header_value(headers, "content-length"),
                timeout=proxy.spec.limits.body_timeout_s,
            )
            if not _is_json(headers):
                raise ProxyError("unsupported_media_type", "Send the request as application/json.")
            request = _json_object(body)
            context = api.context(request, _metadata(client, cycle, headers))
            cycle.note(stream=bool(request.get("stream")), model=context.model)
            exchange = _Exchange(proxy, api, client, cycle, context, send)
            completed = await race_disconnect(receive, exchange.run(scope, headers, body))
            if not completed:
                cycle.status = 499  # nginx's "client closed request"
                cycle.note(client_closed=True)
        except ProxyError as error:
            cycle.status = error.http_status
            cycle.note(error=error.code)
            await send_error(send, error)
        except ClientGone:
            cycle.status = 499
        except Exception as exc:
            # A bug: answer 500 and log where, never the message (it may quote content).
            logger.error("proxy error", exc_info=exc)
            cycle.status = 500
            cycle.note(error="internal_error")
            if not cycle.response_started:
                await send_error(
                    send, ProxyError("internal_error", "The proxy failed; nothing was passed.")
                )
        finally:
            if counted:
                proxy.metrics.in_flight -= 1
            if request_span is not None:
                request_span.set_attribute("http.response.status_code", cycle.status)
                action = cycle.fields.get("action")
                if action:
                    request_span.set_attribute("traceguard.action", action)
            cycle.finish()


class _Exchange:
    """One guarded request forwarded upstream and its answer handled."""

    def __init__(
        self,
        proxy: Proxy,
        api: GuardedApi,
        client: Client,
        cycle: _Cycle,
        context: Any,
        send: Send,
    ) -> None:
        self.proxy = proxy
        self.api = api
        self.client = client
        self.cycle = cycle
        self.context = context
        self.send = send

    async def run(self, scope: Scope, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        upstream_started = time.perf_counter()
        response = await _open(self.proxy, self.cycle, "POST", scope, headers, body, decoded=True)
        try:
            self.cycle.note(
                upstream_status=response.status_code,
                upstream_ms=round((time.perf_counter() - upstream_started) * 1000, 3),
            )
            _refuse_redirect(self.proxy, response)
            if not 200 <= response.status_code < 300:
                await self._forward_error(response)
            elif response.content_type.startswith("text/event-stream"):
                await self._stream(response)
            else:
                await self._json(response)
        finally:
            await response.aclose()

    async def _forward_error(self, response: UpstreamResponse) -> None:
        payload = await _read_limited(response, self.proxy.spec.limits.max_response_bytes)
        self.cycle.status = response.status_code
        await send_response(
            self.send,
            response.status_code,
            upstream_error_body(response.status_code, payload),
            headers=client_headers(response, decoded=True),
        )

    async def _json(self, response: UpstreamResponse) -> None:
        api = self.api
        payload = await _read_limited(response, self.proxy.spec.limits.max_response_bytes)
        try:
            result = api.read(payload)
            traces = api.traces(self.context, result)
        except (Unreadable, AttributeError, TypeError, ValueError, KeyError):
            self.proxy.metrics.inc("traceguard_proxy_upstream_errors_total", kind="unreadable")
            raise ProxyError(
                "upstream_unreadable",
                f"The upstream's answer is not a readable {api.name} result; it was not passed "
                "on unaudited.",
            ) from None
        decisions = await self.proxy.audit(self.client, api, traces)
        headers = decision_headers(decisions)
        self.cycle.note(action=headers[0][1] if headers else None)
        try:
            body = settle_result(
                api,
                result,
                payload,
                traces,
                decisions,
                block=self.proxy.spec.block,
                refusal=self._refusal(),
            )
        except ProxyError as error:
            self.cycle.status = error.http_status
            self.cycle.note(error=error.code)
            await send_error(self.send, error)
            return
        self.cycle.status = response.status_code
        await send_response(
            self.send,
            response.status_code,
            body,
            headers=client_headers(response, decoded=True),
            extra=headers,
        )

    def _refusal(self) -> str:
        configured = self.proxy.spec.block.refusal
        return configured or self.client.guard.policy.redaction.refusal_message

    async def _stream(self, response: UpstreamResponse) -> None:
        spec = self.proxy.spec
        options = StreamOptions(
            mode=spec.stream.mode,
            early_stop=spec.stream.early_stop,
            on_block="raise" if spec.block.mode == "error" else "refusal",
            refusal=self._refusal(),
        )
        buffer = spec.stream.mode == "buffer"
        adapter = self.api.adapter(self.context, buffer=buffer)
        state: StreamState[Any] = StreamState(
            adapter, options, checkpoints=self.client.guard.checkpoints
        )
        relay = StreamRelay(self.api, state, max_buffer_bytes=spec.limits.max_response_bytes)
        base = client_headers(response, decoded=True)
        if not buffer:
            base.append((_STREAM_MODE_HEADER.encode(), b"passthrough"))
        out = Sender(self.send, response.status_code, base)
        self.cycle.status = response.status_code
        shell = _StreamShell(self, relay, out, response)
        await shell.run()


class _StreamShell:
    """Moves one stream's bytes and awaits its audits (rules in the relay)."""

    def __init__(
        self, exchange: _Exchange, relay: StreamRelay, out: Sender, response: UpstreamResponse
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
            await self._fail(_upstream_problem(self.metrics, exc))
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


def _upstream_problem(metrics: Any, exc: Exception) -> ProxyError:
    if isinstance(exc, FrameTooLarge | BufferFull):
        metrics.inc("traceguard_proxy_upstream_errors_total", kind="too_large")
        return ProxyError(
            "response_too_large",
            "The upstream's answer is larger than the proxy holds for an audit "
            "(max_response_bytes).",
        )
    if isinstance(exc, UpstreamTimeout):
        metrics.inc("traceguard_proxy_upstream_errors_total", kind="timeout")
        return ProxyError("upstream_timeout", "The upstream stopped answering in time.")
    if isinstance(exc, UpstreamError):
        metrics.inc("traceguard_proxy_upstream_errors_total", kind="broken")
        return ProxyError("upstream_unavailable", "The upstream connection broke.")
    metrics.inc("traceguard_proxy_upstream_errors_total", kind="unreadable")
    return ProxyError(
        "upstream_unreadable",
        "The upstream sent a stream event that cannot be read; the rest was not passed on.",
    )


def _refuse_redirect(proxy: Proxy, response: UpstreamResponse) -> None:
    """A 3xx from the upstream goes no further: following it is not the proxy's job, and its
    ``Location`` (which may carry anything) must not send a client elsewhere."""
    if 300 <= response.status_code < 400:
        proxy.metrics.inc("traceguard_proxy_upstream_errors_total", kind="redirect")
        raise ProxyError(
            "upstream_unreadable",
            f"The upstream answered with a redirect (HTTP {response.status_code}); the proxy "
            "neither follows nor forwards redirects.",
        )


async def _read_limited(response: UpstreamResponse, limit: int) -> bytes:
    body = bytearray()
    try:
        async for piece in response.aiter_bytes():
            body += piece
            if len(body) > limit:
                raise ProxyError(
                    "response_too_large",
                    "The upstream's answer is larger than the proxy holds for an audit "
                    "(max_response_bytes).",
                )
    except UpstreamTimeout:
        raise ProxyError("upstream_timeout", "The upstream stopped answering in time.") from None
    except UpstreamError:
        raise ProxyError("upstream_unavailable", "The upstream connection broke.") from None
    return bytes(body)


async def _open(
    proxy: Proxy,
    cycle: _Cycle,
    method: str,
    scope: Scope,
    headers: list[tuple[bytes, bytes]],
    body: bytes,
    *,
    decoded: bool,
) -> UpstreamResponse:
    try:
        return await proxy.upstream.open(
            method, scope["path"], scope.get("query_string", b""), headers, body, decoded=decoded
        )
    except UpstreamTimeout:
        proxy.metrics.inc("traceguard_proxy_upstream_errors_total", kind="timeout")
        raise ProxyError("upstream_timeout", "The upstream did not answer in time.") from None
    except UpstreamError:
        proxy.metrics.inc("traceguard_proxy_upstream_errors_total", kind="unreachable")
        raise ProxyError("upstream_unavailable", "The upstream could not be reached.") from None


async def passthrough(proxy: Proxy, scope: Scope, receive: Receive, send: Send) -> None:
    """Forward an allowed unguarded endpoint as it is; refuse every other one."""
    cycle = _Cycle(proxy, scope, "passthrough")
    send = cycle.wrap(send)
    headers: list[tuple[bytes, bytes]] = list(scope.get("headers", ()))
    method = str(scope.get("method", ""))
    try:
        if not proxy.passthrough_allowed(method, scope["path"]):
            raise ProxyError(
                "endpoint_not_guarded",
                f"{method} {scope['path']} is not guarded by this proxy and not in its "
                "passthrough list.",
            )
        client = proxy.admit(headers)
        cycle.note(client=client.name)
        body = await read_body(
            receive,
            limit=proxy.spec.limits.max_body_bytes,
            declared=header_value(headers, "content-length"),
            timeout=proxy.spec.limits.body_timeout_s,
        )

        async def forward() -> None:
            response = await _open(proxy, cycle, method, scope, headers, body, decoded=False)
            try:
                _refuse_redirect(proxy, response)
                cycle.status = response.status_code
                out = Sender(send, response.status_code, client_headers(response, decoded=False))
                try:
                    async for piece in response.aiter_bytes():
                        await out.write(piece)
                except UpstreamError:
                    cycle.note(error="upstream_unavailable")
                await out.end()
            finally:
                await response.aclose()

        if not await race_disconnect(receive, forward()):
            cycle.status = 499
    except ProxyError as error:
        cycle.status = error.http_status
        cycle.note(error=error.code)
        await send_error(send, error)
    except ClientGone:
        cycle.status = 499
    finally:
        cycle.finish()


def route_headers(scope: Scope) -> Mapping[str, str]:
    """Request headers as a dict (lower-case names), for the ops routes."""
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", ())}
