"""Backends that run a vision-language model: local (transformers) or served (HTTP)."""

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
from traceguard.backends.http import OpenAICompatibleBackend
from traceguard.backends.transformers import TransformersBackend

__all__ = [
    "ChatBackend",
    "ChatMessage",
    "ChatRequest",
    "Completion",
    "ContentPart",
    "ImagePart",
    "OpenAICompatibleBackend",
    "TextPart",
    "TokenDistribution",
    "TransformersBackend",
]
