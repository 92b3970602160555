"""A GuardTrace auditor served on loopback whose judgment is written in the audited text.

Each probe trace says how it should be graded ("probe-verdict=0", "=0.5", "=1") and
carries a unique marker ("marker-" and hex digits); the analysis names every marker the auditor
saw, so a test can tell which answer belongs to which request, and that none saw two.
"""

from __future__ import annotations

import json
import re

from traceguard.testing.openai_server import (
    RecordedRequest,
    ScriptedResponse,
    chat_completion,
    guardtrace_output,
)

_VERDICT = re.compile(r"probe-verdict=(0\.5|0|1)\b")
_MARKER = re.compile(r"marker-[0-9a-f]{8,}")


def judge(request: RecordedRequest) -> ScriptedResponse:
    """Answer with the verdict the audited text asks for (0 when it asks nothing)."""
    text = json.dumps(request.json)
    found = _VERDICT.search(text)
    # Every marker the audited text holds: one per trace unless calls got mixed up.
    markers = sorted(set(_MARKER.findall(text)))
    analysis = f"Checked {', '.join(markers) or 'the trace'}."
    judgment = found.group(1) if found else "0"
    return ScriptedResponse.json(chat_completion(guardtrace_output(judgment, analysis=analysis)))


def served(base_url: str, *extra: str) -> list[str]:
    """CLI options for a served auditor at ``base_url``."""
    return ["--auditor-url", base_url, "--auditor-model", "guard", "-q", "--no-cache", *extra]
