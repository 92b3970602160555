"""StagedAuditor: order, concurrency, short-circuit, the merge rule, sync/async parity."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence

import pytest

from traceguard import Auditor, AuditorTimeout, AuditStatus, ConfigurationError, Trace, Verdict
from traceguard.auditors.staged import StagedAuditor, combine_verdicts

TRACES = [Trace(query=f"q{i}", response="r", id=str(i)) for i in range(3)]


class Fixed(Auditor):
    """Grades trace i with risks[i] (None: an auditor error); records what it saw."""

    def __init__(self, name: str, risks: Sequence[float | None], categories: tuple[str, ...] = ()):
        self.name = name
        self.risks = {str(i): r for i, r in enumerate(risks)}
        self.categories = categories
        self.seen: list[str] = []
        self.delay = 0.0
        self.threads: set[int] = set()

    def audit_batch(self, traces: Sequence[Trace]) -> list[Verdict]:
        self.threads.add(threading.get_ident())
        time.sleep(self.delay)
        out = []
        for trace in traces:
            assert trace.id is not None
            self.seen.append(trace.id)
            risk = self.risks[trace.id]
            if risk is None:
                out.append(
                    Verdict.failed(
                        AuditStatus.AUDITOR_ERROR, auditor=self.name, error=AuditorTimeout("t")
                    )
                )
            else:
                out.append(
                    Verdict.ok(
                        auditor=self.name,
                        risk=risk,
                        categories=self.categories if risk else (),
                        analysis=f"{self.name} says {risk}",
                        latency_ms=1.0,
                    )
                )
        return out


def test_later_stages_skip_traces_already_harmful() -> None:
    screen = Fixed("screen", [1.0, 0.0, 0.5], ("O2",))
    trace = Fixed("trace", [0.0, 0.5, 0.0], ("cybersecurity",))
    verdicts = StagedAuditor([screen, trace]).audit_batch(TRACES)
    assert trace.seen == ["1", "2"]
    assert [v.risk for v in verdicts] == [1.0, 0.5, 0.5]
    assert verdicts[0].categories == ("crime_and_illegal_activities",)
    assert verdicts[0].details["skipped"] == ["trace"]
    assert [s["auditor"] for s in verdicts[1].details["stages"]] == ["screen", "trace"]
    assert verdicts[1].categories == ("cybersecurity",)
    assert verdicts[2].categories == ("crime_and_illegal_activities",)
    assert verdicts[2].analysis == "[screen] screen says 0.5\n[trace] trace says 0.0"


def test_without_short_circuit_every_stage_sees_every_trace() -> None:
    trace = Fixed("trace", [0.0, 0.0, 0.0])
    StagedAuditor([Fixed("screen", [1.0, 1.0, 1.0]), trace], stop_on_harmful=False).audit(TRACES[0])
    assert trace.seen == ["0"]


def test_failures_fail_the_merge_unless_another_part_is_harmful() -> None:
    screen = Fixed("screen", [None, None, 0.0])
    trace = Fixed("trace", [1.0, 0.5, None])
    verdicts = StagedAuditor([screen, trace]).audit_batch(TRACES)
    assert (verdicts[0].status, verdicts[0].risk) == (AuditStatus.OK, 1.0)
    assert verdicts[1].status is AuditStatus.AUDITOR_ERROR and verdicts[1].risk is None
    assert verdicts[1].error is not None and verdicts[1].error.message.startswith("screen:")
    assert verdicts[2].status is AuditStatus.AUDITOR_ERROR


def test_auditors_within_a_stage_run_concurrently() -> None:
    a, b = Fixed("a", [0.0] * 3), Fixed("b", [0.0] * 3)
    a.delay = b.delay = 0.3
    started = time.perf_counter()
    StagedAuditor([[a, b]]).audit_batch(TRACES)
    assert time.perf_counter() - started < 0.55
    assert a.threads != b.threads


async def test_async_runs_a_stage_concurrently_and_matches_sync() -> None:
    a, b = Fixed("a", [0.0, 0.5, None], ("terrorism",)), Fixed("b", [0.5, 1.0, 0.0], ("O1",))
    staged = StagedAuditor([[a, b], Fixed("c", [0.0, 0.0, 0.0])])
    sync = [v.to_dict() for v in staged.audit_batch(TRACES)]
    a.delay = b.delay = 0.3
    started = time.perf_counter()
    async_ = [v.to_dict() for v in await staged.aaudit_batch(TRACES)]
    assert time.perf_counter() - started < 0.55
    assert sync == async_
    assert sync[1]["categories"] == ["hate_speech", "extremism"]


class Raising(Fixed):
    def audit_batch(self, traces: Sequence[Trace]) -> list[Verdict]:
        raise RuntimeError("boom")


class Short(Fixed):
    def audit_batch(self, traces: Sequence[Trace]) -> list[Verdict]:
        return []


@pytest.mark.parametrize("broken", [Raising("x", [0.0] * 3), Short("x", [0.0] * 3)])
async def test_misbehaving_auditors_become_auditor_errors(broken: Fixed) -> None:
    staged = StagedAuditor([broken, Fixed("ok", [0.0] * 3)])
    assert staged.audit(TRACES[0]).status is AuditStatus.AUDITOR_ERROR
    assert (await staged.aaudit(TRACES[0])).status is AuditStatus.AUDITOR_ERROR


def test_bad_configurations() -> None:
    with pytest.raises(ConfigurationError):
        StagedAuditor([])
    with pytest.raises(ConfigurationError):
        StagedAuditor([[]])
    with pytest.raises(ConfigurationError):
        StagedAuditor([Fixed("a", []), Fixed("a", [])])
    with pytest.raises(ConfigurationError):
        StagedAuditor(["not an auditor"])  # type: ignore[list-item]
    assert StagedAuditor([[Fixed("a", []), Fixed("b", [])], Fixed("c", [])]).name == "staged(a+b,c)"


def test_combine_single_part_keeps_its_output_and_empty_is_an_error() -> None:
    part = Verdict.ok(auditor="x", risk=0.5, categories=("gender",), raw_output="raw")
    merged = combine_verdicts([part], auditor="m")
    assert (merged.risk, merged.categories, merged.raw_output) == (0.5, ("hate_speech",), "raw")
    with pytest.raises(ValueError):
        combine_verdicts([], auditor="m")


async def test_close_closes_every_auditor() -> None:
    closed: list[str] = []

    class Closing(Fixed):
        def close(self) -> None:
            closed.append(self.name)

    staged = StagedAuditor([[Closing("a", []), Closing("b", [])], Closing("c", [])])
    staged.close()
    await staged.aclose()
    assert closed == ["a", "b", "c"] * 2
    await asyncio.sleep(0)
