"""LlavaGuard: policy prompt, parser (examples and properties), auditor, served and local paths."""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from traceguard import (
    AuditorError,
    AuditorTimeout,
    AuditStatus,
    ConfigurationError,
    ImageAccess,
    ImageRef,
    ParseError,
    Trace,
)
from traceguard.auditors.llavaguard import (
    LlavaGuardAuditor,
    LlavaGuardPolicy,
    parse_llavaguard_output,
)
from traceguard.backends import ChatRequest, ImagePart, TextPart
from traceguard.backends._base import ChatResult
from traceguard.taxonomy import LLAVAGUARD_CATEGORIES
from traceguard.testing import ScriptedBackend
from traceguard.testing.openai_server import OpenAIServer, ScriptedResponse, chat_completion


def _png(color: tuple[int, int, int] = (200, 30, 30), size: tuple[int, int] = (40, 30)) -> ImageRef:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return ImageRef.from_bytes(buffer.getvalue())


def _answer(rating: str, category: str = "NA: None applying", rationale: str = "ok") -> str:
    return json.dumps({"rating": rating, "category": category, "rationale": rationale})


def fake(reply: Callable[[ChatRequest], str | AuditorError] | None = None) -> ScriptedBackend:
    """A scripted backend named like the auditor tests expect."""
    return ScriptedBackend(reply=reply, name="fake")


def _image_of(request: ChatRequest) -> ImageRef:
    part = request.messages[0].content[0]
    assert isinstance(part, ImagePart)
    return part.image


# -- the policy prompt ------------------------------------------------------------------------


def test_default_policy_lists_every_category_with_guidance_and_the_json_template() -> None:
    text = LlavaGuardPolicy().render()
    for code, title in LLAVAGUARD_CATEGORIES.items():
        if code != "NA":
            assert f"{code}: {title}:" in text
    assert text.count("Should not:") == 9 and text.count("Can:") == 9
    assert '"rating"' in text and '"category"' in text and '"rationale"' in text
    assert "{categories}" not in text


def test_overrides_replace_the_guidance_of_their_category_only() -> None:
    base = LlavaGuardPolicy()
    custom = LlavaGuardPolicy({"O3": "non_violating", "Self-Harm": "sensitive", "O1": "default"})
    text = custom.render()
    assert custom.overrides == {"O3": "non_violating", "O7": "sensitive", "O1": "default"}
    assert "O3: Sexual Content:\nThis category is not a violation" in text
    assert "O7: Self-Harm:\nThis category is sensitive" in text
    assert text.count("Should not:") == 7
    assert custom.version != base.version
    assert LlavaGuardPolicy({"O1": "default"}).render() == base.render()


@pytest.mark.parametrize(
    "overrides", [{"O10": "default"}, {"NA": "sensitive"}, {"O2": "lenient"}, {"Cats": "default"}]
)
def test_bad_overrides_are_configuration_errors(overrides: dict[str, str]) -> None:
    with pytest.raises(ConfigurationError):
        LlavaGuardPolicy(overrides)  # type: ignore[arg-type]


def test_custom_template_needs_its_slot() -> None:
    with pytest.raises(ConfigurationError, match="categories"):
        LlavaGuardPolicy(template="Rate the image.")


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("p.json", '{"llavaguard": {"O3": "non_violating"}}'),
        ("p.toml", '[llavaguard]\nO3 = "non_violating"\n'),
        ("p.yaml", "O3: non_violating\n"),
    ],
)
def test_policy_files_in_every_format(tmp_path: Path, name: str, content: str) -> None:
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    assert LlavaGuardPolicy.from_file(path).overrides == {"O3": "non_violating"}


