"""The Ray engine on a real local Ray cluster (2 CPUs): same output as the in-process engine,
exactly once through a killed worker and a killed driver."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from _ray_test_helpers import comparable, judge, write_log

from traceguard.audit import run_audit
from traceguard.audit.ray_engine import RayOptions, run_audit_ray
from traceguard.audit.runner import AuditOptions
from traceguard.config import GuardConfig
from traceguard.testing.openai_server import OpenAIServer

pytestmark = [
    pytest.mark.slow,
    # Ray's own deprecation notices and tuning hints, raised inside Ray.
    pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.*"),
    pytest.mark.filterwarnings("ignore::UserWarning:ray.*"),
]

psutil = pytest.importorskip("psutil")


def _served(server: OpenAIServer, log: Path) -> GuardConfig:
    return GuardConfig.from_mapping(
        {
            "auditor": {
                "kind": "guardtrace",
                "backend": {
                    "kind": "served",
                    "base_url": server.base_url,
                    "model": "guardtrace",
                    "max_retries": 0,
                },
            },
            "images": {"root": str(log.parent)},
        }
    )


def _workers() -> list[psutil.Process]:
    """This test's Ray Data auditor actors (descendants of this process)."""
    found = []
    for child in psutil.Process().children(recursive=True):
        try:
            if "AuditWorker" in " ".join(child.cmdline()):
                found.append(child)
        except psutil.Error:
            continue
    return found


def _in_process(log: Path, out: Path, config: GuardConfig, **options: object) -> None:
    auditor = config.build_auditor()
    try:
        run_audit(log, out, AuditOptions(auditor=auditor, **options))  # type: ignore[arg-type]
    finally:
        auditor.close()


def test_served_audit_matches_in_process_through_a_killed_worker(
    ray_cluster: str, tmp_path: Path
) -> None:
    # Question 200's answer waits until a worker was killed: the run cannot be over by then.
    killed_one = threading.Event()
    with OpenAIServer(responder=lambda r: judge(r, hold={200: killed_one})) as judge_server:
        try:
            _through_a_killed_worker(judge_server, killed_one, tmp_path)
        finally:
            killed_one.set()


def _through_a_killed_worker(
    judge_server: OpenAIServer, killed_one: threading.Event, tmp_path: Path
) -> None:
    log = write_log(tmp_path / "log.jsonl", 240, repeats=12, malformed=3)
    config = _served(judge_server, log)
    killed: list[tuple[int, int]] = []

    def kill_one_worker_mid_run() -> None:
        deadline = time.monotonic() + 120
        try:
            while time.monotonic() < deadline and not killed:
                seen = len(judge_server.requests)
                workers = _workers()
                if seen >= 60 and workers:
                    os.kill(workers[0].pid, signal.SIGKILL)
                    killed.append((workers[0].pid, seen))
                    return
                time.sleep(0.02)
        finally:
            killed_one.set()

    killer = threading.Thread(target=kill_one_worker_mid_run, daemon=True)
    killer.start()
    summary = run_audit_ray(
        log,
        tmp_path / "ray.jsonl",
        config,
        AuditOptions(concurrency=4, cache=tmp_path / "cache.sqlite"),
        RayOptions(actors=2, rows_per_block=16),
    )
    killer.join(timeout=5)

    assert killed, "no worker was killed"
    judge_server.reset()
    _in_process(log, tmp_path / "inprocess.jsonl", config, concurrency=4)
    ray_records = comparable(tmp_path / "ray.jsonl")
    assert ray_records == comparable(tmp_path / "inprocess.jsonl")
    ids = [r["id"] for r in ray_records]
    assert len(ids) == len(set(ids)) == 240 + 12 + 3
    assert sum(r["status"] == "invalid_input" for r in ray_records) == 3
    assert summary.records == len(ids)
    assert summary.by_status["ok"] == 252
    assert not (tmp_path / "ray.jsonl.parts").exists()
    # The verdicts went to the driver's cache: a second run audits nothing.
    judge_server.reset()
    again = run_audit_ray(
        log,
        tmp_path / "again.jsonl",
        config,
        AuditOptions(cache=tmp_path / "cache.sqlite"),
        RayOptions(actors=1, rows_per_block=64),
    )
    assert judge_server.requests == []
    assert again.cache_hits + again.deduplicated == 252
    assert comparable(tmp_path / "again.jsonl") == ray_records


