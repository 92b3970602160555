"""Run the probe suite and print its summary table (cases tried and held per probe class).

    python tests/security/probe_table.py            # print the Markdown table
    python tests/security/probe_table.py --readme   # also put it into README.md

The counts come from the suite itself (``tests/security/conftest.py``): each test marked
``probe("class")`` is one case of that class, or as many as it reports through ``probe_cases``.
A case holds when its test passes; a skipped one says so.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
START, END = "<!-- probe-table -->", "<!-- /probe-table -->"


def run_suite() -> dict[str, dict[str, int]]:
    """Run ``tests/security`` and return the per-class counts."""
    with tempfile.TemporaryDirectory() as scratch:
        target = Path(scratch) / "probes.json"
        env = {**os.environ, "TRACEGUARD_PROBE_TABLE": str(target)}
        command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/security"]
        done = subprocess.run(command, cwd=ROOT, env=env, check=False)
        if not target.exists():
            raise SystemExit(f"the suite wrote no counts (pytest exit {done.returncode})")
        results: dict[str, dict[str, int]] = json.loads(target.read_text(encoding="utf-8"))
        return results


def render(results: dict[str, dict[str, int]]) -> str:
    """The Markdown table."""
    lines = ["| probe class | cases tried | held | skipped |", "|---|---:|---:|---:|"]
    totals = {"tried": 0, "held": 0, "skipped": 0}
    for name in sorted(results):
        row = results[name]
        for key in totals:
            totals[key] += row[key]
        lines.append(f"| {name} | {row['tried']:,} | {row['held']:,} | {row['skipped']:,} |")
    lines.append(
        f"| **all** | **{totals['tried']:,}** | **{totals['held']:,}** | "
        f"**{totals['skipped']:,}** |"
    )
    return "\n".join(lines)


def write_readme(table: str, readme: Path = ROOT / "README.md") -> None:
    """Replace the table between the probe-table markers of the README."""
    text = readme.read_text(encoding="utf-8")
    head, found, rest = text.partition(START)
    _, found_end, tail = rest.partition(END)
    if not found or not found_end:
        raise SystemExit(f"{readme} has no {START} ... {END} block")
    readme.write_text(f"{head}{START}\n{table}\n{END}{tail}", encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--readme", action="store_true", help="also update README.md")
    args = parser.parse_args()
    table = render(run_suite())
    print(table)
    if args.readme:
        write_readme(table)


if __name__ == "__main__":
    main()