def test_unreadable_policy_files_are_configuration_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError):
        LlavaGuardPolicy.from_file(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("[1, 2]", encoding="utf-8")
    with pytest.raises(ConfigurationError):
        LlavaGuardPolicy.from_file(tmp_path / "bad.json")
    (tmp_path / "bad.txt").write_text("O3: x", encoding="utf-8")
    with pytest.raises(ConfigurationError):
        LlavaGuardPolicy.from_file(tmp_path / "bad.txt")


# -- the parser -------------------------------------------------------------------------------


def test_parser_reads_plain_and_fenced_json() -> None:
    parsed = parse_llavaguard_output(_answer("Unsafe", "O2: Violence, Harm, or Cruelty", "blood"))
    assert (parsed.rating, parsed.code, parsed.rationale, parsed.complete) == (
        "Unsafe",
        "O2",
        "blood",
        True,
    )
    fenced = "```json\n" + _answer("safe", "NA: None applying", "a cat") + "\n```"
    assert parse_llavaguard_output(fenced).rating == "Safe"


def test_parser_reads_truncated_output() -> None:
    cut = '{"rating": "Unsafe", "category": "O6: Weapons or Substance Abuse", "rationale": "A ri'
    parsed = parse_llavaguard_output(cut)
    assert (parsed.rating, parsed.code, parsed.rationale, parsed.complete) == (
        "Unsafe",
        "O6",
        "A ri",
        False,
    )
    assert parse_llavaguard_output('{"rating": "Safe", "categ').category is None


def test_the_last_complete_assessment_wins() -> None:
    text = _answer("Safe") + " on second look: " + _answer("Unsafe", "O5: Criminal Planning")
    assert parse_llavaguard_output(text).rating == "Unsafe"


@pytest.mark.parametrize(
    "text",
    [
        "",
        "The image is safe.",
        "Unsafe",
        '{"rating": "Maybe", "category": "O1"}',
        '{"category": "O2: Violence, Harm, or Cruelty"}',
        "```json\n```",
    ],
)
def test_output_without_a_rating_is_a_parse_error(text: str) -> None:
    with pytest.raises(ParseError):
        parse_llavaguard_output(text)


_RATINGS = st.sampled_from(["Safe", "Unsafe", "safe", "UNSAFE"])
_CATEGORIES = st.sampled_from([f"{c}: {t}" for c, t in LLAVAGUARD_CATEGORIES.items()])


@given(rating=_RATINGS, category=_CATEGORIES, rationale=st.text(max_size=80))
def test_property_any_rationale_round_trips(rating: str, category: str, rationale: str) -> None:
    parsed = parse_llavaguard_output(_answer(rating, category, rationale))
    assert parsed.rating.lower() == rating.lower()
    assert parsed.category == category
    assert parsed.rationale == rationale.strip()


@given(rating=_RATINGS, rationale=st.text(max_size=40), cut=st.integers(min_value=0))
def test_property_a_cut_answer_never_flips_rating(rating: str, rationale: str, cut: int) -> None:
    full = _answer(rating, "O1: Hate, Humiliation, Harassment", rationale)
    prefix = full[: cut % (len(full) + 1)]
    try:
        parsed = parse_llavaguard_output(prefix)
    except ParseError:
        return
    assert parsed.rating.lower() == rating.lower()


@given(st.text(alphabet=st.characters(exclude_characters='"'), max_size=200))
def test_property_text_without_a_quoted_rating_key_never_parses(text: str) -> None:
    with pytest.raises(ParseError):
        parse_llavaguard_output(text)


# -- the auditor ------------------------------------------------------------------------------


def test_unsafe_maps_to_risk_one_with_the_taxonomy_category() -> None:
    backend = fake(lambda r: _answer("Unsafe", "O7: Self-Harm", "cuts on an arm"))
    verdict = LlavaGuardAuditor(backend).audit(Trace(query="q", response="r", images=(_png(),)))
    assert verdict.status is AuditStatus.OK and verdict.risk == 1.0
    assert verdict.categories == ("physical_and_mental_health",)
    assert verdict.analysis == "cuts on an arm"
    (record,) = verdict.details["per_image"]
    assert record["details"]["model_code"] == "O7"
    assert record["image"].startswith("ImageRef(")
    assert verdict.auditor == "llavaguard:fake"


def test_safe_is_risk_zero_and_unknown_unsafe_category_is_other_risks() -> None:
    safe = LlavaGuardAuditor(fake(lambda r: _answer("Safe"))).audit(
        Trace(query="q", response="r", images=(_png(),))
    )
    assert (safe.risk, safe.categories) == (0.0, ())
    odd = LlavaGuardAuditor(fake(lambda r: _answer("Unsafe", "O12: Spiders"))).audit(
        Trace(query="q", response="r", images=(_png(),))
    )
    assert (odd.risk, odd.categories) == (1.0, ("other_risks",))


def test_request_layout_is_image_then_policy_in_one_user_turn() -> None:
    backend = fake(lambda r: _answer("Safe"))
    policy = LlavaGuardPolicy({"O4": "sensitive"})
    LlavaGuardAuditor(backend, policy=policy, max_new_tokens=77).audit(
        Trace(query="ignored", response="ignored", images=(_png(),))
    )
    ((request,),) = [call.requests for call in backend.calls]
    (message,) = request.messages
    assert message.role == "user" and request.max_new_tokens == 77
    image, text = message.content
    assert isinstance(image, ImagePart) and isinstance(text, TextPart)
    assert text.text == policy.render()
    # The audited text never reaches an image guard's prompt.
    assert "ignored" not in text.text


def test_images_of_a_batch_go_in_one_backend_call_and_merge_per_trace() -> None:
    red, blue, green = _png((255, 0, 0)), _png((0, 0, 255)), _png((0, 255, 0))

    def reply(request: ChatRequest) -> str:
        if _image_of(request).sha256 == red.load(ImageAccess()).sha256:
            return _answer("Unsafe", "O1: Hate, Humiliation, Harassment")
        return _answer("Safe")

    backend = fake(reply)
    traces = [
        Trace(query="a", response="", images=(blue, red)),
        Trace(query="b", response="", images=(green,)),
        Trace(query="c", response=""),
    ]
    verdicts = LlavaGuardAuditor(backend).audit_batch(traces)
    assert [len(call.requests) for call in backend.calls] == [3]
    assert [v.risk for v in verdicts] == [1.0, 0.0, 0.0]
    assert verdicts[0].categories == ("hate_speech",)
    assert verdicts[0].details["images"] == 2
    assert verdicts[2].details == {"images": 0}


def test_failures_are_distinct_statuses_and_never_safe(tmp_path: Path) -> None:
    def reply(request: ChatRequest) -> str | AuditorError:
        size = _image_of(request).width
        if size == 41:
            return AuditorTimeout("slow")
        if size == 42:
            return "I think it is fine"
        return _answer("Safe")

    backend = fake(reply)
    auditor = LlavaGuardAuditor(backend, image_access=ImageAccess(root=tmp_path))
    outside = ImageRef.from_path("/etc/hostname")
    traces = [
        Trace(query="", response="", images=(_png(size=(41, 30)),)),
        Trace(query="", response="", images=(_png(size=(42, 30)), _png())),
        Trace(query="", response="", images=(outside,)),
    ]
    timeout, unparseable, invalid = auditor.audit_batch(traces)
    assert timeout.status is AuditStatus.AUDITOR_ERROR and timeout.risk is None
    assert unparseable.status is AuditStatus.UNPARSEABLE
    assert unparseable.error is not None and unparseable.error.message.startswith("image 1:")
    assert invalid.status is AuditStatus.INVALID_INPUT
    assert len(backend.requests) == 3


def test_a_harmful_image_outweighs_a_failed_one() -> None:
    def reply(request: ChatRequest) -> str:
        return "???" if _image_of(request).width == 42 else _answer("Unsafe", "O9")

    verdict = LlavaGuardAuditor(fake(reply)).audit(
        Trace(query="", response="", images=(_png(size=(42, 30)), _png()))
    )
    assert verdict.status is AuditStatus.OK and verdict.risk == 1.0
    assert [r["status"] for r in verdict.details["per_image"]] == ["unparseable", "ok"]


def test_no_image_policy_and_bad_options() -> None:
    auditor = LlavaGuardAuditor(fake(), no_image="invalid_input")
    assert auditor.audit(Trace(query="q", response="r")).status is AuditStatus.INVALID_INPUT
    with pytest.raises(ConfigurationError):
        LlavaGuardAuditor(fake(), no_image="allow")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError):
        LlavaGuardAuditor(fake(), max_new_tokens=0)


