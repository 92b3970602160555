"""Auditors: GuardTrace-VL (the primary trace auditor), the image guards, and the rule baseline."""

from traceguard.auditors.baseline import BaselineAuditor
from traceguard.auditors.guardtrace import GuardTraceAuditor
from traceguard.auditors.holisafe import HoliSafeAuditor
from traceguard.auditors.llavaguard import LlavaGuardAuditor
from traceguard.auditors.safeguard import SafeGuardAuditor
from traceguard.auditors.staged import StagedAuditor

__all__ = [
    "BaselineAuditor",
    "GuardTraceAuditor",
    "HoliSafeAuditor",
    "LlavaGuardAuditor",
    "SafeGuardAuditor",
    "StagedAuditor",
]
