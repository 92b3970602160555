"""Showing a URL without its secrets: the one redactor for logs, errors, reprs and records.

URLs carry secrets in three places: the userinfo (``user:password@``), the query (signed URLs'
``?X-Amz-Signature=…``, ``?sig=…``, ``?token=…``) and, for webhooks, the path (Slack and Teams
put the secret there). :func:`redact_url` drops the first two always and the path on request;
the fragment goes too (it never reaches a server, and some apps keep tokens there).
:func:`url_selector` is the part of a URL that can change *which* resource it names, for the
stable digests in :meth:`traceguard.ImageRef.identity`: credentials never enter it.
"""

from __future__ import annotations

from urllib.parse import SplitResult, urlsplit, urlunsplit

__all__ = ["UNPARSEABLE", "redact_url", "url_selector"]

UNPARSEABLE = "<unparseable URL>"
"""What :func:`redact_url` shows for a string it cannot split into a URL."""


def redact_url(url: str, *, keep_path: bool = True) -> str:
    """``scheme://host[:port]/path`` without userinfo, query or fragment.

    ``keep_path=False`` leaves only the origin, for URLs whose path is itself a secret.
    Never raises: a URL that cannot be parsed shows as :data:`UNPARSEABLE`.
    """
    parts = _split(url)
    if parts is None:
        return UNPARSEABLE
    return urlunsplit((parts.scheme, _host_port(parts), parts.path if keep_path else "", "", ""))


def url_selector(url: str) -> str:
    """The URL without userinfo or fragment, its query kept (a query may select the resource).

    Only for hashing: the query may hold secrets, so the result must not be shown.
    """
    parts = _split(url)
    if parts is None:
        return url
    return urlunsplit((parts.scheme, _host_port(parts), parts.path, parts.query, ""))


def _split(url: str) -> SplitResult | None:
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port out of range or not a number
    except ValueError:
        return None
    return parts


def _host_port(parts: SplitResult) -> str:
    host = parts.hostname or ""
    if ":" in host:  # IPv6: the brackets go back on
        host = f"[{host}]"
    return host if parts.port is None else f"{host}:{parts.port}"