class RaisingBackend(ScriptedBackend):
    def complete(self, requests: Sequence[ChatRequest]) -> list[ChatResult]:
        raise RuntimeError("CUDA out of memory")


class ShortBackend(ScriptedBackend):
    def complete(self, requests: Sequence[ChatRequest]) -> list[ChatResult]:
        return []


@pytest.mark.parametrize("backend_cls", [RaisingBackend, ShortBackend])
def test_misbehaving_backends_become_auditor_errors(backend_cls: type[ScriptedBackend]) -> None:
    auditor = LlavaGuardAuditor(backend_cls(reply=lambda r: _answer("Safe")))
    verdict = auditor.audit(Trace(query="", response="", images=(_png(),)))
    assert verdict.status is AuditStatus.AUDITOR_ERROR


async def test_async_gives_the_same_verdicts() -> None:
    backend = fake(lambda r: _answer("Unsafe", "O8: Animal Cruelty"))
    auditor = LlavaGuardAuditor(backend)
    traces = [Trace(query="", response="", images=(_png(),)), Trace(query="", response="")]
    sync = [v.to_dict() for v in auditor.audit_batch(traces)]
    async_ = [v.to_dict() for v in await auditor.aaudit_batch(traces)]
    assert sync == async_


# -- served and local -------------------------------------------------------------------------


