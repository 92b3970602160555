"""Keeping URL secrets out of httpx's request log.

httpx logs every request at INFO (``HTTP Request: POST http://user:pass@host/hook/SECRET?token=…
"HTTP/1.1 200 OK"``), whoever the client belongs to. A filter on the ``httpx`` logger rewrites
the URL of each such line before any handler sees it:

- always, for every client: the userinfo (``user:password@``) is dropped — never worth logging;
- for traceguard's own requests, made inside :func:`quiet_url`: the URL shows as
  :func:`~traceguard._urls.redact_url` does, without query, and without path for webhooks,
  whose path is the secret.

Which requests are traceguard's is a context variable set around them, so the rule follows the
calling thread or task into httpx, sync or async, without a registry of URLs.
"""

from __future__ import annotations

import contextvars
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

import httpx

from traceguard._urls import redact_url

__all__ = ["quiet_url"]

_Show = Literal["path", "origin"]
_shown: contextvars.ContextVar[_Show | None] = contextvars.ContextVar(
    "traceguard_http_log_url", default=None
)
_installed = False
_install_lock = threading.Lock()


class _UrlScrubber(logging.Filter):
    """Rewrites the ``httpx.URL`` arguments of httpx's log records."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and any(isinstance(arg, httpx.URL) for arg in args):
            record.args = tuple(_scrub(a) if isinstance(a, httpx.URL) else a for a in args)
        return True


def _scrub(url: httpx.URL) -> str:
    show = _shown.get()
    if show is not None:
        return redact_url(str(url), keep_path=show == "path")
    if url.userinfo:
        return str(url.copy_with(username=None, password=None))
    return str(url)


def _install() -> None:
    global _installed
    with _install_lock:
        if not _installed:
            logging.getLogger("httpx").addFilter(_UrlScrubber())
            _installed = True


@contextmanager
def quiet_url(show: _Show = "path") -> Iterator[None]:
    """httpx log lines of requests made inside show their URL redacted: ``"path"`` keeps the
    path, ``"origin"`` only scheme, host and port (for URLs whose path is a secret)."""
    _install()
    token = _shown.set(show)
    try:
        yield
    finally:
        _shown.reset(token)
