"""The runner: order, one record per trace, failures as records, cache, dedup, resume."""

from __future__ import annotations

import json
import random
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from traceguard import Auditor, ConfigurationError, Trace, Verdict
from traceguard.audit import VerdictCache, arun_audit, run_audit
from traceguard.audit.records import VOLATILE_FIELDS
from traceguard.testing import ScriptedAuditor, Step

from ._helpers import chat, risk_of, scripted, write_jsonl


def read(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def stable(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if k not in VOLATILE_FIELDS} for r in records]


class Jittery(Auditor):
    """Answers after a random delay, so completions arrive out of order."""

    name = "jittery"

    def __init__(self, seed: int = 0) -> None:
        self.rng = random.Random(seed)
        self.calls = 0

    def audit_batch(self, traces: Sequence[Trace]) -> list[Verdict]:
        self.calls += 1
        time.sleep(self.rng.random() * 0.01)
        return [Verdict.ok(auditor=self.name, risk=risk_of(t)) for t in traces]


def test_records_in_input_order_under_concurrency(tmp_path: Path) -> None:
    log = write_jsonl(tmp_path / "log.jsonl", [chat(i) for i in range(120)])
    out = tmp_path / "out.jsonl"
    summary = run_audit(log, out, auditor=Jittery(), concurrency=8, batch_size=3)
    records = read(out)
    assert [r["id"] for r in records] == [f"c{i}" for i in range(120)]
    assert summary.records == 120 and summary.audited == 120
    assert all(r["status"] == "ok" and r["auditor"] == "jittery" for r in records)


async def test_async_driver_writes_the_same_records(tmp_path: Path) -> None:
    log = write_jsonl(tmp_path / "log.jsonl", [chat(i) for i in range(60)])
    run_audit(log, tmp_path / "sync.jsonl", auditor=Jittery(1), concurrency=4)
    await arun_audit(log, tmp_path / "async.jsonl", auditor=Jittery(2), concurrency=6, batch_size=2)
    assert stable(read(tmp_path / "sync.jsonl")) == stable(read(tmp_path / "async.jsonl"))


def test_every_input_record_gives_at_least_one_output_record(tmp_path: Path) -> None:
    log = write_jsonl(
        tmp_path / "log.jsonl",
        [chat(0), "{oops", {"messages": []}, chat(1), {"id": "x", "messages": 3}],
    )
    out = tmp_path / "out.jsonl"
    summary = run_audit(log, out, auditor=scripted())
    records = read(out)
    assert [(r["status"], r["source"]["line"]) for r in records] == [
        ("ok", 1),
        ("invalid_input", 2),
        ("invalid_input", 3),
        ("ok", 4),
        ("invalid_input", 5),
    ]
    bad = records[1]
    assert bad["risk"] is None and bad["label"] is None
    assert bad["action"] == "escalate"  # the default policy never lets the unknown through
    assert bad["error"]["type"] == "MalformedRecord"
    assert summary.by_status == {"ok": 2, "invalid_input": 3}


def test_auditor_failures_become_error_records_never_safe(tmp_path: Path) -> None:
    class Broken(Auditor):
        name = "broken"

        def audit_batch(self, traces: Sequence[Trace]) -> list[Verdict]:
            if "boom" in traces[0].query:
                raise RuntimeError("crashed")
            return []  # wrong count

    log = write_jsonl(
        tmp_path / "log.jsonl",
        [
            chat(0),
            {
                **chat(1),
                "messages": [
                    {"role": "user", "content": "boom"},
                    {"role": "assistant", "content": "x"},
                ],
            },
        ],
    )
    out = tmp_path / "out.jsonl"
    run_audit(log, out, auditor=Broken())
    first, second = read(out)
    assert first["status"] == second["status"] == "error"
    assert first["risk"] is None and "0 verdicts for 1" in first["error"]["message"]
    assert second["error"] == {"type": "RuntimeError", "message": "crashed"}


