"""Helpers shared by the audit tests: writing logs, a deterministic scripted auditor."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from traceguard import Trace
from traceguard.testing import ScriptedAuditor, Step

PNG_SIZE = (24, 16)


def write_jsonl(path: Path, records: Iterable[Any]) -> Path:
    """Write records (or raw strings, written as they are) one per line."""
    with path.open("w", encoding="utf-8") as fh:
        for record in records:
            fh.write(record if isinstance(record, str) else json.dumps(record))
            fh.write("\n")
    return path


def risk_of(trace: Trace) -> float:
    """A deterministic risk from the trace's content, so runs can be compared line by line."""
    digest = hashlib.sha256(trace.content_hash().encode()).digest()
    return (0.0, 0.5, 1.0)[digest[0] % 3]


def scripted(name: str = "scripted") -> ScriptedAuditor:
    """A scripted auditor grading by :func:`risk_of`."""
    return ScriptedAuditor(
        rule=lambda t: Step(risk=risk_of(t), categories=("cybersecurity",)), name=name
    )


def chat(i: int, *, answer: str | None = None, **extra: Any) -> dict[str, Any]:
    """A one-turn openai conversation number ``i``."""
    return {
        "id": f"c{i}",
        "messages": [
            {"role": "user", "content": f"question {i}"},
            {"role": "assistant", "content": answer if answer is not None else f"answer {i}"},
        ],
        **extra,
    }