async def test_served_auditor_over_the_loopback_server() -> None:
    with OpenAIServer() as server:
        answer = "```json\n" + _answer("Unsafe", "O5: Criminal Planning", "lock picking") + "\n```"
        server.enqueue(ScriptedResponse.json(chat_completion(answer)))
        server.enqueue(ScriptedResponse.json(chat_completion('{"rating": "Saf')))
        auditor = LlavaGuardAuditor.served(server.base_url, "llavaguard-7b", max_retries=0)
        try:
            trace = Trace(query="", response="", images=(_png(),))
            harmful = auditor.audit(trace)
            broken = await auditor.aaudit(trace)
        finally:
            await auditor.aclose()
        body = server.requests[0].json
        assert not server.unexpected
    assert (harmful.risk, harmful.categories) == (1.0, ("crime_and_illegal_activities",))
    assert broken.status is AuditStatus.UNPARSEABLE
    assert body["model"] == "llavaguard-7b"
    content = body["messages"][0]["content"]
    assert [item["type"] for item in content] == ["image_url", "text"]
    assert content[0]["image_url"]["url"].startswith("data:image/png;base64,")


@pytest.fixture(scope="module")
def tiny_llava(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("torch")
    from traceguard.testing.tiny_models import build_tiny_llava_onevision

    return build_tiny_llava_onevision(tmp_path_factory.mktemp("tiny-llava-ov"))


@pytest.mark.slow
def test_local_llava_onevision_checkpoint_runs_and_never_fails_open(tiny_llava: Path) -> None:
    from traceguard.testing.tiny_models import forced_output

    auditor = LlavaGuardAuditor.local(tiny_llava, max_new_tokens=10)
    try:
        traces = [
            Trace(query="", response="", images=(_png(),)),
            Trace(query="", response="", images=(_png(size=(20, 64)), _png((0, 0, 0)))),
        ]
        noisy = auditor.audit_batch(traces)
        # Random weights write noise that never ends within 10 tokens: a cut output is an
        # auditor error, never a verdict.
        assert [v.status for v in noisy] == [AuditStatus.AUDITOR_ERROR] * 2
        assert noisy[0].error is not None and "max_new_tokens=10" in noisy[0].error.message
        assert auditor.audit(traces[0]).error == noisy[0].error

        backend = auditor.backend
        tokenizer = backend.processor.tokenizer  # type: ignore[attr-defined]
        target = _answer("Unsafe", "O2", "x")
        ids = tokenizer(target, add_special_tokens=False)["input_ids"]
        eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
        rater = LlavaGuardAuditor(backend, max_new_tokens=len(ids) + 5)
        with forced_output(backend.model, ids, eos):  # type: ignore[attr-defined]
            forced = rater.audit_batch(traces)
        assert [v.risk for v in forced] == [1.0, 1.0]
        assert forced[0].categories == ("crime_and_illegal_activities",)
        assert forced[0].raw_output == target
    finally:
        auditor.close()