def test_local_model_actors_match_in_process(
    ray_cluster: str, tmp_path: Path, tiny_qwen_path: Path
) -> None:
    log = write_log(tmp_path / "log.jsonl", 10)
    config = GuardConfig.from_mapping(
        {
            "auditor": {
                "kind": "guardtrace",
                "mode": "score",
                "backend": {"kind": "local", "model": str(tiny_qwen_path), "batch_size": 1},
            },
            "images": {"root": str(tmp_path)},
        }
    )
    summary = run_audit_ray(
        log,
        tmp_path / "ray.jsonl",
        config,
        AuditOptions(batch_size=1),
        RayOptions(actors=2, rows_per_block=4),
    )
    _in_process(log, tmp_path / "inprocess.jsonl", config, batch_size=1, concurrency=1)
    records = comparable(tmp_path / "ray.jsonl")
    assert records == comparable(tmp_path / "inprocess.jsonl")
    assert [r["id"] for r in records] == [f"conv-{i}" for i in range(10)]
    assert all(r["probabilities"] for r in records if r["status"] == "ok")
    assert summary.audited == 10


def test_resume_after_the_driver_is_killed(ray_cluster: str, tmp_path: Path) -> None:
    # Question 200's answer waits until the driver was killed: its block lags while later ones
    # finish, so the output holds the blocks before it and later blocks wait as committed
    # parts, however long the run takes to get there. (Ray Data reads about a hundred of these
    # records per block; the first block must be free to reach the output.)
    driver_killed = threading.Event()
    with OpenAIServer(responder=lambda r: judge(r, hold={200: driver_killed})) as judge_server:
        try:
            _resume_after_the_driver_is_killed(ray_cluster, judge_server, driver_killed, tmp_path)
        finally:
            driver_killed.set()


def _resume_after_the_driver_is_killed(
    ray_cluster: str, judge_server: OpenAIServer, driver_killed: threading.Event, tmp_path: Path
) -> None:
    log = write_log(tmp_path / "log.jsonl", 400)
    out = tmp_path / "ray.jsonl"
    command = [
        sys.executable,
        "-m",
        "traceguard",
        "audit",
        str(log),
        "--out",
        str(out),
        "--no-cache",
        "--engine",
        "ray",
        "--ray-address",
        ray_cluster,
        "--ray-actors",
        "2",
        "--ray-block-rows",
        "16",
        "--auditor-url",
        judge_server.base_url,
        "--auditor-model",
        "guardtrace",
        "--timeout",
        "600",  # question 200 is held until the driver is gone: it must not time out first
        "--concurrency",
        "2",
        "-q",
    ]
    driver = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    parts = tmp_path / "ray.jsonl.parts"
    deadline = time.monotonic() + 180
    try:
        while time.monotonic() < deadline and driver.poll() is None:
            written = out.exists() and out.stat().st_size > 0
            committed = parts.exists() and len(list(parts.glob("0*.jsonl"))) >= 2
            if written and committed:
                break
            time.sleep(0.02)
        assert driver.poll() is None, driver.stderr.read().decode() if driver.stderr else ""
        driver.send_signal(signal.SIGKILL)
    finally:
        driver.kill()
        driver.wait(timeout=30)
        driver_killed.set()
    with out.open("rb") as fh:
        written = sum(1 for _ in fh)
    assert 0 < written < 400, "the driver was not killed mid-run"

    # The resumed run talks to a server of its own: the killed driver's actors die on Ray's
    # schedule, and a call one of them still had in flight must not count as the resume's.
    with OpenAIServer(responder=judge) as resume_server:
        config = _served(resume_server, log)
        summary = run_audit_ray(
            log,
            out,
            config,
            AuditOptions(concurrency=2, resume=True),
            RayOptions(actors=2, rows_per_block=16),
        )

        assert written <= summary.resumed < 400  # the output's records and the committed parts
        assert summary.audited == 400 - summary.resumed
        assert len(resume_server.requests) == summary.audited  # nothing committed is audited again
        _in_process(log, tmp_path / "inprocess.jsonl", config, concurrency=4)
    assert comparable(out) == comparable(tmp_path / "inprocess.jsonl")
    assert not parts.exists()


