"""HoliSafe guard head: grading, native head on tiny Qwen2.5-VL and Gemma-3, remote-code fixes."""

from __future__ import annotations

import io
import json
import math
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
from PIL import Image

from traceguard import AuditStatus, ConfigurationError, ImageAccess, ImageRef, Policy, Trace
from traceguard.auditors.holisafe import (
    HoliSafeAuditor,
    SafetyScores,
    fix_remote_config,
    scores_to_verdict,
)
from traceguard.taxonomy import HOLISAFE_CATEGORIES

pytest.importorskip("torch")


def _png(color: tuple[int, int, int] = (200, 30, 30), size: tuple[int, int] = (40, 30)) -> ImageRef:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return ImageRef.from_bytes(buffer.getvalue())


def _scores(p_safe: float, top: str = "terrorism") -> SafetyScores:
    probs = [0.0] * 20
    probs[0] = p_safe
    rest = 1.0 - p_safe
    probs[HOLISAFE_CATEGORIES.index(top)] = rest * 0.7
    probs[HOLISAFE_CATEGORIES.index("suicide")] += rest * 0.3
    return SafetyScores(labels=HOLISAFE_CATEGORIES, probabilities=tuple(probs), safe_index=0)


@pytest.mark.parametrize(
    ("p_safe", "risk", "categories"),
    [
        (0.95, 0.0, ()),
        (0.7, 0.5, ("extremism",)),
        (0.5, 1.0, ("extremism",)),
        (0.0, 1.0, ("extremism",)),
    ],
)
def test_grading_rule(p_safe: float, risk: float, categories: tuple[str, ...]) -> None:
    verdict = scores_to_verdict(
        _scores(p_safe), auditor="h", unsafe_threshold=0.5, potential_threshold=0.2
    )
    assert (verdict.risk, verdict.categories) == (risk, categories)
    assert verdict.details["top_category"] == "terrorism"
    assert math.isclose(verdict.details["unsafe_score"], 1.0 - p_safe)
    assert len(verdict.details["probabilities"]) == 20
    assert verdict.probabilities is not None
    assert math.isclose(verdict.probabilities["1"], 1.0 - p_safe)


def test_a_policy_with_thresholds_regrades_from_the_unsafe_score() -> None:
    verdict = scores_to_verdict(
        _scores(0.75), auditor="h", unsafe_threshold=0.5, potential_threshold=0.2
    )
    strict = Policy.model_validate({"thresholds": {"harmful": 0.2, "potentially_harmful": 0.1}})
    assert verdict.risk == 0.5
    assert strict.decide(verdict, Trace(query="q", response="r")).action.value == "block"


def test_remote_config_fix_copies_text_dimensions_up() -> None:
    config = SimpleNamespace(text_config=SimpleNamespace(hidden_size=3584, vocab_size=10))
    assert fix_remote_config(config) == ["hidden_size", "vocab_size"]
    assert config.hidden_size == 3584
    # Already at top level: left alone.
    flat = SimpleNamespace(hidden_size=8, text_config=SimpleNamespace(hidden_size=16))
    assert fix_remote_config(flat) == [] and flat.hidden_size == 8
    assert fix_remote_config(SimpleNamespace()) == []


def test_remote_config_fix_on_a_real_nested_config() -> None:
    import transformers

    config = transformers.Gemma3Config(text_config={"hidden_size": 96})
    fix_remote_config(config)
    assert config.hidden_size == 96


@pytest.mark.parametrize(
    "kwargs",
    [
        {"unsafe_threshold": 0.2, "potential_threshold": 0.5},
        {"potential_threshold": 0.0},
        {"base": "llama"},
        {"no_image": "allow"},
        {"batch_size": 0},
        {"dtype": "int4"},
    ],
)
def test_bad_options(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigurationError):
        HoliSafeAuditor("x", **kwargs)  # type: ignore[arg-type]


# -- tiny checkpoints ---------------------------------------------------------------------------


