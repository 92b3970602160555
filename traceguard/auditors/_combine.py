"""The one rule that merges several verdicts on the same trace into one.

Used by :class:`~traceguard.auditors.staged.StagedAuditor` (one verdict per stage) and by the image
guards (one verdict per image of a trace), so both read the same way:

- A **harmful** finding wins: if any part says risk 1, the result is risk 1, even when other
  parts failed. The failures cannot make it safer, and blocking does not need them.
- Otherwise any **failed** part makes the result failed, with the status of the first failure:
  a part nobody could grade may hide the harm, so a lower risk from the others is not enough.
- Otherwise the result is the **highest risk** of the parts.

Categories are merged through :mod:`traceguard.taxonomy` from every part with a risk above 0,
riskiest first; the analyses are joined, each prefixed with its part's name.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from traceguard._verdict import ErrorInfo, Verdict
from traceguard.taxonomy import merge_categories

__all__ = ["combine_verdicts"]


def combine_verdicts(
    parts: Sequence[Verdict],
    *,
    auditor: str,
    labels: Sequence[str] | None = None,
    latency_ms: float | None = None,
    details: Mapping[str, Any] | None = None,
) -> Verdict:
    """Merge ``parts`` (verdicts on one trace) into one verdict by the rule in the module docs.

    Args:
        parts: at least one verdict.
        auditor: the merged verdict's ``auditor`` name.
        labels: a name per part, used to prefix analyses and error messages (defaults to each
            part's ``auditor``).
        latency_ms: the merged latency; by default the sum of the parts'.
        details: extras for the merged verdict (the caller adds its per-part records here).
    """
    if not parts:
        raise ValueError("combine_verdicts() needs at least one verdict")
    names = list(labels) if labels is not None else [part.auditor for part in parts]
    if len(names) != len(parts):
        raise ValueError("labels must name every part")
    latency = latency_ms if latency_ms is not None else sum(p.latency_ms for p in parts)
    extras = dict(details or {})
    graded = [(part, name) for part, name in zip(parts, names, strict=True) if part.is_ok]
    failed = [(part, name) for part, name in zip(parts, names, strict=True) if not part.is_ok]
    top = max((part.risk or 0.0 for part, _ in graded), default=0.0)
    if failed and top < 1.0:
        first, name = failed[0]
        assert first.error is not None  # a failed verdict always carries its error
        message = first.error.message
        if len(parts) > 1:
            message = f"{name}: {message}"
            if len(failed) > 1:
                message += f" (and {len(failed) - 1} more failed)"
        return Verdict.failed(
            first.status,
            auditor=auditor,
            error=ErrorInfo(type=first.error.type, message=message),
            raw_output=first.raw_output if len(parts) == 1 else None,
            latency_ms=latency,
            details=extras,
        )
    # Riskiest first, then in the given order (sorted() is stable).
    risky = sorted(
        ((part, name) for part, name in graded if (part.risk or 0.0) > 0.0),
        key=lambda item: -(item[0].risk or 0.0),
    )
    categories = merge_categories(*(part.categories for part, _ in risky))
    if len(parts) == 1:
        analysis = graded[0][0].analysis
        raw_output = graded[0][0].raw_output
    else:
        analysis = "\n".join(f"[{name}] {part.analysis}" for part, name in graded if part.analysis)
        raw_output = None
    return Verdict.ok(
        auditor=auditor,
        risk=top,
        categories=categories,
        analysis=analysis,
        raw_output=raw_output,
        latency_ms=latency,
        details=extras,
    )
