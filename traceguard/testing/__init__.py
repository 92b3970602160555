"""Helpers for testing code that uses traceguard (scripted auditors and backends, loopback servers).

``OpenAIServer``/``ScriptedResponse`` and ``build_tiny_qwen25vl`` load on first use, so that
``python -m traceguard.testing.openai_server`` does not import its own module twice.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from traceguard.testing._scripted import ScriptedAuditor, Step
from traceguard.testing._scripted_backend import ScriptedBackend

if TYPE_CHECKING:
    from traceguard.testing.openai_server import OpenAIServer, ScriptedResponse
    from traceguard.testing.tiny_models import (
        build_tiny_gemma3,
        build_tiny_holisafe,
        build_tiny_llava_onevision,
        forced_output,
    )
    from traceguard.testing.tiny_qwen import build_tiny_qwen25vl

__all__ = [
    "OpenAIServer",
    "ScriptedAuditor",
    "ScriptedBackend",
    "ScriptedResponse",
    "Step",
    "build_tiny_gemma3",
    "build_tiny_holisafe",
    "build_tiny_llava_onevision",
    "build_tiny_qwen25vl",
    "forced_output",
]

_LAZY = {
    "OpenAIServer": "traceguard.testing.openai_server",
    "ScriptedResponse": "traceguard.testing.openai_server",
    "build_tiny_qwen25vl": "traceguard.testing.tiny_qwen",
    "build_tiny_gemma3": "traceguard.testing.tiny_models",
    "build_tiny_holisafe": "traceguard.testing.tiny_models",
    "build_tiny_llava_onevision": "traceguard.testing.tiny_models",
    "forced_output": "traceguard.testing.tiny_models",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'traceguard.testing' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