@pytest.fixture(scope="module", params=["qwen2_5_vl", "gemma3"])
def tiny_holisafe(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from traceguard.testing.tiny_models import build_tiny_holisafe

    return build_tiny_holisafe(tmp_path_factory.mktemp(request.param), base=request.param)


@pytest.fixture(scope="module")
def auditor(tiny_holisafe: Path) -> HoliSafeAuditor:
    auditor = HoliSafeAuditor(tiny_holisafe, unsafe_threshold=0.999, potential_threshold=0.001)
    auditor.load()
    return auditor


@pytest.mark.slow
def test_native_head_classifies_each_image_and_batches_consistently(
    auditor: HoliSafeAuditor,
) -> None:
    red, wide = _png(), _png((0, 90, 0), (64, 20))
    traces = [
        Trace(query="q", response="r", images=(red,)),
        Trace(query="q", response="r", images=(red, wide)),
        Trace(query="q", response="r"),
    ]
    single, double, empty = auditor.audit_batch(traces)
    assert single.status is AuditStatus.OK and single.risk in (0.0, 0.5, 1.0)
    probs = single.details["probabilities"]
    assert list(probs) == list(HOLISAFE_CATEGORIES)
    assert math.isclose(sum(probs.values()), 1.0, rel_tol=1e-5)
    assert single.details["image"].startswith("ImageRef(")
    assert double.details["images"] == 2 and len(double.details["per_image"]) == 2
    assert empty.details == {"images": 0}
    alone = auditor.audit(Trace(query="other text", response="", images=(red,)))
    assert math.isclose(alone.details["unsafe_score"], single.details["unsafe_score"], rel_tol=1e-4)
    second = double.details["per_image"][1]["details"]["unsafe_score"]
    wide_alone = auditor.classify([wide.load(ImageAccess())])[0]
    assert not isinstance(wide_alone, Exception)
    assert math.isclose(wide_alone.unsafe_score, second, rel_tol=1e-4)


@pytest.mark.slow
def test_classification_and_generation_in_one_call(auditor: HoliSafeAuditor) -> None:
    image = _png()
    result = auditor.classify_and_generate("What is this?", [image], max_new_tokens=4)
    assert result.verdict.status is AuditStatus.OK
    assert isinstance(result.response, str)
    (alone,) = auditor.classify([image.load(ImageAccess())])
    assert not isinstance(alone, Exception)
    assert math.isclose(result.verdict.details["unsafe_score"], alone.unsafe_score, rel_tol=1e-4)
    none = auditor.classify_and_generate("q", [])
    assert none.response is None and none.verdict.details == {"images": 0}


@pytest.mark.slow
def test_missing_head_weights_fail_clearly_and_never_safe(
    tiny_holisafe: Path, tmp_path: Path
) -> None:
    import torch
    from safetensors.torch import load_file, save_file

    copy = Path(shutil.copytree(tiny_holisafe, tmp_path / "nohead"))
    weights = load_file(str(copy / "model.safetensors"))
    save_file(
        {k: v for k, v in weights.items() if "img_safety_head" not in k},
        str(copy / "model.safetensors"),
        metadata={"format": "pt"},
    )
    broken = HoliSafeAuditor(copy)
    with pytest.raises(ConfigurationError, match=r"img_safety_head\.mlp\.0\.weight"):
        broken.load()
    verdict = broken.audit(Trace(query="q", response="r", images=(_png(),)))
    assert verdict.status is AuditStatus.AUDITOR_ERROR and verdict.risk is None
    result = broken.classify_and_generate("q", [_png()])
    assert result.verdict.status is AuditStatus.AUDITOR_ERROR and result.response is None
    assert torch.is_tensor(next(iter(weights.values())))


@pytest.mark.slow
def test_label_spellings_come_from_the_config(tmp_path: Path) -> None:
    from traceguard.testing.tiny_models import build_tiny_holisafe

    labels = ["Safe", "gender", *HOLISAFE_CATEGORIES[2:]]
    path = build_tiny_holisafe(tmp_path / "variant", categories=labels, head_hidden_layers=2)
    auditor = HoliSafeAuditor(path, unsafe_threshold=0.001, potential_threshold=0.001)
    assert auditor.labels == tuple(labels)
    verdict = auditor.audit(Trace(query="q", response="r", images=(_png(),)))
    assert verdict.risk == 1.0 and len(verdict.categories) == 1
    config = json.loads((path / "config.json").read_text())
    config["safety_categories"] = labels[:5]
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigurationError, match="classes"):
        HoliSafeAuditor(path).load()


@pytest.mark.slow
def test_remote_code_path_applies_the_fixes_and_fails_closed(tiny_holisafe: Path) -> None:
    import transformers

    auditor = HoliSafeAuditor(tiny_holisafe, remote_code=True)
    # The tiny checkpoint ships no remote code: loading fails, and the verdict is an error.
    verdict = auditor.audit(Trace(query="q", response="r", images=(_png(),)))
    assert verdict.status is AuditStatus.AUDITOR_ERROR
    assert transformers.AutoModelForVision2Seq is transformers.AutoModelForImageTextToText


def test_invalid_images_are_invalid_input(tmp_path: Path) -> None:
    auditor = HoliSafeAuditor(tmp_path, image_access=ImageAccess(root=tmp_path))
    verdict = auditor.audit(
        Trace(query="", response="", images=(ImageRef.from_path("/etc/hostname"),))
    )
    assert verdict.status is AuditStatus.INVALID_INPUT
    strict = HoliSafeAuditor(tmp_path, no_image="invalid_input")
    assert strict.audit(Trace(query="", response="")).status is AuditStatus.INVALID_INPUT