def test_the_auditor_comes_from_the_configuration(tmp_path: Path) -> None:
    from traceguard._exceptions import ConfigurationError
    from traceguard.auditors.baseline import BaselineAuditor

    log = write_log(tmp_path / "log.jsonl", 2)
    config = GuardConfig.from_mapping({"auditor": {"kind": "baseline"}})
    with pytest.raises(ConfigurationError, match="leave options.auditor unset"):
        run_audit_ray(log, tmp_path / "out.jsonl", config, AuditOptions(auditor=BaselineAuditor()))


def test_the_cli_refuses_sinks_it_would_not_feed(tmp_path: Path) -> None:
    from traceguard.cli import main

    log = write_log(tmp_path / "log.jsonl", 2)
    guard = tmp_path / "guard.json"
    guard.write_text(
        '{"auditor": {"kind": "baseline"}, "sinks": [{"kind": "jsonl", "path": "d.jsonl"}]}'
    )
    code = main(
        [
            "audit",
            str(log),
            "--out",
            str(tmp_path / "o.jsonl"),
            "--config",
            str(guard),
            "--engine",
            "ray",
            "-q",
        ]
    )
    assert code == 2
    assert not (tmp_path / "o.jsonl").exists()


def test_actors_start_at_different_replicas() -> None:
    from traceguard.audit._ray_worker import _spread_endpoints

    urls = ["http://gpu-a:8000/v1", "http://gpu-b:8000/v1", "http://gpu-c:8000/v1"]
    config = {"auditor": {"kind": "guardtrace", "backend": {"kind": "served", "endpoints": urls}}}
    firsts = {_spread_endpoints(config, n)["auditor"]["backend"]["endpoints"][0] for n in range(3)}
    assert firsts == set(urls)
    rotated = _spread_endpoints(config, 1)["auditor"]["backend"]["endpoints"]
    assert rotated == urls[1:] + urls[:1]  # the others stay as fallbacks, in order
    assert config["auditor"]["backend"]["endpoints"] == urls  # the shipped spec is not changed
    single = {"auditor": {"kind": "baseline"}}
    assert _spread_endpoints(single, 5) is single


def test_only_the_ray_engine_imports_ray() -> None:
    import subprocess
    import sys

    code = (
        "import sys, traceguard, traceguard.audit, traceguard.cli, traceguard.config;"
        "print(','.join(m for m in ('ray', 'pyarrow') if m in sys.modules))"
    )
    light = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert light.returncode == 0 and light.stdout.strip() == "", light.stdout + light.stderr
    code = "import sys, traceguard.audit.ray_engine; print('ray' in sys.modules)"
    engine = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    # The engine's module itself stays importable without starting anything; Ray loads on run.
    assert engine.returncode == 0, engine.stderr


def test_without_ray_the_error_names_the_extra(tmp_path: Path) -> None:
    import subprocess
    import sys

    log = write_log(tmp_path / "log.jsonl", 1)
    code = (
        "import sys; sys.modules['ray'] = None\n"
        "from traceguard.audit.ray_engine import run_audit_ray\n"
        "from traceguard.config import GuardConfig\n"
        "config = GuardConfig.from_mapping({'auditor': {'kind': 'baseline'}})\n"
        "try:\n"
        f"    run_audit_ray({str(log)!r}, {str(tmp_path / 'o.jsonl')!r}, config)\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert "pip install 'traceguard-vl[ray]'" in out.stdout, out.stdout + out.stderr
