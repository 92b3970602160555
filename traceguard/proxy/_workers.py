"""Metrics across worker processes (``--workers N``).

Each worker counts in its own memory. When ``serve`` starts several, it gives them one folder
(``TRACEGUARD_PROXY_METRICS_DIR``); every worker writes a snapshot of its series there each
second and when it stops, and the worker that answers a scrape adds its live series to the
others' latest snapshots. Counters therefore never go backwards when a scrape lands on another
worker; they lag by at most a second. With one worker nothing is written.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from ._runtime import Proxy

__all__ = ["METRICS_DIR_ENV", "publisher", "snapshots"]

METRICS_DIR_ENV = "TRACEGUARD_PROXY_METRICS_DIR"
_INTERVAL_S = 1.0

logger = logging.getLogger("traceguard.proxy")


def _folder() -> Path | None:
    value = os.environ.get(METRICS_DIR_ENV)
    return Path(value) if value else None


def _write(folder: Path, proxy: Proxy) -> None:
    target = folder / f"{os.getpid()}.json"
    temporary = target.with_suffix(".tmp")
    temporary.write_text(json.dumps(proxy.metrics.snapshot()), encoding="utf-8")
    temporary.replace(target)


def snapshots(proxy: Proxy) -> list[dict[str, Any]]:
    """This worker's live series and the other workers' latest snapshots."""
    own = [proxy.metrics.snapshot()]
    folder = _folder()
    if folder is None:
        return own
    mine = f"{os.getpid()}.json"
    for path in sorted(folder.glob("*.json")):
        if path.name == mine:
            continue
        with contextlib.suppress(OSError, ValueError):
            own.append(json.loads(path.read_text(encoding="utf-8")))
    return own


@contextlib.asynccontextmanager
async def publisher(proxy: Proxy) -> AsyncIterator[None]:
    """Publish this worker's snapshot while the app runs (a no-op with one worker)."""
    folder = _folder()
    if folder is None:
        yield
        return

    async def loop() -> None:
        while True:
            await asyncio.sleep(_INTERVAL_S)
            try:
                await asyncio.to_thread(_write, folder, proxy)
            except OSError as exc:
                logger.warning("cannot publish worker metrics: %s", type(exc).__name__)

    task = asyncio.ensure_future(loop())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        with contextlib.suppress(OSError):
            _write(folder, proxy)
