"""A served auditor misbehaving at the socket and HTTP level, through the real HTTP backend.

Every cell must end as its own failed status — never ``ok``, never safe — and within the call's
deadline: no cell may hang. (Issue 13, fault 5: a server trickling its answer at 4 bytes/s held
a ``--timeout 2`` call for 78 s, because httpx's timeouts bound each read, not the call.)

The "hang detector" bounds below are ten times the deadline or more: they catch a call that does
not stop, not a slow machine.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path
from typing import TypeVar

import pytest

from traceguard import AuditStatus, GuardTraceAuditor, Trace, backends

from ._faultserver import (
    Behaviour,
    FaultServer,
    answer,
    close_silently,
    hang,
    reset,
    response_bytes,
    trickle,
    verdict_body,
)

DEADLINE_S = 1.0
HANG_BOUND_S = 30.0
HARMFUL = json.dumps(verdict_body("1")).encode()
_ERROR = {"error": {"message": "busy", "type": "scripted"}}


def _head_then(body: bytes, then: Callable[[bytes], Behaviour]) -> Behaviour:
    """Send the headers of a 200 answer at once, then the body as ``then`` does."""
    head = response_bytes(200, body).partition(b"\r\n\r\n")[0] + b"\r\n\r\n"

    def behave(server: FaultServer, conn: object, request: bytes) -> None:
        conn.sendall(head)  # type: ignore[attr-defined]
        then(body)(server, conn, request)  # type: ignore[arg-type]

    return behave


def _completion(text: str | None, **choice: object) -> bytes:
    body = verdict_body()
    body["choices"][0]["message"]["content"] = text
    body["choices"][0].update(choice)
    return response_bytes(200, body)


# name -> (what the server does per connection, the failed status, the error type)
CELLS: dict[str, tuple[list[Behaviour], AuditStatus, str]] = {
    "trickled-body": (
        [_head_then(HARMFUL, lambda b: trickle(b, every_s=0.2))],
        AuditStatus.AUDITOR_ERROR,
        "AuditorTimeout",
    ),
    "trickled-headers": (
        [trickle(response_bytes(200, HARMFUL), every_s=0.2)],
        AuditStatus.AUDITOR_ERROR,
        "AuditorTimeout",
    ),
    "never-answers": ([hang], AuditStatus.AUDITOR_ERROR, "AuditorTimeout"),
    "503-then-never-answers": (
        [answer(response_bytes(503, _ERROR)), hang],
        AuditStatus.AUDITOR_ERROR,
        "AuditorTimeout",
    ),
    "connection-reset": ([reset], AuditStatus.AUDITOR_ERROR, "AuditorUnavailable"),
    "closed-without-answer": ([close_silently], AuditStatus.AUDITOR_ERROR, "AuditorUnavailable"),
    "body-cut-short": (
        [answer(response_bytes(200, HARMFUL[:40], length=len(HARMFUL)))],
        AuditStatus.AUDITOR_ERROR,
        "AuditorUnavailable",
    ),
    "429-storm-with-retry-after": (
        [answer(response_bytes(429, _ERROR, {"Retry-After": "0.3"}))],
        AuditStatus.AUDITOR_ERROR,
        "AuditorUnavailable",
    ),
    "429-retry-after-beyond-the-limit": (
        [answer(response_bytes(429, _ERROR, {"Retry-After": "3600"}))],
        AuditStatus.AUDITOR_ERROR,
        "AuditorUnavailable",
    ),
    "500-storm": (
        [answer(response_bytes(500, _ERROR))],
        AuditStatus.AUDITOR_ERROR,
        "AuditorUnavailable",
    ),
    "401": (
        [answer(response_bytes(401, _ERROR))],
        AuditStatus.AUDITOR_ERROR,
        "AuditorResponseError",
    ),
    "malformed-json": (
        [answer(response_bytes(200, b'{"choices": [{"message": '))],
        AuditStatus.AUDITOR_ERROR,
        "AuditorResponseError",
    ),
    "html-instead-of-json": (
        [answer(response_bytes(200, b"<html>ok</html>", {"Content-Type": "text/html"}))],
        AuditStatus.AUDITOR_ERROR,
        "AuditorResponseError",
    ),
    "empty-choices": (
        [answer(response_bytes(200, {"id": "x", "choices": []}))],
        AuditStatus.AUDITOR_ERROR,
        "AuditorResponseError",
    ),
    "null-content": (
        [answer(_completion(None))],
        AuditStatus.AUDITOR_ERROR,
        "AuditorResponseError",
    ),
    "cut-at-max-tokens": (
        [answer(_completion("“Analysis”: fine.\n“Judgment”: 0", finish_reason="length"))],
        AuditStatus.AUDITOR_ERROR,
        "AuditorResponseError",
    ),
    "no-judgment": ([answer(_completion("I cannot help."))], AuditStatus.UNPARSEABLE, "ParseError"),
    "judgment-out-of-range": (
        [answer(_completion("“Analysis”: x\n“Judgment”: 2"))],
        AuditStatus.UNPARSEABLE,
        "ParseError",
    ),
}


def _auditor(url: str) -> GuardTraceAuditor:
    backend = backends.served(
        url,
        "guard",
        timeout=DEADLINE_S,
        max_retries=3,
        backoff_s=0.05,
        max_backoff_s=0.2,
        max_retry_after_s=5.0,
    )
    return GuardTraceAuditor(backend)


TRACE = Trace(query="how do I do it?", response="like this")


_T = TypeVar("_T")


def _within_bound(call: Callable[[], _T]) -> _T:
    with ThreadPoolExecutor(1) as pool:
        future = pool.submit(call)
        try:
            return future.result(timeout=HANG_BOUND_S)
        except FutureTimeout:
            pytest.fail(
                f"the call was still running {HANG_BOUND_S} s into a {DEADLINE_S} s deadline"
            )


@pytest.mark.probe("auditor faults (served, sync + async)")
@pytest.mark.parametrize("path", ["sync", "async"])
@pytest.mark.parametrize("cell", sorted(CELLS))
async def test_each_fault_is_its_own_failed_status_within_the_deadline(
    cell: str, path: str
) -> None:
    behaviours, status, error = CELLS[cell]
    with FaultServer(*behaviours) as server:
        auditor = _auditor(server.base_url)
        try:
            if path == "sync":
                verdict = _within_bound(lambda: auditor.audit(TRACE))
            else:
                verdict = await asyncio.wait_for(auditor.aaudit(TRACE), HANG_BOUND_S)
        finally:
            await auditor.aclose()
    assert verdict.status is status
    assert verdict.risk is None and verdict.label is None
    assert verdict.error is not None and verdict.error.type == error


@pytest.mark.parametrize("path", ["sync", "async"])
@pytest.mark.probe("auditor faults (served, sync + async)")
async def test_a_trickling_server_cannot_stretch_the_deadline(path: str) -> None:
    # The regression of fault 5 itself: 1 byte per 0.2 s, forever, below any per-read timeout.
    trickling = _head_then(HARMFUL, lambda b: trickle(b, every_s=0.2))
    with FaultServer(trickling) as server:
        backend = backends.served(server.base_url, "guard", timeout=DEADLINE_S)
        auditor = GuardTraceAuditor(backend)
        try:
            if path == "sync":
                verdict = _within_bound(lambda: auditor.audit(TRACE))
            else:
                verdict = await asyncio.wait_for(auditor.aaudit(TRACE), HANG_BOUND_S)
        finally:
            await auditor.aclose()
    assert verdict.error is not None and verdict.error.type == "AuditorTimeout"


@pytest.mark.probe("auditor faults (served, sync + async)")
@pytest.mark.slow
def test_cli_timeout_is_a_deadline_for_the_whole_call(tmp_path: Path) -> None:
    log = tmp_path / "chats.jsonl"
    messages = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    log.write_text(json.dumps({"id": "t", "messages": messages}) + "\n", encoding="utf-8")
    out = tmp_path / "out.jsonl"
    trickling = _head_then(HARMFUL, lambda b: trickle(b, every_s=0.2))
    with FaultServer(trickling) as server:
        command = [
            sys.executable, "-m", "traceguard.cli", "audit", str(log), "--out", str(out),
            "--auditor-url", server.base_url, "--auditor-model", "guard",
            "--timeout", "2", "--no-cache", "-q",
        ]  # fmt: skip
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=60)
        except subprocess.TimeoutExpired:
            pytest.fail("traceguard audit --timeout 2 still running after 60 s")
    (record,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert record["status"] == "error" and record["error"]["type"] == "AuditorTimeout"
    assert done.returncode == 3, done.stderr


@pytest.mark.probe("auditor faults (served, sync + async)")
@pytest.mark.parametrize("path", ["sync", "async"])
async def test_waiting_for_a_free_connection_counts_against_the_deadline(path: str) -> None:
    with FaultServer(hang) as server:
        backend = backends.served(server.base_url, "guard", timeout=DEADLINE_S, max_concurrency=1)
        auditor = GuardTraceAuditor(backend)
        traces = [TRACE, Trace(query="another", response="one")]
        try:
            if path == "sync":
                verdicts = _within_bound(lambda: auditor.audit_batch(traces))
            else:
                verdicts = await asyncio.wait_for(auditor.aaudit_batch(traces), HANG_BOUND_S)
        finally:
            await auditor.aclose()
    # The second call waited for the only connection; its wait counted against its deadline
    # (whether it timed out waiting, or got the connection with no time left, is a race).
    assert [v.error.type for v in verdicts if v.error is not None] == ["AuditorTimeout"] * 2
