"""Running the proxy: ``serve()`` behind ``traceguard serve`` (uvicorn, one or more workers).

Start-up checks everything before anything listens (the configuration, the environment
variables it names, client keys, the bind address); a problem is a
:class:`~traceguard.ConfigurationError` naming the key and the line, and the command exits 2.

Shutdown (SIGTERM, SIGINT): the proxy stops accepting connections, ``/readyz`` turns 503, open
streams run to their end for up to ``serve.shutdown_grace_s`` seconds, then the sinks are
flushed and closed. A stream still open at the deadline is cancelled like a client that left:
the upstream request is closed and what was shown is audited and recorded.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import tempfile
import threading
import weakref
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import uvicorn
from starlette.applications import Starlette

from traceguard._config_serve import ServeSpec
from traceguard.config import GuardConfig

from ._logs import configure_logging
from ._runtime import Proxy
from ._workers import METRICS_DIR_ENV
from .app import create_app

__all__ = ["serve"]

_CONFIG_ENV = "TRACEGUARD_PROXY_CONFIG"
_OVERRIDES_ENV = "TRACEGUARD_PROXY_OVERRIDES"
_LOG_LEVEL_ENV = "TRACEGUARD_PROXY_LOG_LEVEL"

_proxies: weakref.WeakSet[Proxy] = weakref.WeakSet()
_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class _DrainingServer(uvicorn.Server):
    """uvicorn's server, which also tells this process's proxies to drain on a signal."""

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        for proxy in list(_proxies):
            proxy.draining = True
        super().handle_exit(sig, frame)


def _tracked(app: Starlette) -> Starlette:
    _proxies.add(app.state.proxy)
    return app


def _drain_on_signals() -> None:
    """Chain a drain step before the signal handlers uvicorn installed in this worker."""
    for sig in _SIGNALS:
        previous = signal.getsignal(sig)

        def handler(number: int, frame: FrameType | None, previous: Any = previous) -> None:
            for proxy in list(_proxies):
                proxy.draining = True
            if callable(previous):
                previous(number, frame)

        signal.signal(sig, handler)


def worker_app() -> Starlette:
    """The app of one worker process (``--workers N``): built from the environment the parent
    set, since uvicorn starts workers from an import string (after installing its signal
    handlers, which the drain step is chained before)."""
    overrides = json.loads(os.environ.get(_OVERRIDES_ENV, "{}"))
    configure_logging(os.environ.get(_LOG_LEVEL_ENV, "info"))
    app = _tracked(
        create_app(
            os.environ[_CONFIG_ENV],
            upstream=overrides.get("upstream"),
            host=overrides.get("host"),
            port=overrides.get("port"),
            workers=overrides.get("workers"),
        )
    )
    _drain_on_signals()
    return app


def _uvicorn_config(app: Any, spec: ServeSpec, **options: Any) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        host=spec.host,
        port=spec.port,
        log_config=None,
        access_log=False,
        server_header=False,
        proxy_headers=False,
        lifespan="on",
        timeout_graceful_shutdown=int(spec.shutdown_grace_s),
        **options,
    )


def serve(
    config: str | os.PathLike[str],
    *,
    upstream: str | None = None,
    host: str | None = None,
    port: int | None = None,
    workers: int | None = None,
) -> None:
    """Run the proxy until a signal stops it (see the module documentation).

    Raises:
        ConfigurationError: anything wrong with the configuration, found before listening.
    """
    path = Path(config).resolve()
    guard_config = GuardConfig.from_file(path)
    spec = (guard_config.serve or ServeSpec()).with_overrides(
        upstream=upstream, host=host, port=port, workers=workers
    )
    configure_logging(spec.log_level)
    with _signals_end_cleanly():
        _run(guard_config, spec, path, upstream=upstream, host=host, port=port, workers=workers)


@contextlib.contextmanager
def _signals_end_cleanly() -> Iterator[None]:
    """uvicorn re-raises the signal that stopped it once it has shut down gracefully; under
    this no-op handler that ends ``serve`` normally (exit 0) instead of killing the process."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    saved = {sig: signal.signal(sig, lambda number, frame: None) for sig in _SIGNALS}
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


def _run(
    guard_config: GuardConfig,
    spec: ServeSpec,
    path: Path,
    *,
    upstream: str | None,
    host: str | None,
    port: int | None,
    workers: int | None,
) -> None:
    if spec.workers == 1:
        app = _tracked(
            create_app(guard_config, upstream=upstream, host=host, port=port, workers=workers)
        )
        _DrainingServer(_uvicorn_config(app, spec)).run()
        return

    # Several workers: check everything once here, then let each worker build its own.
    Proxy(guard_config, spec).guard.close()
    with tempfile.TemporaryDirectory(prefix="traceguard-metrics-") as folder:
        os.environ[_CONFIG_ENV] = str(path)
        os.environ[_OVERRIDES_ENV] = json.dumps(
            {"upstream": upstream, "host": host, "port": port, "workers": workers}
        )
        os.environ[METRICS_DIR_ENV] = folder
        os.environ[_LOG_LEVEL_ENV] = spec.log_level
        settings = _uvicorn_config(
            "traceguard.proxy.server:worker_app", spec, factory=True, workers=spec.workers
        )
        from uvicorn.supervisors import Multiprocess

        Multiprocess(settings, sockets=[settings.bind_socket()]).run()
