"""The chat stream adapter, now shared with the proxy (:mod:`traceguard._openai_chat_stream`)."""

from __future__ import annotations

from traceguard._openai_chat_stream import (
    ChatStreamAdapter,
)

__all__ = [
    "ChatStreamAdapter",
]
