"""Moved to :mod:`traceguard.review`; this name keeps old imports working."""

from traceguard.review import Escalation, ReviewQueue

__all__ = ["Escalation", "ReviewQueue"]
