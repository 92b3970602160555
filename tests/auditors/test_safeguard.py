"""SafeGuard-VL-RL: parser (examples and properties), auditor, served and local paths."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from traceguard import AuditStatus, ConfigurationError, ImageRef, ParseError, Trace
from traceguard.auditors.safeguard import SafeGuardAuditor, parse_safeguard_output
from traceguard.backends import TextPart
from traceguard.testing import ScriptedBackend
from traceguard.testing.openai_server import OpenAIServer, ScriptedResponse, chat_completion


def _png(size: tuple[int, int] = (40, 30)) -> ImageRef:
    buffer = io.BytesIO()
    Image.new("RGB", size, (10, 200, 10)).save(buffer, format="PNG")
    return ImageRef.from_bytes(buffer.getvalue())


@pytest.mark.parametrize(
    ("text", "safe", "source"),
    [
        ("<think>a dog on grass</think><answer>yes</answer>", True, "answer"),
        ("<think>a gun pointed at a child</think><answer>no</answer>", False, "answer"),
        ("<answer> Unsafe. </answer>", False, "answer"),
        ("<answer>SAFE</answer>", True, "answer"),
        ("<think>x</think><answer>yes", True, "answer"),  # cut before the closing tag
        ("<answer>no</answer> ... <answer>yes</answer>", True, "answer"),
        ("<answer>maybe</answer> Final judgment: Unsafe", False, "word"),
        ("The image shows a kitchen. Final judgment: Safe", True, "word"),
        ("Safe? At first glance yes, but on reflection: unsafe", False, "word"),
        ("This image is not safe.", False, "word"),
        ("The image is not unsafe", True, "word"),
        ("<think>it could look unsafe</think> Judgment: safe", True, "word"),
        ("<think>I judge it unsafe", False, "word"),
        ("Unsafe", False, "word"),
    ],
)
def test_parser_examples(text: str, safe: bool, source: str) -> None:
    judgement = parse_safeguard_output(text)
    assert (judgement.safe, judgement.source) == (safe, source)


@pytest.mark.parametrize(
    "text", ["", "yes", "<answer>maybe</answer>", "safety first", "unsafely", "I cannot tell"]
)
def test_anything_else_is_a_parse_failure_not_safe(text: str) -> None:
    with pytest.raises(ParseError):
        parse_safeguard_output(text)


_NOISE = st.text(alphabet=st.characters(exclude_characters="<>"), max_size=120).filter(
    lambda s: "safe" not in s.lower()
)


@given(noise=_NOISE)
def test_property_text_without_the_words_never_parses(noise: str) -> None:
    with pytest.raises(ParseError):
        parse_safeguard_output(noise)


@given(
    reasoning=st.text(alphabet=st.characters(exclude_characters="<>"), max_size=120),
    answer=st.sampled_from(["yes", "no", "safe", "unsafe", "Yes", "NO"]),
)
def test_property_the_answer_tag_decides_whatever_the_reasoning_says(
    reasoning: str, answer: str
) -> None:
    judgement = parse_safeguard_output(f"<think>{reasoning}</think><answer>{answer}</answer>")
    assert judgement.safe == (answer.lower() in ("yes", "safe"))
    assert judgement.source == "answer"


@given(prefix=_NOISE, word=st.sampled_from(["safe", "unsafe", "Safe", "UNSAFE"]))
def test_property_the_last_word_decides_without_a_tag(prefix: str, word: str) -> None:
    judgement = parse_safeguard_output(f"{prefix} unsafe safe. Final: {word}")
    assert judgement.safe == (word.lower() == "safe")


def test_auditor_maps_judgements_to_risks_and_builds_the_policy_prompt(tmp_path: Path) -> None:
    policy_file = tmp_path / "policy.txt"
    policy_file.write_text("Images of {braces} and spiders are unsafe.", encoding="utf-8")
    backend = ScriptedBackend(["<think>spider</think><answer>no</answer>", "<answer>yes</answer>"])
    auditor = SafeGuardAuditor(backend, policy=policy_file, reasoning=False)
    unsafe, safe = auditor.audit_batch(
        [
            Trace(query="", response="", images=(_png(),)),
            Trace(query="", response="", images=(_png(),)),
        ]
    )
    assert (unsafe.risk, unsafe.categories, unsafe.analysis) == (1.0, (), "spider")
    assert safe.risk == 0.0
    text = backend.requests[0].messages[0].content[1]
    assert isinstance(text, TextPart)
    assert "Images of {braces} and spiders are unsafe." in text.text
    assert "one word" in text.text
    assert backend.requests[0].max_new_tokens == 8


def test_unparseable_output_is_never_safe() -> None:
    auditor = SafeGuardAuditor(ScriptedBackend(["I am not sure what to say"]))
    verdict = auditor.audit(Trace(query="", response="", images=(_png(),)))
    assert verdict.status is AuditStatus.UNPARSEABLE and verdict.risk is None
    assert verdict.raw_output == "I am not sure what to say"


def test_bad_policies_are_configuration_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError):
        SafeGuardAuditor(ScriptedBackend(), policy="   ")
    with pytest.raises(ConfigurationError):
        SafeGuardAuditor(ScriptedBackend(), policy=tmp_path / "missing.txt")


async def test_served_auditor_over_the_loopback_server() -> None:
    with OpenAIServer() as server:
        server.enqueue(
            ScriptedResponse.json(chat_completion("<think>fine</think><answer>yes</answer>"))
        )
        server.enqueue(ScriptedResponse.error(400, "bad request"))
        auditor = SafeGuardAuditor.served(
            server.base_url, "safeguard", max_retries=0, reasoning=True
        )
        try:
            trace = Trace(query="", response="", images=(_png(),))
            safe = await auditor.aaudit(trace)
            failed = auditor.audit(trace)
        finally:
            auditor.close()
        content = server.requests[0].json["messages"][0]["content"]
    assert safe.status is AuditStatus.OK and safe.risk == 0.0
    assert failed.status is AuditStatus.AUDITOR_ERROR
    assert [item["type"] for item in content] == ["image_url", "text"]
    assert "reasoning" in content[1]["text"]


@pytest.mark.slow
def test_local_qwen_checkpoint_runs_and_reads_a_forced_answer(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    from traceguard.testing.tiny_models import forced_output
    from traceguard.testing.tiny_qwen import build_tiny_qwen25vl

    checkpoint = build_tiny_qwen25vl(tmp_path / "tiny")
    auditor = SafeGuardAuditor.local(checkpoint, max_new_tokens=40, reasoning=False)
    try:
        trace = Trace(query="", response="", images=(_png(),))
        noisy = auditor.audit(trace)
        # Noise is cut at max_new_tokens (auditor error), unreadable, or happens to say a word.
        assert noisy.status in (AuditStatus.AUDITOR_ERROR, AuditStatus.UNPARSEABLE, AuditStatus.OK)
        if noisy.status is AuditStatus.OK:  # noise that happens to contain the word
            assert noisy.details["per_image"][0]["details"]["answer_source"] == "word"
        backend = auditor.backend
        tokenizer = backend.processor.tokenizer  # type: ignore[attr-defined]
        ids = tokenizer("<answer>no</answer>", add_special_tokens=False)["input_ids"]
        eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
        with forced_output(backend.model, ids, eos):  # type: ignore[attr-defined]
            forced = auditor.audit(trace)
        assert (forced.status, forced.risk) == (AuditStatus.OK, 1.0)
    finally:
        auditor.close()
