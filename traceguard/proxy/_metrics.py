"""Prometheus metrics in the text exposition format (version 0.0.4), without a client library.

Only counters, one gauge and histograms with fixed buckets: enough for the proxy's few series,
and no dependency. Label values come from a closed set (actions, statuses, endpoint names, the
configured client names), never from request content.

With several workers each process counts its own; :meth:`Metrics.snapshot` / :func:`merge`
let the worker that answers a scrape add up the others' last snapshots (see ``_workers.py``).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Histogram", "Metrics", "merge", "render"]

LabelKey = tuple[tuple[str, str], ...]

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


@dataclass
class Histogram:
    """Cumulative buckets of one labelled series."""

    bounds: tuple[float, ...]
    counts: list[int] = field(default_factory=list)
    total: float = 0.0
    count: int = 0

    def __post_init__(self) -> None:
        if not self.counts:
            self.counts = [0] * len(self.bounds)

    def observe(self, value: float) -> None:
        """Add one observation."""
        self.total += value
        self.count += 1
        for index, bound in enumerate(self.bounds):
            if value <= bound:
                self.counts[index] += 1


_HELP: dict[str, tuple[str, str]] = {
    "traceguard_proxy_requests_total": ("counter", "Requests answered, by endpoint and status."),
    "traceguard_proxy_request_seconds": (
        "histogram",
        "Time from request to the last byte sent, by endpoint.",
    ),
    "traceguard_proxy_audits_total": ("counter", "Traces audited, by API and stage."),
    "traceguard_proxy_decisions_total": ("counter", "Decisions taken, by action and disposition."),
    "traceguard_proxy_auditor_seconds": ("histogram", "Time of one audit batch (the guard call)."),
    "traceguard_proxy_auditor_errors_total": (
        "counter",
        "Audits that produced no grade, by verdict status.",
    ),
    "traceguard_proxy_stream_stops_total": (
        "counter",
        "Streams that ended before the upstream finished, by reason.",
    ),
    "traceguard_proxy_rate_limited_total": ("counter", "Requests refused by a client's limit."),
    "traceguard_proxy_upstream_errors_total": ("counter", "Upstream failures, by kind."),
    "traceguard_proxy_in_flight": ("gauge", "Guarded requests being handled now."),
}


class Metrics:
    """The proxy's series. Updated from the event loop; read by the ``/metrics`` handler."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counters: dict[str, dict[LabelKey, float]] = {}
        self._histograms: dict[str, dict[LabelKey, Histogram]] = {}
        self.in_flight = 0

    def inc(self, name: str, value: float = 1.0, **labels: str) -> None:
        """Add to a counter."""
        key = tuple(sorted(labels.items()))
        with self._lock:
            series = self._counters.setdefault(name, {})
            series[key] = series.get(key, 0.0) + value

    def observe(self, name: str, value: float, **labels: str) -> None:
        """Add an observation to a histogram."""
        key = tuple(sorted(labels.items()))
        with self._lock:
            series = self._histograms.setdefault(name, {})
            histogram = series.get(key)
            if histogram is None:
                histogram = series[key] = Histogram(_LATENCY_BUCKETS)
            histogram.observe(value)

    def counter(self, name: str, **labels: str) -> float:
        """A counter's current value (0 when never incremented)."""
        with self._lock:
            return self._counters.get(name, {}).get(tuple(sorted(labels.items())), 0.0)

    def snapshot(self) -> dict[str, Any]:
        """Every series as JSON-ready data."""
        with self._lock:
            return {
                "counters": {
                    name: [[list(map(list, key)), value] for key, value in series.items()]
                    for name, series in self._counters.items()
                },
                "histograms": {
                    name: [
                        [list(map(list, key)), h.counts, h.total, h.count]
                        for key, h in series.items()
                    ]
                    for name, series in self._histograms.items()
                },
                "gauges": {"traceguard_proxy_in_flight": self.in_flight},
            }


def merge(snapshots: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """The sum of several snapshots (one per worker)."""
    counters: dict[str, dict[LabelKey, float]] = {}
    histograms: dict[str, dict[LabelKey, Histogram]] = {}
    gauges: dict[str, float] = {}
    for snap in snapshots:
        for name, rows in snap.get("counters", {}).items():
            series = counters.setdefault(name, {})
            for labels, value in rows:
                key = tuple((str(k), str(v)) for k, v in labels)
                series[key] = series.get(key, 0.0) + float(value)
        for name, rows in snap.get("histograms", {}).items():
            hseries = histograms.setdefault(name, {})
            for labels, counts, total, count in rows:
                key = tuple((str(k), str(v)) for k, v in labels)
                h = hseries.setdefault(key, Histogram(_LATENCY_BUCKETS))
                h.counts = [a + int(b) for a, b in zip(h.counts, counts, strict=True)]
                h.total += float(total)
                h.count += int(count)
        for name, value in snap.get("gauges", {}).items():
            gauges[name] = gauges.get(name, 0.0) + float(value)
    return {"counters": counters, "histograms": histograms, "gauges": gauges}


_LE_INF = 'le="+Inf"'


def _labels(key: Sequence[tuple[str, str]], extra: str = "") -> str:
    parts = [f'{name}="{_escape(value)}"' for name, value in key]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(int(value)) if float(value).is_integer() else repr(float(value))


def render(merged: Mapping[str, Any]) -> str:
    """The exposition text of merged snapshots; every known series appears, even at zero."""
    lines: list[str] = []
    counters = merged["counters"]
    histograms = merged["histograms"]
    gauges = merged["gauges"]
    for name, (kind, help_text) in _HELP.items():
        lines.append(f"# HELP {name} {help_text}")
        lines.append(f"# TYPE {name} {kind}")
        if kind == "counter":
            for key, value in sorted(counters.get(name, {}).items()):
                lines.append(f"{name}{_labels(key)} {_number(value)}")
        elif kind == "gauge":
            lines.append(f"{name} {_number(gauges.get(name, 0.0))}")
        else:
            for key, h in sorted(histograms.get(name, {}).items()):
                for bound, count in zip(h.bounds, h.counts, strict=True):
                    le = 'le="' + _number(bound) + '"'
                    lines.append(f"{name}_bucket{_labels(key, le)} {count}")
                lines.append(f"{name}_bucket{_labels(key, _LE_INF)} {h.count}")
                lines.append(f"{name}_sum{_labels(key)} {_number(h.total)}")
                lines.append(f"{name}_count{_labels(key)} {h.count}")
    return "\n".join(lines) + "\n"
