"""The proxy's own errors, in the OpenAI shape every SDK already parses.

Body: ``{"error": {"message": ..., "type": ..., "param": null, "code": ...}}``. The SDKs raise
their usual exceptions for it (``BadRequestError``, ``AuthenticationError``, ``RateLimitError``,
...), and the same object sent as an SSE ``data:`` event ends a stream with an error in both the
Python and the TypeScript SDK.

Messages are written here, never built from audited text or upstream bodies: a client sees the
code, the reason in our words, and ids, nothing that could echo the output that was held back.
The one exception is an upstream's own error (a non-2xx answer), which carries no output: it
reaches the client as :func:`upstream_error_body` rebuilds it, in the OpenAI shape only (its
message cut to :data:`MAX_UPSTREAM_MESSAGE` characters, no other fields, never HTML).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

__all__ = [
    "CODES",
    "MAX_UPSTREAM_MESSAGE",
    "ProxyError",
    "error_body",
    "error_event",
    "upstream_error_body",
]

MAX_UPSTREAM_MESSAGE = 1000

CODES: dict[str, tuple[int, str, str]] = {
    # code: (status, type, what it means)
    "invalid_json": (400, "invalid_request_error", "the body is not a JSON object"),
    "invalid_body": (400, "invalid_request_error", "a field the guard reads has the wrong type"),
    "missing_api_key": (401, "authentication_error", "no client key (Authorization: Bearer)"),
    "invalid_api_key": (401, "authentication_error", "the client key is not known"),
    "forbidden": (403, "permission_error", "/metrics without its token (or from off-host)"),
    "origin_not_allowed": (403, "permission_error", "a browser origin not in allowed_origins"),
    "host_not_allowed": (403, "permission_error", "the Host header names another server"),
    "endpoint_not_guarded": (404, "invalid_request_error", "an endpoint the guard does not cover"),
    "method_not_allowed": (405, "invalid_request_error", "a method the endpoint does not take"),
    "request_timeout": (
        408,
        "invalid_request_error",
        "the body did not arrive within body_timeout_s",
    ),
    "request_too_large": (413, "invalid_request_error", "the body exceeds max_body_bytes"),
    "unsupported_media_type": (415, "invalid_request_error", "the body is not application/json"),
    "rate_limit_exceeded": (429, "rate_limit_error", "the client key's rate limit (Retry-After)"),
    "content_blocked": (400, "content_policy_error", "the policy blocked the output"),
    "content_escalated": (
        400,
        "content_policy_error",
        "the policy sent the output to human review and holds it meanwhile",
    ),
    "audit_invalid_input": (
        400,
        "content_policy_error",
        "the output could not be audited (e.g. an image the auditor may not load)",
    ),
    "audit_unavailable": (
        503,
        "content_policy_error",
        "the auditor failed or answered nonsense; the policy holds the output",
    ),
    "upstream_unavailable": (502, "upstream_error", "the upstream could not be reached"),
    "upstream_unreadable": (502, "upstream_error", "the upstream answered something unreadable"),
    "upstream_timeout": (504, "upstream_error", "the upstream did not answer in time"),
    "response_too_large": (502, "upstream_error", "the answer exceeds max_response_bytes"),
    "overloaded": (503, "server_error", "more guarded requests in flight than max_in_flight"),
    "shutting_down": (503, "server_error", "the proxy is draining before it stops"),
    "internal_error": (500, "server_error", "a bug in the proxy; nothing was passed unaudited"),
}
"""Every code the proxy itself answers with; the README's table is generated from the same
facts. ``content_*`` statuses follow ``serve.block.status`` (default 400)."""


@dataclass(frozen=True)
class ProxyError(Exception):
    """An error the proxy answers with; ``status`` defaults to the code's."""

    code: str
    message: str
    status: int | None = None
    headers: tuple[tuple[str, str], ...] = field(default=())

    def __post_init__(self) -> None:
        if self.code not in CODES:
            raise ValueError(f"unknown proxy error code {self.code!r}")

    @property
    def http_status(self) -> int:
        """The HTTP status to answer with."""
        return self.status if self.status is not None else CODES[self.code][0]

    def body(self) -> bytes:
        """The JSON body."""
        return error_body(self.code, self.message)


def _payload(code: str, message: str) -> dict[str, object]:
    return {"message": message, "type": CODES[code][1], "param": None, "code": code}


def error_body(code: str, message: str) -> bytes:
    """``{"error": {...}}`` as bytes."""
    return json.dumps({"error": _payload(code, message)}).encode()


def error_event(code: str, message: str) -> bytes:
    """The same error as an SSE event that ends a stream (both SDKs raise on it)."""
    return b"data: " + error_body(code, message) + b"\n\n"


def upstream_error_body(status: int, payload: bytes) -> bytes:
    """An upstream's error answer as the client gets it: ``{"error": {message, type, code,
    param}}`` read from the usual shapes (OpenAI's, ``{"error": "text"}``, ``{"message": ...}``,
    ``{"detail": ...}``), anything else dropped. A body that is not JSON becomes a message of
    ours naming the status."""
    try:
        value = json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        value = None
    error = value.get("error") if isinstance(value, dict) else None
    fields = error if isinstance(error, dict) else {}
    message = next(
        (
            text
            for text in (
                fields.get("message"),
                error,
                value.get("message") if isinstance(value, dict) else None,
                value.get("detail") if isinstance(value, dict) else None,
            )
            if isinstance(text, str) and text
        ),
        None,
    )
    if message is None:
        message = f"The upstream answered HTTP {status} without a readable error."
    elif len(message) > MAX_UPSTREAM_MESSAGE:
        message = message[: MAX_UPSTREAM_MESSAGE - 1] + "…"
    kind = fields.get("type")
    code = fields.get("code")
    param = fields.get("param")
    body = {
        "message": message,
        "type": kind if isinstance(kind, str) and len(kind) <= 100 else "upstream_error",
        "param": param if isinstance(param, str) and len(param) <= 100 else None,
        "code": code if isinstance(code, str | int) and len(str(code)) <= 100 else None,
    }
    return json.dumps({"error": body}).encode()
