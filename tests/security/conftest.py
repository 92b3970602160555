"""The probe suite's bookkeeping: each test marked ``probe("class")`` is a cell of that class.

A test that tries many cases at once (a file of hostile records) says how many with the
``probe_cases`` fixture. With ``TRACEGUARD_PROBE_TABLE=path`` set, the session writes the
per-class counts there as JSON; ``tests/security/probe_table.py`` turns them into the table of
the README's "Failure semantics and security" section.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Generator
from pathlib import Path
from typing import Any

import pytest

_CELLS = pytest.StashKey[dict[str, tuple[str, int, str]]]()
"""nodeid -> (probe class, cases, outcome: "held", "failed" or "skipped")."""
_CASES = pytest.StashKey[int]()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "probe(kind): a cell of the hostile probe suite, counted in the README table"
    )
    config.stash[_CELLS] = {}


@pytest.fixture
def probe_cases(request: pytest.FixtureRequest) -> Callable[[int], None]:
    """Call with the number of cases this test tries (default 1)."""

    def count(cases: int) -> None:
        request.node.stash[_CASES] = cases

    return count


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, Any, None]:
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    marker = item.get_closest_marker("probe")
    if marker is None:
        return
    cells = item.config.stash[_CELLS]
    _, _, before = cells.get(item.nodeid, ("", 0, "held"))
    if report.skipped:
        state = "skipped"
    elif report.failed or before == "failed":
        state = "failed"  # any phase failing (setup, call, teardown) fails the cell
    else:
        state = before
    cells[item.nodeid] = (str(marker.args[0]), item.stash.get(_CASES, 1), state)


def pytest_sessionfinish(session: pytest.Session) -> None:
    target = os.environ.get("TRACEGUARD_PROBE_TABLE")
    if not target:
        return
    results: dict[str, dict[str, int]] = {}
    for kind, cases, state in session.config.stash[_CELLS].values():
        row = results.setdefault(kind, {"tried": 0, "held": 0, "skipped": 0})
        if state == "skipped":
            row["skipped"] += cases
        else:
            row["tried"] += cases
            row["held"] += cases if state == "held" else 0
    Path(target).write_text(json.dumps(results, indent=2, sort_keys=True), encoding="utf-8")
