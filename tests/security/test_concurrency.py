"""Concurrent guarded calls never see each other's text or decision.

Threads and asyncio tasks call a real ``openai`` client guarded by ``guard_openai``, against a
loopback model server, with the guard's GuardTrace auditor served on loopback too. Each call
carries a unique marker; the model echoes it and the auditor's analysis names every marker it
saw. A call's outcome must follow its own verdict, and every decision must name its own marker
and no other.
"""

from __future__ import annotations

import asyncio
import re
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

pytest.importorskip("openai")

import openai

from traceguard import AuditRecord, Blocked, Guard, GuardTraceAuditor, Sink, backends
from traceguard.integrations.openai import guard_openai
from traceguard.testing.openai_server import (
    OpenAIServer,
    RecordedRequest,
    ScriptedResponse,
    chat_completion,
)

from ._auditor import judge

THREADS, CALLS_PER_THREAD, TASKS = 12, 10, 120
_MARKER = re.compile(r"marker-[0-9a-f]{12}")


class Decisions(Sink):
    """Keeps every record, thread-safe."""

    def __init__(self) -> None:
        self.records: list[AuditRecord] = []
        self._lock = threading.Lock()

    def emit(self, record: AuditRecord) -> None:
        with self._lock:
            self.records.append(record)


def _echo(request: RecordedRequest) -> ScriptedResponse:
    """The model: answers with the marker and verdict of the question it was asked."""
    question = request.json["messages"][-1]["content"]
    marker, verdict = question.split()
    return ScriptedResponse.json(chat_completion(f"answer to {marker} probe-verdict={verdict}"))


@pytest.fixture
def servers() -> Iterator[tuple[OpenAIServer, OpenAIServer]]:
    with OpenAIServer(responder=_echo) as model, OpenAIServer(responder=judge) as auditor:
        yield model, auditor


def _call_plan(count: int) -> list[tuple[str, str]]:
    return [(f"marker-{uuid.uuid4().hex[:12]}", ("0", "1")[i % 2]) for i in range(count)]


def _outcome(marker: str, verdict: str, result: Any) -> str | None:
    """What is wrong with one call's result, or None."""
    if isinstance(result, Blocked):
        seen = set(_MARKER.findall(result.decision.verdict.analysis))
        if verdict != "1":
            return f"{marker}: safe call blocked"
        return None if seen == {marker} else f"{marker}: block names {seen}"
    if isinstance(result, BaseException):
        return f"{marker}: {type(result).__name__}: {result}"
    text = result.choices[0].message.content
    if verdict == "1":
        return f"{marker}: harmful call passed"
    return None if set(_MARKER.findall(text)) == {marker} else f"{marker}: got {text!r}"


def _check_records(sink: Decisions, plan: list[tuple[str, str]]) -> None:
    seen = [set(_MARKER.findall(r.decision.verdict.analysis)) for r in sink.records]
    assert all(len(markers) == 1 for markers in seen), "an audit saw two calls' text"
    assert sorted(m for markers in seen for m in markers) == sorted(m for m, _ in plan)


@pytest.mark.probe("concurrent guarded calls")
def test_threads_never_cross_talk(
    servers: tuple[OpenAIServer, OpenAIServer], probe_cases: Any
) -> None:
    model, auditor_server = servers
    plan = _call_plan(THREADS * CALLS_PER_THREAD)
    probe_cases(len(plan))
    sink = Decisions()
    auditor = GuardTraceAuditor(backends.served(auditor_server.base_url, "guard"))
    guard = Guard(auditor, sinks=[sink])
    client = openai.OpenAI(base_url=model.base_url, api_key="x", max_retries=0)
    guard_openai(client, guard)

    def call(marker: str, verdict: str) -> Any:
        try:
            return client.chat.completions.create(
                model="m", messages=[{"role": "user", "content": f"{marker} {verdict}"}]
            )
        except Exception as exc:
            return exc

    with ThreadPoolExecutor(THREADS) as pool:
        results = list(pool.map(lambda p: call(*p), plan))
    guard.close()
    auditor.close()
    problems = [_outcome(m, v, r) for (m, v), r in zip(plan, results, strict=True)]
    assert [p for p in problems if p] == []
    _check_records(sink, plan)


@pytest.mark.probe("concurrent guarded calls")
async def test_tasks_never_cross_talk(
    servers: tuple[OpenAIServer, OpenAIServer], probe_cases: Any
) -> None:
    model, auditor_server = servers
    plan = _call_plan(TASKS)
    probe_cases(len(plan))
    sink = Decisions()
    auditor = GuardTraceAuditor(backends.served(auditor_server.base_url, "guard"))
    guard = Guard(auditor, sinks=[sink])
    client = openai.AsyncOpenAI(base_url=model.base_url, api_key="x", max_retries=0)
    guard_openai(client, guard)

    async def call(marker: str, verdict: str) -> Any:
        return await client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": f"{marker} {verdict}"}]
        )

    results = await asyncio.gather(*(call(*p) for p in plan), return_exceptions=True)
    await guard.aclose()
    await auditor.aclose()
    await client.close()
    problems = [_outcome(m, v, r) for (m, v), r in zip(plan, results, strict=True)]
    assert [p for p in problems if p] == []
    _check_records(sink, plan)
