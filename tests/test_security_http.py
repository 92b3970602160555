"""Adversarial tests of the served backend: hostile text, echoed credentials, cut outputs."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator

import pytest

from traceguard import Trace
from traceguard._exceptions import AuditorResponseError
from traceguard._verdict import AuditStatus
from traceguard.auditors.guardtrace import GuardTraceAuditor
from traceguard.backends._base import ChatMessage, ChatRequest
from traceguard.backends.http import OpenAICompatibleBackend
from traceguard.testing._openai_payloads import guardtrace_output
from traceguard.testing.openai_server import (
    OpenAIServer,
    RecordedRequest,
    ScriptedResponse,
    chat_completion,
)

REQUEST = ChatRequest(messages=(ChatMessage.text("user", "hello"),))


@pytest.fixture
def server() -> Iterator[OpenAIServer]:
    with OpenAIServer() as running:
        yield running


def _always(judgment: str) -> Callable[[RecordedRequest], ScriptedResponse]:
    return lambda request: ScriptedResponse.json(chat_completion(guardtrace_output(judgment)))


# -- one hostile trace fails alone ---------------------------------------------------------------


def test_lone_surrogate_fails_only_its_own_trace(server: OpenAIServer) -> None:
    server.responder = _always("1")
    auditor = GuardTraceAuditor(OpenAICompatibleBackend(server.base_url, "m", max_retries=0))
    traces = [Trace(query="q\ud800", response="a"), Trace(query="fine", response="fine")]
    try:
        hostile, neighbour = auditor.audit_batch(traces)
        ahostile, aneighbour = asyncio.run(auditor.aaudit_batch(traces))
    finally:
        auditor.close()
    for verdict in (hostile, ahostile):
        assert verdict.status is AuditStatus.AUDITOR_ERROR
        assert verdict.error is not None and "encode" in verdict.error.message
    # Before the fix the encoding error escaped the backend and failed the neighbour too.
    assert neighbour.status is AuditStatus.OK and neighbour.risk == 1.0
    assert aneighbour.status is AuditStatus.OK and aneighbour.risk == 1.0


def test_request_body_is_still_plain_json(server: OpenAIServer) -> None:
    server.responder = _always("0")
    backend = OpenAICompatibleBackend(server.base_url, "m", max_retries=0)
    try:
        (result,) = backend.complete([ChatRequest(messages=(ChatMessage.text("user", "héllo"),))])
    finally:
        backend.close()
    assert not isinstance(result, Exception)
    sent = server.requests[-1]
    assert sent.headers["content-type"] == "application/json"
    assert sent.json["messages"] == [{"role": "user", "content": "héllo"}]


# -- credentials echoed by a server ---------------------------------------------------------------


def _echo_headers(request: RecordedRequest) -> ScriptedResponse:
    echoed = (
        f"denied for {request.headers.get('x-api-key')} / {request.headers.get('authorization')}"
    )
    return ScriptedResponse.error(401, echoed)


@pytest.mark.parametrize(
    ("headers", "secret"),
    [
        ({"X-Api-Key": "sk-custom-header-secret"}, "sk-custom-header-secret"),
        ({"Authorization": "Bearer tok-in-a-header-123"}, "tok-in-a-header-123"),
    ],
)
def test_credentials_in_custom_headers_never_reach_errors_or_logs(
    server: OpenAIServer,
    caplog: pytest.LogCaptureFixture,
    headers: dict[str, str],
    secret: str,
) -> None:
    server.responder = _echo_headers
    backend = OpenAICompatibleBackend(server.base_url, "m", max_retries=0, headers=headers)
    with caplog.at_level(logging.DEBUG):
        try:
            (result,) = backend.complete([REQUEST])
        finally:
            backend.close()
    assert isinstance(result, AuditorResponseError)
    assert any(secret in value for value in server.requests[-1].headers.values())  # it was sent
    assert secret not in str(result)
    assert "***" in str(result)
    assert secret not in caplog.text


def test_short_header_values_are_not_scrubbed(server: OpenAIServer) -> None:
    # Scrubbing "1" would shred every error message; only credential-length values go.
    server.responder = lambda request: ScriptedResponse.error(400, "bad request 1")
    backend = OpenAICompatibleBackend(server.base_url, "m", max_retries=0, headers={"X-V": "1"})
    try:
        (result,) = backend.complete([REQUEST])
    finally:
        backend.close()
    assert str(result).endswith("bad request 1")


# -- an output cut at max_tokens is never a verdict -----------------------------------------------


@pytest.mark.parametrize("judgment", ["0", "1"])
def test_output_cut_at_max_tokens_is_not_a_verdict(server: OpenAIServer, judgment: str) -> None:
    # "“Judgment”: 0" cut by the token budget may be the start of "0.5": reading it as safe
    # would fail open. The server says so with finish_reason "length".
    body = chat_completion(guardtrace_output(judgment), finish_reason="length")
    server.responder = lambda request: ScriptedResponse.json(body)
    auditor = GuardTraceAuditor(OpenAICompatibleBackend(server.base_url, "m", max_retries=0))
    try:
        verdict = auditor.audit(Trace(query="q", thinking="t", response="r"))
    finally:
        auditor.close()
    assert verdict.status is AuditStatus.AUDITOR_ERROR
    assert verdict.risk is None
    assert verdict.error is not None and "max_tokens" in verdict.error.message
