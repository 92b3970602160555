"""Helpers for testing code that uses traceguard (scripted auditors, loopback servers)."""

from traceguard.testing._scripted import ScriptedAuditor, Step
from traceguard.testing.openai_server import OpenAIServer, ScriptedResponse
from traceguard.testing.tiny_qwen import build_tiny_qwen25vl

__all__ = [
    "OpenAIServer",
    "ScriptedAuditor",
    "ScriptedResponse",
    "Step",
    "build_tiny_qwen25vl",
]
