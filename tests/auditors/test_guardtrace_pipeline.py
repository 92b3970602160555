"""A served backend's large async batch runs as a pipeline of one-trace calls, not in lockstep.

In lockstep every prompt of the batch is built before the first answer is read, and every answer
is parsed after the last one arrives; for an HTTP server that only costs time. These tests pin
the pipeline's shape (at most ``pipeline_width`` calls in flight, one trace each, an answer read
before the rest of the batch is sent) and that it gives the verdicts lockstep gives.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence

from traceguard import Trace
from traceguard.auditors.guardtrace import GuardTraceAuditor
from traceguard.backends._base import ChatRequest, ChatResult
from traceguard.backends.http import OpenAICompatibleBackend
from traceguard.testing import ScriptedBackend
from traceguard.testing.openai_server import (
    OpenAIServer,
    RecordedRequest,
    ScriptedResponse,
    chat_completion,
)


def _reply(request: ChatRequest) -> str:
    # Harmful when the query carries the marker; the verdict depends on the request only.
    text = str(request.messages)
    return "“Judgment”: 1" if "HARM" in text else "“Judgment”: 0"


class _PacedBackend(ScriptedBackend):
    """A scripted backend whose async calls take a turn of the event loop, watched for overlap."""

    def __init__(self, width: int | None) -> None:
        super().__init__(reply=_reply)
        self.pipeline_width = width
        self.in_flight = 0
        self.most_in_flight = 0
        self.events: list[str] = []

    async def acomplete(self, requests: Sequence[ChatRequest]) -> list[ChatResult]:
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        self.events.append(f"send {len(requests)}")
        await asyncio.sleep(0.001)
        self.in_flight -= 1
        self.events.append("answer")
        return await super().acomplete(requests)


def _traces(count: int) -> list[Trace]:
    return [
        Trace(query=f"q{i} {'HARM' if i % 3 == 0 else 'fine'}", response=f"r{i}")
        for i in range(count)
    ]


async def test_a_served_batch_is_pipelined_within_its_width() -> None:
    backend = _PacedBackend(width=3)
    verdicts = await GuardTraceAuditor(backend).aaudit_batch(_traces(12))
    assert backend.most_in_flight == 3
    assert all(event in ("send 1", "answer") for event in backend.events)
    # The first answer is read before the last trace is sent: no up-front build of the batch.
    assert backend.events.index("answer") < len(backend.events) - backend.events[::-1].index(
        "send 1"
    )
    assert [v.risk for v in verdicts] == [1.0 if i % 3 == 0 else 0.0 for i in range(12)]


async def test_a_local_batch_stays_in_lockstep() -> None:
    backend = _PacedBackend(width=None)
    verdicts = await GuardTraceAuditor(backend).aaudit_batch(_traces(12))
    assert backend.events == ["send 12", "answer"]
    assert [v.risk for v in verdicts] == [1.0 if i % 3 == 0 else 0.0 for i in range(12)]


async def test_the_http_backend_pipelines_and_gives_the_lockstep_verdicts() -> None:
    traces = _traces(20)
    with OpenAIServer(responder=_judge) as server:
        backend = OpenAICompatibleBackend(server.base_url, "m", max_concurrency=4, max_retries=0)
        assert backend.pipeline_width == 4
        pipelined = await GuardTraceAuditor(backend).aaudit_batch(traces)
        backend.pipeline_width = None
        lockstep = await GuardTraceAuditor(backend).aaudit_batch(traces)
        await backend.aclose()
    assert [(v.status, v.risk) for v in pipelined] == [(v.status, v.risk) for v in lockstep]
    assert [v.risk for v in pipelined] == [1.0 if i % 3 == 0 else 0.0 for i in range(20)]


def _judge(request: RecordedRequest) -> ScriptedResponse:
    harmful = "HARM" in json.dumps(request.json["messages"])
    return ScriptedResponse.json(chat_completion(f"“Judgment”: {1 if harmful else 0}"))
