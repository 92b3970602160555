"""Which calls of an OpenAI client the guard audits, and what it does about the others.

Every HTTP call of the SDK goes through ``client.request``; the wrapper classifies it by method
and path, without I/O:

- **audited**: ``POST …/chat/completions`` and ``POST …/responses``, whatever method of the SDK
  sent them (``create``, ``parse``, ``stream``, their ``with_raw_response`` /
  ``with_streaming_response`` forms, ``client.post``);
- **no generated content**: calls whose answer holds nothing a model wrote (model lists,
  embeddings, moderations, deletions, file uploads and metadata); they pass silently;
- **unaudited**: everything else that may carry model output (stored completions and responses,
  legacy completions, assistants, audio transcripts, file contents, ...). It is refused with
  :class:`UnauditedCallError` under ``strict=True``, and otherwise passes with a warning (once
  per kind of call and client).

WebSocket sessions (``realtime.connect``, ``responses.connect``, ``live.connect``, ...) never go
through ``request``; the wrapper names them at wrap time and refuses them under ``strict``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit

from traceguard._exceptions import TraceguardError

__all__ = [
    "WEBSOCKET_SURFACES",
    "Api",
    "Surface",
    "UnauditedCallError",
    "classify",
    "is_structured",
    "request_body",
]

Api = Literal["chat", "responses"]

WEBSOCKET_SURFACES = (
    "realtime",
    "realtime.translations",
    "responses",
    "live",
    "live.sideband",
    "live.forks",
    "beta.realtime",
    "beta.responses",
)
"""Resources whose ``connect()`` opens a WebSocket session the guard cannot audit."""


class UnauditedCallError(TraceguardError):
    """A call whose output the guard cannot audit, refused because the wrapper is ``strict``."""


@dataclass(frozen=True)
class Surface:
    """What a call is, for the guard."""

    kind: Literal["audited", "no_output", "unaudited"]
    api: Api | None = None
    """For an audited call: which API's answer it returns."""
    label: str = ""
    """``METHOD /path`` with ids folded, for warnings (one per label and client)."""


# Answers that hold nothing a model generated. Anything not listed is assumed to carry output.
_NO_OUTPUT = (
    ("GET", re.compile(r"^/models(/[^/]+)?$")),
    ("POST", re.compile(r"^/embeddings$")),
    ("POST", re.compile(r"^/moderations$")),
    ("POST", re.compile(r"^/files$")),
    ("GET", re.compile(r"^/files(/[^/]+)?$")),
    ("POST", re.compile(r"^/uploads(/[^/]+(/(parts|complete|cancel))?)?$")),
    ("DELETE", re.compile(r"^/.+$")),
)
_RESPONSES = re.compile(r"(/openai(/v\d+)?)?/responses")  # plain, or an Azure deployment
_ID_SEGMENT = re.compile(r"^(?=[^/]*[0-9_])[^/]{8,}$")


def _path(url: str) -> str:
    path = urlsplit(url).path if "://" in url else url.split("?", 1)[0]
    path = "/" + path.strip("/")
    # Tolerate a versioned prefix in an absolute URL (".../v1/chat/completions").
    return re.sub(r"^/v\d+(?=/)", "", path)


def _label(method: str, path: str) -> str:
    folded = "/".join("{id}" if _ID_SEGMENT.match(part) else part for part in path.split("/"))
    return f"{method} {folded}"


def classify(method: str, url: str) -> Surface:
    """What the call ``method url`` is (``url`` as the SDK's request options hold it)."""
    method = method.upper()
    path = _path(url)
    label = _label(method, path)
    if method == "POST":
        if path.endswith("/chat/completions"):
            return Surface("audited", "chat", label)
        if _RESPONSES.fullmatch(path):
            return Surface("audited", "responses", label)
    if any(method == m and pattern.match(path) for m, pattern in _NO_OUTPUT):
        return Surface("no_output", None, label)
    return Surface("unaudited", None, label)


def request_body(json_data: object, extra_json: object) -> dict[str, Any]:
    """The JSON body the SDK sends: ``json_data`` with ``extra_body`` merged over it."""
    body: dict[str, Any] = dict(json_data) if isinstance(json_data, Mapping) else {}
    if isinstance(extra_json, Mapping):
        body.update(extra_json)
    return body


def is_structured(api: Api, body: Mapping[str, Any]) -> bool:
    """True when the caller asked for JSON output (a refusal then goes in the refusal field)."""
    if api == "chat":
        fmt = body.get("response_format")
    else:
        text = body.get("text")
        fmt = text.get("format") if isinstance(text, Mapping) else None
    return isinstance(fmt, Mapping) and fmt.get("type") in ("json_schema", "json_object")
