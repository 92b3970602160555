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

_RESULTS = pytest.StashKey[dict[str, dict[str, int]]]()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "probe(kind): a cell of the hostile probe suite, counted in the README table"
    )
    config.stash[_RESULTS] = {}


@pytest.fixture
def probe_cases(request: pytest.FixtureRequest) -> Callable[[int], None]:
    """Call with the number of cases this test tries (default 1)."""

    def count(cases: int) -> None:
        request.node.stash[_CASES] = cases

    return count


_CASES = pytest.StashKey[int]()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, Any, None]:
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    marker = item.get_closest_marker("probe")
    if marker is None or not (report.when == "call" or report.skipped or report.failed):
        return
    if report.when == "teardown" and not report.failed:
        return
    row = item.config.stash[_RESULTS].setdefault(
        str(marker.args[0]), {"tried": 0, "held": 0, "skipped": 0, "tests": 0}
    )
    cases = item.stash.get(_CASES, 1)
    if report.skipped:
        row["skipped"] += cases
    elif report.when == "call":
        row["tests"] += 1
        row["tried"] += cases
        row["held"] += cases if report.passed else 0
    else:  # an error in setup or teardown: the cell did not hold
        row["tests"] += 1
        row["tried"] += cases


def pytest_sessionfinish(session: pytest.Session) -> None:
    target = os.environ.get("TRACEGUARD_PROBE_TABLE")
    if target:
        results = session.config.stash[_RESULTS]
        Path(target).write_text(json.dumps(results, indent=2, sort_keys=True), encoding="utf-8")
