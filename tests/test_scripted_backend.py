"""ScriptedBackend (the test helper) and ChatBackend as a context manager."""

from __future__ import annotations

import math

import pytest

from traceguard import AuditorUnavailable, GuardTraceAuditor, OpenAICompatibleBackend, Trace
from traceguard.backends import ChatMessage, ChatRequest, Completion, TokenDistribution
from traceguard.testing import ScriptedBackend


def request(text: str = "q") -> ChatRequest:
    return ChatRequest(messages=(ChatMessage.text("user", text),))


def test_steps_come_first_then_the_rule_and_every_call_is_recorded() -> None:
    backend = ScriptedBackend(
        ["first", AuditorUnavailable("down")], reply=lambda r: f"rule {len(r.messages)}"
    )
    results = backend.complete([request("a"), request("b"), request("c")])
    assert isinstance(results[0], Completion) and results[0].text == "first"
    assert isinstance(results[1], AuditorUnavailable)
    assert isinstance(results[2], Completion) and results[2].text == "rule 1"
    assert [call.method for call in backend.calls] == ["complete"]
    assert [r.messages[0].content for r in backend.requests] == [
        request(t).messages[0].content for t in "abc"
    ]
    backend.verify()


def test_distributions_are_probabilities_turned_into_logprobs() -> None:
    backend = ScriptedBackend(distributions=[{"0": 0.9, "1": 0.1}], model="m")
    [result] = backend.next_token_logprobs([request()])
    assert isinstance(result, TokenDistribution) and result.model == "m"
    assert result.logprobs["0"] == pytest.approx(math.log(0.9))


def test_an_unscripted_call_raises_and_is_kept_for_verify() -> None:
    backend = ScriptedBackend(["only one"])
    with pytest.raises(AssertionError, match="nothing scripted"):
        backend.complete([request(), request()])
    assert [method for method, _ in backend.unexpected] == ["complete"]
    with pytest.raises(AssertionError, match="unexpected complete request"):
        backend.verify()


def test_an_auditor_that_swallows_the_error_still_fails_the_with_block() -> None:
    # GuardTrace turns a raising backend into an auditor-error verdict; verify() still sees it.
    with pytest.raises(AssertionError, match="unexpected"), ScriptedBackend() as backend:
        verdict = GuardTraceAuditor(backend).audit(Trace(query="q", response="r"))
        assert not verdict.is_ok


def test_unconsumed_steps_fail_the_with_block() -> None:
    with pytest.raises(AssertionError, match="1 scripted completion"):
        with ScriptedBackend(["“Judgment”: 0", "left over"]) as backend:
            GuardTraceAuditor(backend).audit(Trace(query="q", response="r"))
    assert backend.closed


async def test_async_twins_answer_on_the_loop_and_say_so() -> None:
    async with ScriptedBackend(["a"], distributions=[{"0": 1.0}]) as backend:
        await backend.acomplete([request()])
        await backend.anext_token_logprobs([request()])
    assert [call.method for call in backend.calls] == ["acomplete", "anext_token_logprobs"]
    assert backend.closed


def test_every_backend_closes_at_the_end_of_a_with_block() -> None:
    with OpenAICompatibleBackend("http://127.0.0.1:9/v1", model="m", api_key="k") as backend:
        assert not backend._closed
    assert backend._closed
