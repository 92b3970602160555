"""Backends that run a vision-language model: local (transformers) or served (HTTP).

Build one with :func:`local` or :func:`served` and hand it to an auditor as ``backend``.
"""

from traceguard.backends._base import (
    ChatBackend,
    ChatMessage,
    ChatRequest,
    Completion,
    ContentPart,
    ImagePart,
    TextPart,
    TokenDistribution,
)
from traceguard.backends._factories import LocalOptions, ServedOptions, local, served
from traceguard.backends.http import OpenAICompatibleBackend
from traceguard.backends.transformers import TransformersBackend

__all__ = [
    "ChatBackend",
    "ChatMessage",
    "ChatRequest",
    "Completion",
    "ContentPart",
    "ImagePart",
    "LocalOptions",
    "OpenAICompatibleBackend",
    "ServedOptions",
    "TextPart",
    "TokenDistribution",
    "TransformersBackend",
    "local",
    "served",
]