def test_scripted_errors_and_unparseable_are_distinct_statuses(tmp_path: Path) -> None:
    auditor = ScriptedAuditor([Step(error="timeout"), Step(unparseable="“Judgment”: maybe"), 1.0])
    log = write_jsonl(tmp_path / "log.jsonl", [chat(i) for i in range(3)])
    out = tmp_path / "out.jsonl"
    summary = run_audit(log, out, auditor=auditor, concurrency=1)
    records = read(out)
    assert [(r["status"], r["audit_status"]) for r in records] == [
        ("error", "auditor_error"),
        ("error", "unparseable"),
        ("ok", "ok"),
    ]
    assert summary.exit_code("harmful") == 1
    assert summary.exit_code(None) == 0


def test_exit_code_three_when_nothing_over_threshold_but_failures(tmp_path: Path) -> None:
    auditor = ScriptedAuditor([Step(error="down"), 0.0])
    log = write_jsonl(tmp_path / "log.jsonl", [chat(0), chat(1)])
    summary = run_audit(log, tmp_path / "o.jsonl", auditor=auditor, concurrency=1)
    assert summary.exit_code("potentially_harmful") == 3


def test_cache_audits_repeats_once_and_never_caches_failures(tmp_path: Path) -> None:
    # 40 traces, 20 distinct contents; the first audit of content 0 fails.
    log = write_jsonl(tmp_path / "log.jsonl", [chat(i % 20) for i in range(40)])
    cache_path = tmp_path / "cache.sqlite"
    calls: list[str] = []

    def rule(trace: Trace) -> Step:
        calls.append(trace.query)
        if calls.count("question 0") == 1 and trace.query == "question 0":
            return Step(error="flaky")
        return Step(risk=risk_of(trace))

    auditor = ScriptedAuditor(rule=rule)
    out = tmp_path / "out.jsonl"
    first = run_audit(log, out, auditor=auditor, cache=cache_path, concurrency=1)
    # The failure was not cached: content 0 is audited again when it repeats, and succeeds.
    assert len(calls) == 21 and first.cache_hits == 19
    assert read(out)[0]["status"] == "error" and read(out)[20]["status"] == "ok"
    with VerdictCache(cache_path) as cache:
        assert len(cache) == 20

    second = run_audit(log, tmp_path / "again.jsonl", auditor=auditor, cache=cache_path)
    assert len(calls) == 21 and second.cache_hits == 40 and second.audited == 0
    again = read(tmp_path / "again.jsonl")
    assert all(r["status"] == "ok" and r["cached"] for r in again)
    assert stable(again)[1:] == stable(read(out))[1:]


def test_repeats_of_a_trace_in_flight_share_its_audit(tmp_path: Path) -> None:
    log = write_jsonl(tmp_path / "log.jsonl", [chat(0), chat(0), chat(1), chat(0)])
    auditor = scripted()
    summary = run_audit(
        log, tmp_path / "o.jsonl", auditor=auditor, concurrency=2, cache=tmp_path / "c.sqlite"
    )
    # The second c0 is read while the first is in flight: it waits instead of being sent.
    assert summary.deduplicated >= 1
    assert len(auditor.seen) == 2 and summary.deduplicated + summary.cache_hits == 2
    records = read(tmp_path / "o.jsonl")
    assert [r["risk"] for r in records] == [records[0]["risk"]] * 2 + [
        records[2]["risk"],
        records[0]["risk"],
    ]


def test_cache_key_separates_auditors(tmp_path: Path) -> None:
    log = write_jsonl(tmp_path / "log.jsonl", [chat(0)])
    cache = tmp_path / "c.sqlite"
    run_audit(log, tmp_path / "a.jsonl", auditor=scripted("one"), cache=cache)
    b = scripted("two")
    run_audit(log, tmp_path / "b.jsonl", auditor=b, cache=cache)
    assert len(b.seen) == 1 and read(tmp_path / "b.jsonl")[0]["auditor"] == "two"


