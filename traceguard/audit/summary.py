"""What an audit run produced, counted: :class:`AuditSummary` and its printed table."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from traceguard.audit._jsonstream import UNREADABLE_INPUT

__all__ = ["AuditSummary", "FailOn"]

FailOn = Literal["potentially_harmful", "harmful"]
_THRESHOLD: dict[str, float] = {"potentially_harmful": 0.5, "harmful": 1.0}


@dataclass
class AuditSummary:
    """Counts over every record of the output file, including those kept by ``--resume``."""

    output: Path
    records: int = 0
    resumed: int = 0
    """Records found in the output file from an earlier run and kept."""
    audited: int = 0
    """Traces sent to the auditor in this run."""
    auditor_calls: int = 0
    """Batches sent to the auditor (``audited`` traces in ``auditor_calls`` calls)."""
    cache_hits: int = 0
    deduplicated: int = 0
    """Traces that repeated one already in flight and shared its verdict."""
    elapsed_s: float = 0.0
    by_status: Counter[str] = field(default_factory=Counter)
    by_label: Counter[str] = field(default_factory=Counter)
    by_action: Counter[str] = field(default_factory=Counter)
    by_category: Counter[str] = field(default_factory=Counter)
    max_risk: float | None = None
    auditors: Counter[str] = field(default_factory=Counter)
    report: Path | None = None
    auditor_errors: int = 0
    """Records whose trace reached an auditor and got no verdict (status ``error``)."""
    first_auditor_error: str | None = None
    """The message of the first of those, to tell the user what is wrong with the auditor."""
    unreadable: int = 0
    """Records standing for input text that could not be split into records: whatever records
    that text held are lost (their messages say which lines and how many bytes)."""
    first_unreadable: str | None = None
    """Where the first of those is, and why."""
    cache_disabled: str | None = None
    """Why the verdict cache stopped working mid-run (a full disk), when it did."""
    sink_errors: int = 0
    """Records a sink (JSONL log, webhook, review queue) could not take; the output file has
    them all."""

    def add(self, record: Mapping[str, Any]) -> None:
        """Count one output record."""
        self.records += 1
        self.by_status[str(record.get("status"))] += 1
        label = record.get("label")
        if label is not None:
            self.by_label[str(label)] += 1
        self.by_action[str(record.get("action"))] += 1
        for category in record.get("categories") or ():
            self.by_category[str(category)] += 1
        error = record.get("error")
        if isinstance(error, Mapping) and error.get("type") == UNREADABLE_INPUT:
            self.unreadable += 1
            if self.first_unreadable is None:
                source = record.get("source")
                path = source.get("path") if isinstance(source, Mapping) else None
                self.first_unreadable = f"{path}: {error.get('message')}"
        risk = record.get("risk")
        if isinstance(risk, int | float) and (self.max_risk is None or risk > self.max_risk):
            self.max_risk = float(risk)
        # Records of unreadable input name the reader, not an auditor: leave them out.
        if record.get("auditor") and record.get("auditor") != "traceguard-reader":
            self.auditors[str(record["auditor"])] += 1
            if record.get("status") == "error":
                self.auditor_errors += 1
                if self.first_auditor_error is None:
                    error = record.get("error")
                    message = error.get("message") if isinstance(error, Mapping) else None
                    kind = error.get("type") if isinstance(error, Mapping) else None
                    text = f"{kind}: {message}" if kind and message else message or kind
                    self.first_auditor_error = str(text or "unknown auditor error")

    @property
    def failed(self) -> int:
        """Records without a verdict (status ``error`` or ``invalid_input``)."""
        return self.records - self.by_status.get("ok", 0)

    def threshold_hit(self, fail_on: FailOn) -> bool:
        """True when some trace was graded at or above the ``fail_on`` level."""
        return self.max_risk is not None and self.max_risk >= _THRESHOLD[fail_on]

    @property
    def nothing_audited(self) -> bool:
        """True when traces reached the auditor in this run and not one got a verdict.

        Then the auditor itself is broken (dead server, missing checkpoint): a run that audited
        nothing is not a success, with or without ``--fail-on``.
        """
        return self.audited > 0 and self.auditor_errors > 0 and not self.by_status.get("ok", 0)

    def exit_code(self, fail_on: FailOn | None) -> int:
        """The CLI's exit code for this run; see :mod:`traceguard.cli` for the table."""
        if self.unreadable:
            # Records were lost: the audit is incomplete whatever the verdicts say, and must
            # not read as a pass (0) nor as a finding of --fail-on (1).
            return 4
        if fail_on is None:
            return 3 if self.nothing_audited else 0
        if self.threshold_hit(fail_on):
            return 1
        if self.failed:
            return 3
        return 0

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready mapping."""
        return {
            "output": str(self.output),
            "records": self.records,
            "resumed": self.resumed,
            "audited": self.audited,
            "auditor_calls": self.auditor_calls,
            "cache_hits": self.cache_hits,
            "deduplicated": self.deduplicated,
            "elapsed_s": round(self.elapsed_s, 3),
            "by_status": dict(self.by_status),
            "by_label": dict(self.by_label),
            "by_action": dict(self.by_action),
            "by_category": dict(self.by_category),
            "max_risk": self.max_risk,
            "auditors": dict(self.auditors),
            "unreadable": self.unreadable,
            "report": str(self.report) if self.report else None,
        }

    def table(self) -> str:
        """A short plain-text table for the end of a CLI run."""
        rate = (self.records - self.resumed) / self.elapsed_s if self.elapsed_s > 0 else 0.0
        rows: list[tuple[str, str]] = [
            (
                "records written",
                f"{self.records}" + (f" ({self.resumed} resumed)" if self.resumed else ""),
            ),
            ("auditor", ", ".join(sorted(self.auditors)) or "-"),
            (
                "audited",
                f"{self.audited} in {self.auditor_calls} calls; "
                f"{self.cache_hits} cached, {self.deduplicated} repeated",
            ),
            ("time", f"{self.elapsed_s:.1f} s ({rate:.1f} records/s)"),
        ]
        for title, counts, order in (
            ("status", self.by_status, ("ok", "error", "invalid_input")),
            ("label", self.by_label, ("safe", "potentially_harmful", "harmful")),
            ("action", self.by_action, ("allow", "redact", "block", "escalate")),
        ):
            keys = [k for k in order if counts.get(k)] + sorted(set(counts) - set(order))
            rows.append((title, "  ".join(f"{k}={counts[k]}" for k in keys) or "-"))
        if self.by_category:
            top = self.by_category.most_common(5)
            rows.append(("top categories", "  ".join(f"{k}={n}" for k, n in top)))
        if self.cache_disabled:
            rows.append(("cache", f"switched off mid-run ({self.cache_disabled})"))
        if self.unreadable:
            rows.append(("input not read", f"{self.unreadable} region(s): records there are lost"))
        rows.append(("output", str(self.output)))
        if self.sink_errors:
            rows.append(("sink errors", f"{self.sink_errors} record(s) not delivered"))
        if self.report is not None:
            rows.append(("report", str(self.report)))
        width = max(len(name) for name, _ in rows)
        return "\n".join(f"  {name.ljust(width)}  {value}" for name, value in rows)
