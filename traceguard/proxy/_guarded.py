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

A request's record for the logs and metrics is ``_cycle.py``; calling the upstream, with its
failures as proxy errors, ``_upstream_calls.py``; the stream's shell ``_stream_shell.py``.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from typing import Any

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
from ._cycle import Cycle
from ._errors import ProxyError, upstream_error_body
from ._http_client import UpstreamError, UpstreamResponse
from ._keys import Client
from ._outcome import decision_headers, settle_result
from ._relay import StreamRelay
from ._runtime import Proxy
from ._stream_shell import StreamShell
from ._telemetry import span
from ._upstream import client_headers, header_value
from ._upstream_calls import open_upstream, read_limited, refuse_redirect

__all__ = ["guarded", "passthrough"]

logger = logging.getLogger("traceguard.proxy")

_ID_HEADERS = {
    "x-traceguard-thread-id": "thread_id",
    "x-traceguard-session-id": "session_id",
    "x-traceguard-run-id": "run_id",
}
_MAX_ID = 128
_STREAM_MODE_HEADER = "x-traceguard-stream-mode"


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


def _metadata(client: Client, cycle: Cycle, headers: list[tuple[bytes, bytes]]) -> dict[str, Any]:
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
    cycle = Cycle(proxy, scope, api.name)
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
        cycle: Cycle,
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
        response = await open_upstream(
            self.proxy, self.cycle, "POST", scope, headers, body, decoded=True
        )
        try:
            self.cycle.note(
                upstream_status=response.status_code,
                upstream_ms=round((time.perf_counter() - upstream_started) * 1000, 3),
            )
            refuse_redirect(self.proxy, response)
            if not 200 <= response.status_code < 300:
                await self._forward_error(response)
            elif response.content_type.startswith("text/event-stream"):
                await self._stream(response)
            else:
                await self._json(response)
        finally:
            await response.aclose()

    async def _forward_error(self, response: UpstreamResponse) -> None:
        payload = await read_limited(response, self.proxy.spec.limits.max_response_bytes)
        self.cycle.status = response.status_code
        await send_response(
            self.send,
            response.status_code,
            upstream_error_body(response.status_code, payload),
            headers=client_headers(response, decoded=True),
        )

    async def _json(self, response: UpstreamResponse) -> None:
        api = self.api
        payload = await read_limited(response, self.proxy.spec.limits.max_response_bytes)
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
        shell = StreamShell(self, relay, out, response)
        await shell.run()


async def passthrough(proxy: Proxy, scope: Scope, receive: Receive, send: Send) -> None:
    """Forward an allowed unguarded endpoint as it is; refuse every other one."""
    cycle = Cycle(proxy, scope, "passthrough")
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
            response = await open_upstream(
                proxy, cycle, method, scope, headers, body, decoded=False
            )
            try:
                refuse_redirect(proxy, response)
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
