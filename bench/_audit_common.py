"""Shared helpers of the audit benchmarks: synthetic logs and the loopback server process."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"


def write_log(path: Path, count: int, *, distinct: int | None = None) -> Path:
    """An openai-format log of ``count`` one-turn conversations; ``distinct`` contents cycle."""
    distinct = distinct or count
    with path.open("w", encoding="utf-8") as fh:
        for i in range(count):
            k = i % distinct
            record = {
                "id": f"conv-{i}",
                "messages": [
                    {"role": "user", "content": f"Question {k}: how should I store fresh basil?"},
                    {
                        "role": "assistant",
                        "content": f"<think>Kitchen question {k}; answer plainly.</think>"
                        "Trim the stems and keep them in a glass of water.",
                    },
                ],
            }
            fh.write(json.dumps(record) + "\n")
    return path


@contextmanager
def loopback_server(delay_s: float) -> Iterator[str]:
    """The fixed-delay loopback server in a child process (no GIL shared with the client)."""
    command = [
        sys.executable,
        "-m",
        "traceguard.testing.openai_server",
        "--fixed-delay",
        str(delay_s),
    ]
    child = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        base_url = child.stdout.readline().strip()
        if not base_url.startswith("http://"):
            raise RuntimeError("the loopback server did not start")
        yield base_url
    finally:
        child.terminate()
        child.wait(timeout=10)


def save(name: str, result: dict[str, object]) -> Path:
    """Write ``bench/results/<name>.json``."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return path
