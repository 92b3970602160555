"""One proxied request's record: its id (sent back as ``x-traceguard-request-id``), the facts
the access log and the metrics keep of it (never content), and whether its answer started."""

from __future__ import annotations

import time
import uuid
from typing import Any

from ._asgi import Scope, Send
from ._logs import access_log
from ._runtime import Proxy

__all__ = ["Cycle"]


class Cycle:
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