def test_resume_drops_a_torn_line_and_skips_written_records(tmp_path: Path) -> None:
    log = write_jsonl(tmp_path / "log.jsonl", [chat(i) for i in range(10)])
    clean = tmp_path / "clean.jsonl"
    run_audit(log, clean, auditor=scripted())
    lines = clean.read_bytes().splitlines(keepends=True)
    out = tmp_path / "out.jsonl"
    out.write_bytes(b"".join(lines[:4]) + lines[4][:17])  # killed mid-write of record 5
    auditor = scripted()
    summary = run_audit(log, out, auditor=auditor, resume=True)
    assert len(auditor.seen) == 6 and summary.resumed == 4 and summary.records == 10
    assert stable(read(out)) == stable(read(clean))


def test_resume_refuses_an_output_of_another_input(tmp_path: Path) -> None:
    log = write_jsonl(tmp_path / "log.jsonl", [chat(i) for i in range(3)])
    out = tmp_path / "out.jsonl"
    run_audit(log, out, auditor=scripted())
    write_jsonl(log, [chat(i + 1) for i in range(3)])
    with pytest.raises(ConfigurationError, match="input changed"):
        run_audit(log, out, auditor=scripted(), resume=True)
    write_jsonl(log, [chat(0)])
    with pytest.raises(ConfigurationError, match="more records"):
        run_audit(log, out, auditor=scripted(), resume=True)


def test_resume_of_a_complete_output_audits_nothing(tmp_path: Path) -> None:
    log = write_jsonl(tmp_path / "log.jsonl", [chat(i) for i in range(3)])
    out = tmp_path / "out.jsonl"
    run_audit(log, out, auditor=scripted())
    auditor = scripted()
    summary = run_audit(log, out, auditor=auditor, resume=True)
    assert auditor.seen == [] and summary.records == 3 and len(read(out)) == 3


def test_memory_window_bounds_read_ahead(tmp_path: Path) -> None:
    """A stuck first audit must pause reading, not buffer the whole file."""
    import threading

    release = threading.Event()
    seen: list[str] = []

    class Stuck(Auditor):
        name = "stuck"

        def audit_batch(self, traces: Sequence[Trace]) -> list[Verdict]:
            seen.extend(t.query for t in traces)
            if traces[0].query == "question 0":
                release.wait(5)
            return [Verdict.ok(auditor=self.name, risk=0.0) for _ in traces]

    log = write_jsonl(tmp_path / "log.jsonl", [chat(i) for i in range(500)])
    done = threading.Thread(
        target=run_audit,
        args=(log, tmp_path / "o.jsonl"),
        kwargs={"auditor": Stuck(), "concurrency": 2},
    )
    done.start()
    time.sleep(0.5)
    read_ahead = len(seen)
    release.set()
    done.join(10)
    assert read_ahead <= 2 * 1 * 4 + 32 + 1  # the window of concurrency=2, batch_size=1
    assert len(read(tmp_path / "o.jsonl")) == 500


def test_directory_input_and_report(tmp_path: Path, png: Path) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    png.rename(logs / png.name)
    write_jsonl(logs / "a.jsonl", [chat(0)])
    (logs / "b.json").write_text(
        json.dumps([{"question": "q", "thinking": "t", "response": "r", "image_name": png.name}])
    )
    (logs / "notes.txt").write_text("not a log")
    out = tmp_path / "out.jsonl"
    summary = run_audit(logs, out, auditor=scripted(), report=tmp_path / "r.html")
    assert [r["source"]["path"] for r in read(out)] == [str(logs / "a.jsonl"), str(logs / "b.json")]
    assert summary.report == tmp_path / "r.html" and (tmp_path / "r.html").stat().st_size > 1000


def test_missing_input_is_a_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="not found"):
        run_audit(tmp_path / "nope.jsonl", tmp_path / "o.jsonl", auditor=scripted())
