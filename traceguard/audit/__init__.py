"""Offline audit of chat logs: read, audit, write one verdict per trace, report, evaluate.

The library side of ``traceguard audit`` / ``traceguard eval``::

    from traceguard.audit import run_audit

    summary = run_audit(["logs/"], "verdicts.jsonl", report="report.html")
    print(summary.table())
"""

from traceguard.audit.cache import VerdictCache
from traceguard.audit.evaluate import EvalMetrics, evaluate_records
from traceguard.audit.progress import Progress
from traceguard.audit.readers import FORMATS, LogReader, detect_format
from traceguard.audit.report import render_report, write_report
from traceguard.audit.runner import AuditOptions, arun_audit, common_image_root, run_audit
from traceguard.audit.summary import AuditSummary

__all__ = [
    "FORMATS",
    "AuditOptions",
    "AuditSummary",
    "EvalMetrics",
    "LogReader",
    "Progress",
    "VerdictCache",
    "arun_audit",
    "common_image_root",
    "detect_format",
    "evaluate_records",
    "render_report",
    "run_audit",
    "write_report",
]
