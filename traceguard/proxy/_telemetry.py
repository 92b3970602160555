"""Optional OpenTelemetry spans: real ones when ``opentelemetry-api`` is installed (the
``[otel]`` extra) and an SDK is configured, none otherwise.

Span attributes are the proxy's own facts (endpoint, client name, model, stream mode, action,
status), never request or output text.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

__all__ = ["span"]

try:  # the [otel] extra
    from opentelemetry import trace as _trace
except ImportError:  # pragma: no cover - exercised only without the extra
    _tracer: Any = None
else:
    _tracer = _trace.get_tracer("traceguard.proxy")


@contextlib.contextmanager
def span(name: str, **attributes: str | int | float | bool | None) -> Iterator[Any]:
    """A span around a block (``None`` without OpenTelemetry); ``set_attribute`` on it adds
    facts learnt inside."""
    # Without an SDK the API's spans do nothing but cost ~8 % of the proxy's CPU per request;
    # asked per call, so an SDK configured after this import is still honoured.
    if _tracer is None or isinstance(_trace.get_tracer_provider(), _trace.ProxyTracerProvider):
        yield None
        return
    clean = {key: value for key, value in attributes.items() if value is not None}
    with _tracer.start_as_current_span(name, attributes=clean) as current:
        yield current
