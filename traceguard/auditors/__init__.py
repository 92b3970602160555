"""Auditors: GuardTrace-VL (the primary trace auditor), image guards, and the rule baseline."""

from traceguard.auditors.baseline import BaselineAuditor
from traceguard.auditors.guardtrace import GuardTraceAuditor

__all__ = ["BaselineAuditor", "GuardTraceAuditor"]
