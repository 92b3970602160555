"""A trace or policy cut to fit the auditor's input is never graded safe, in any mode (issue 14.3).

Full mode already refused a safe verdict on a cut trace; score mode had no way to know (its
token distributions carried no truncation flag) and image guards ignored the flag.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Sequence
from pathlib import Path

import pytest
from PIL import Image

from traceguard import (
    AuditStatus,
    GuardTraceAuditor,
    ImageRef,
    LlavaGuardAuditor,
    Policy,
    Trace,
)
from traceguard.backends._base import (
    ChatBackend,
    ChatMessage,
    ChatRequest,
    ChatResult,
    Completion,
    ImagePart,
    ScoreResult,
    TextPart,
    TokenDistribution,
)
from traceguard.backends.transformers import TransformersBackend

JUDGMENT = "“Judgment”: "


class CutScores(ChatBackend):
    """Serves score mode: P(level) from a table; every distribution says whether it was cut."""

    name = "cut-scores"

    def __init__(self, p_one: float, *, truncated: bool) -> None:
        self.p_one = p_one
        self.truncated = truncated

    def complete(self, requests: Sequence[ChatRequest]) -> list[ChatResult]:
        raise AssertionError("score mode never generates")

    def next_token_logprobs(
        self, requests: Sequence[ChatRequest], top_k: int = 20
    ) -> list[ScoreResult]:
        out: list[ScoreResult] = []
        for request in requests:
            after = (request.assistant_prefix or "")[len(JUDGMENT) :]
            table = {
                "": {"1": self.p_one, "0": 1.0 - self.p_one},
                "0": {"\n": 1.0},
                "0.": {"5": 1.0},
            }[after]
            logprobs = {token: math.log(p) for token, p in table.items() if p > 0}
            out.append(
                TokenDistribution(
                    logprobs=logprobs, latency_ms=1.0, model="m", truncated=self.truncated
                )
            )
        return out


TRACE = Trace(query="q", thinking="t", response="r")


def test_score_mode_refuses_a_safe_verdict_on_a_cut_trace() -> None:
    safe_whole = GuardTraceAuditor(CutScores(0.05, truncated=False), mode="score").audit(TRACE)
    assert safe_whole.status is AuditStatus.OK and safe_whole.risk == 0.0
    safe_cut = GuardTraceAuditor(CutScores(0.05, truncated=True), mode="score").audit(TRACE)
    assert safe_cut.status is AuditStatus.INVALID_INPUT
    assert safe_cut.details["input_truncated"] is True
    assert "part of a trace" in (safe_cut.error.message if safe_cut.error else "")


def test_score_mode_keeps_harm_found_in_a_cut_trace_but_not_its_probabilities() -> None:
    # Harm found stays harm (as in full mode); the probabilities are dropped so that a policy's
    # thresholds cannot re-grade a cut trace down to safe.
    harmful = GuardTraceAuditor(CutScores(0.9, truncated=True), mode="score").audit(TRACE)
    assert harmful.status is AuditStatus.OK and harmful.risk == 1.0
    assert harmful.probabilities is None
    lenient = Policy.from_mapping({"thresholds": {"harmful": 0.99, "potentially_harmful": 0.98}})
    assert lenient.decide(harmful, TRACE).action.value == "block"
    whole = GuardTraceAuditor(CutScores(0.9, truncated=False), mode="score").audit(TRACE)
    assert whole.probabilities is not None


def _png() -> ImageRef:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (10, 200, 30)).save(buffer, format="PNG")
    return ImageRef.from_bytes(buffer.getvalue())


class CutRatings(ChatBackend):
    name = "cut-ratings"

    def __init__(self, rating: str, *, truncated: bool) -> None:
        self.rating = rating
        self.truncated = truncated

    def complete(self, requests: Sequence[ChatRequest]) -> list[ChatResult]:
        text = json.dumps({"rating": self.rating, "category": "O2", "rationale": "r"})
        return [
            Completion(text=text, latency_ms=1.0, model="m", truncated=self.truncated)
            for _ in requests
        ]

    def next_token_logprobs(
        self, requests: Sequence[ChatRequest], top_k: int = 20
    ) -> list[ScoreResult]:
        raise AssertionError("image guards never score tokens")


@pytest.mark.parametrize(
    ("rating", "truncated", "status", "risk"),
    [
        ("Safe", False, AuditStatus.OK, 0.0),
        ("Safe", True, AuditStatus.INVALID_INPUT, None),
        ("Unsafe", True, AuditStatus.OK, 1.0),
    ],
)
def test_an_image_guard_whose_policy_was_cut_fails_closed(
    rating: str, truncated: bool, status: AuditStatus, risk: float | None
) -> None:
    trace = Trace(query="q", response="r", images=(_png(),))
    verdict = LlavaGuardAuditor(CutRatings(rating, truncated=truncated)).audit(trace)
    assert verdict.status is status
    assert verdict.risk == risk


def test_the_local_backend_marks_distributions_of_a_cut_prompt(tiny_qwen_path: Path) -> None:
    backend = TransformersBackend(tiny_qwen_path, max_input_tokens=80)
    try:

        def req(text: str, suffix: str) -> ChatRequest:
            message = ChatMessage(role="user", content=(ImagePart(_png()), TextPart(text)))
            return ChatRequest(messages=(message,), assistant_prefix=JUDGMENT + suffix)

        long_text = "START" + " bread" * 300 + " END"
        results = backend.next_token_logprobs(
            [req(long_text, ""), req(long_text, "0"), req("short", ""), req("short", "0")], 5
        )
        flags = [r.truncated for r in results if isinstance(r, TokenDistribution)]
        assert flags == [True, True, False, False]
    finally:
        backend.close()
