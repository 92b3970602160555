"""The upstream model server: one pooled client (:mod:`._http_client`), and the header rules
both ways.

Toward the upstream, a request keeps its body byte for byte and its headers minus what belongs
to the client's hop or identity: its key (``Authorization``, ``api-key``, ``x-api-key``), cookies,
hop-by-hop headers, and ``x-traceguard-*``. The upstream's key is added here, from the
environment; nothing else ever sees it. Toward the client, the upstream's hop-by-hop headers,
cookies and any ``x-traceguard-*`` header it made up are dropped (only the proxy states
decisions).

The client ignores ``HTTP(S)_PROXY`` and ``.netrc``: a proxy that picked credentials up from
its environment would send them somewhere nobody configured.

The request target is re-encoded from the path the proxy matched (ASGI gives it decoded): a
client's ``%0D``, ``%20``, ``%3F`` or ``%00`` stays an escape and never becomes a byte of the
upstream's request line. What comes back has the proxy's own secrets (the upstream key, the
``headers_from_env`` values) replaced in every header and body (:mod:`._scrub`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from urllib.parse import quote, quote_from_bytes, urlsplit

from traceguard._config_fields import env_headers
from traceguard._config_serve import UpstreamSpec
from traceguard._exceptions import ConfigurationError

from ._http_client import HttpClient, UpstreamError, UpstreamResponse
from ._scrub import Scrubber

__all__ = ["Upstream", "client_headers", "header_value"]

_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
_NOT_FORWARDED = _HOP_BY_HOP | {
    "host",
    "content-length",
    "authorization",
    "api-key",
    "x-api-key",
    "cookie",
    "accept-encoding",
    "openai-organization",
    "openai-project",
    "origin",
    "referer",
}
_NOT_RETURNED = _HOP_BY_HOP | {"content-length", "set-cookie", "server", "date"}
# RFC 3986 pchar (sub-delims, ":" and "@") plus "/": everything else in a path is escaped.
_PATH_SAFE = "/!$&'()*+,;=:@-._~"
# A query keeps its escapes and separators; spaces, controls, non-ASCII bytes are escaped.
_QUERY_SAFE = "/?!$&'()*+,;=:@-._~%"


def _kept(name: str, dropped: frozenset[str]) -> bool:
    return name not in dropped and not name.startswith("x-traceguard-")


def client_headers(upstream: UpstreamResponse, *, decoded: bool) -> list[tuple[bytes, bytes]]:
    """The upstream's response headers a client may see (``decoded``: the proxy sends a body it
    read, so a ``content-encoding`` it did not undo must not be claimed)."""
    out = []
    for name, value in upstream.headers:
        lower = name.decode("latin-1")
        if not _kept(lower, _NOT_RETURNED):
            continue
        if decoded and lower == "content-encoding":
            continue
        out.append((name, value))
    return out


class Upstream:
    """Requests to the upstream, under the upstream's own key."""

    def __init__(self, base_url: str, spec: UpstreamSpec) -> None:
        self.base_url = base_url.rstrip("/")
        """Where the upstream's ``/v1`` is: the proxy's ``/v1/x`` goes to ``base_url + /x``."""
        headers = env_headers(dict(spec.headers_from_env), what="upstream")
        if spec.api_key_env is not None:
            key = os.environ.get(spec.api_key_env)
            if not key:
                raise ConfigurationError(
                    f"serve.upstream.api_key_env: the environment variable {spec.api_key_env} "
                    "is not set"
                )
            headers["authorization"] = f"Bearer {key}"
        self._headers = {name.lower(): value for name, value in headers.items()}
        secrets = list(headers.values())
        if spec.api_key_env is not None:
            secrets.append(os.environ[spec.api_key_env])
        self.scrubber = Scrubber(secrets)
        """The proxy's own secrets, kept out of everything the upstream sends back."""
        self._prefix = urlsplit(self.base_url).path.rstrip("/")
        self.client = HttpClient(
            self.base_url,
            connect_timeout=spec.connect_timeout_s,
            read_timeout=spec.timeout_s,
            max_idle=min(spec.max_connections, 256),
        )

    def target(self, path: str, query: bytes) -> str:
        """The request target upstream for a proxy path (``/v1/...``) and its query string."""
        rest = path[len("/v1") :] if path.startswith("/v1") else path
        target = self._prefix + quote(rest, safe=_PATH_SAFE)
        if query:
            target += "?" + quote_from_bytes(query, safe=_QUERY_SAFE)
        return target

    def request_headers(
        self, incoming: Iterable[tuple[bytes, bytes]], *, decoded: bool
    ) -> list[tuple[str, str]]:
        """The client's headers as forwarded (see the module documentation)."""
        out = []
        for raw_name, raw_value in incoming:
            name = raw_name.decode("latin-1").lower()
            if _kept(name, _NOT_FORWARDED):
                out.append((name, raw_value.decode("latin-1")))
        # The guard reads (or at least scrubs) every body: ask for it uncompressed rather than
        # inflate it here.
        out.append(("accept-encoding", "identity"))
        out.extend(self._headers.items())
        return out

    async def open(
        self,
        method: str,
        path: str,
        query: bytes,
        headers: Iterable[tuple[bytes, bytes]],
        body: bytes,
        *,
        decoded: bool,
    ) -> UpstreamResponse:
        """Send a request; the response body is left to stream (close it).

        Raises:
            UpstreamError: connection failures and timeouts (``UpstreamTimeout``), for the
                caller to map.
        """
        response = await self.client.request(
            method,
            self.target(path, query),
            self.request_headers(headers, decoded=decoded),
            body,
        )
        if self.scrubber:
            response.headers = self.scrubber.headers(response.headers)
            response.scrub = self.scrubber.stream()
        return response

    async def probe(self, path: str = "/v1/models") -> bool:
        """True when the upstream answers ``GET path`` below 500 (it is alive)."""
        try:
            response = await self.client.request("GET", self.target(path, b""), [], b"")
        except UpstreamError:
            return False
        await response.aclose()
        return response.status_code < 500

    async def aclose(self) -> None:
        """Close the pooled connections."""
        await self.client.aclose()


def header_value(headers: Iterable[tuple[bytes, bytes]], name: str) -> str:
    """One request header from ASGI's list of pairs (empty when absent)."""
    wanted = name.encode("latin-1")
    for key, value in headers:
        if key.lower() == wanted:
            return value.decode("latin-1")
    return ""
