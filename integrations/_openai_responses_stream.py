"""The Responses stream adapter, shared with the proxy (traceguard._openai_responses_stream)."""

from __future__ import annotations

from traceguard._openai_responses_stream import (
    ResponsesStreamAdapter,
)

__all__ = [
    "ResponsesStreamAdapter",
]
