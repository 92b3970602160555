"""Helpers for testing code that uses traceguard (scripted auditors, loopback servers)."""

from traceguard.testing._scripted import ScriptedAuditor, Step

__all__ = ["ScriptedAuditor", "Step"]
