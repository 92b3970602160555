"""Helpers of the Ray engine's tests: logs, a deterministic judge, comparable records."""

from __future__ import annotations

import hashlib
import json
import re
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from traceguard.testing.openai_server import (
    RecordedRequest,
    ScriptedResponse,
    chat_completion,
    guardtrace_output,
)

_QUESTION = re.compile(r"Question (\d+)")


def judge(
    request: RecordedRequest, *, hold: Mapping[int, threading.Event] | None = None
) -> ScriptedResponse:
    """A verdict that depends only on the audited question, so two runs agree line by line;
    ``hold`` maps question numbers to an event their answer waits for (at most 5 minutes):
    a run cannot end before the test lets it."""
    text = json.dumps(request.json)
    match = _QUESTION.search(text)
    number = int(match.group(1)) if match else -1
    held = (hold or {}).get(number)
    if held is not None:
        held.wait(300)
    level = ("0", "0.5", "1")[hashlib.sha256(str(number).encode()).digest()[0] % 3]
    return ScriptedResponse.json(
        chat_completion(guardtrace_output(level, f"Question {number} graded {level}.")),
        delay_s=0.02,
    )


def write_log(path: Path, count: int, *, repeats: int = 0, malformed: int = 0) -> Path:
    """``count`` one-turn conversations, ``repeats`` of them again at the end (same content,
    own ids), and ``malformed`` broken lines spread through the file."""
    lines: list[str] = []
    for i in range(count):
        lines.append(json.dumps(_conversation(i, f"conv-{i}")))
        if (
            malformed
            and i % max(1, count // malformed) == 0
            and i // max(1, count // malformed) < malformed
        ):
            lines.append('{"messages": [ this is not json')
    for i in range(repeats):
        lines.append(json.dumps(_conversation(i, f"again-{i}")))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _conversation(i: int, record_id: str) -> dict[str, Any]:
    return {
        "id": record_id,
        "messages": [
            {"role": "user", "content": f"Question {i}: how should I store fresh basil?"},
            {
                "role": "assistant",
                "content": f"<think>Kitchen question {i}.</think>Keep the stems in water.",
            },
        ],
    }


def comparable(path: Path) -> list[dict[str, Any]]:
    """The records of an output file without the fields that differ between runs."""
    from traceguard.audit.records import VOLATILE_FIELDS

    with path.open(encoding="utf-8") as fh:
        return [
            {k: v for k, v in json.loads(line).items() if k not in VOLATILE_FIELDS} for line in fh
        ]
