"""The native HoliSafe head computes what the checkpoint's own code computes (issue 14 item 1).

Each test writes, into a tiny HoliSafe checkpoint, a ``trust_remote_code`` modelling module shaped
like the public SafeQwen2.5-VL / SafeGem classes (written here in our own words): the base model
plus the ``img_safety_head.mlp`` guard head, run on the prefill when ``do_safety=True``. SafeQwen
pools the language model's last hidden states over the image/video token positions of each row;
SafeGem pools the image features of the vision tower and projector, one row per image. The
native path and that module then classify the same images, and the twenty probabilities must
agree.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from traceguard import HoliSafeAuditor, ImageRef

pytest.importorskip("torch")

REMOTE_MODULE = '''
"""Stand-in for a HoliSafe checkpoint's own modelling code, for traceguard's tests."""

from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import nn
from transformers import Gemma3ForConditionalGeneration, Qwen2_5_VLForConditionalGeneration


class GuardHead(nn.Module):
    def __init__(self, width: int, config: Any) -> None:
        super().__init__()
        hidden = int(width * config.safety_head_hidden_scale)
        layers = [nn.Linear(width, hidden), nn.GELU(), nn.Dropout(0.1)]
        for _ in range(config.safety_num_hidden_layers - 1):
            layers += [nn.Linear(hidden, hidden), nn.GELU(), nn.Dropout(0.1)]
        layers.append(nn.Linear(hidden, len(config.safety_categories)))
        self.mlp = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(x)


def _with_probs(output: Any, logits: torch.Tensor) -> Any:
    output["img_safety_probs"] = torch.softmax(logits, dim=-1)
    return output


class GuardedQwen(Qwen2_5_VLForConditionalGeneration):
    """Pools the last hidden states over each row's image and video tokens."""

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        # The published code reads the width at the top level of the config.
        self.img_safety_head = GuardHead(config.hidden_size, config)

    def forward(self, do_safety: bool = True, **kwargs: Any) -> Any:
        wanted = do_safety and kwargs.get("pixel_values") is not None
        if wanted:
            kwargs["output_hidden_states"] = True
        output = super().forward(**kwargs)
        if not wanted:
            return output
        ids = kwargs["input_ids"]
        visual = (ids == self.config.image_token_id) | (ids == self.config.video_token_id)
        last = output.hidden_states[-1]
        rows = [last[row][visual[row]].mean(dim=0) for row in range(ids.shape[0])]
        return _with_probs(output, self.img_safety_head(torch.stack(rows)))


class GuardedGemma(Gemma3ForConditionalGeneration):
    """Pools the projected image features of each image."""

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self.img_safety_head = GuardHead(config.text_config.hidden_size, config)

    def forward(self, do_safety: bool = True, **kwargs: Any) -> Any:
        output = super().forward(**kwargs)
        if not do_safety or kwargs.get("pixel_values") is None:
            return output
        image_outputs = getattr(output, "image_outputs", None)
        features = (
            image_outputs.pooler_output
            if image_outputs is not None
            else output.image_hidden_states
        )
        return _with_probs(output, self.img_safety_head(features.mean(dim=1)))
'''

CLASS_OF = {"qwen2_5_vl": "GuardedQwen", "gemma3": "GuardedGemma"}
# The auto class each model card loads with: SafeQwen's AutoModelForVision2Seq, SafeGem's
# AutoModel.
AUTO_OF = {"qwen2_5_vl": "AutoModelForVision2Seq", "gemma3": "AutoModel"}
FAMILY_CLASS = {
    "qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration",
    "gemma3": "Gemma3ForConditionalGeneration",
}


def with_remote_code(folder: Path, base: str) -> Path:
    (folder / "modeling_guard.py").write_text(REMOTE_MODULE, encoding="utf-8")
    config_path = folder / "config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["auto_map"] = {AUTO_OF[base]: f"modeling_guard.{CLASS_OF[base]}"}
    config_path.write_text(json.dumps(config, indent=2), encoding="utf-8")
    return folder


def _png(color: tuple[int, int, int], size: tuple[int, int]) -> ImageRef:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return ImageRef.from_bytes(buffer.getvalue())


@pytest.fixture(scope="module", params=["qwen2_5_vl", "gemma3"])
def checkpoint(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[str, Path]:
    from traceguard.testing.tiny_models import build_tiny_holisafe

    base = str(request.param)
    folder = build_tiny_holisafe(tmp_path_factory.mktemp(f"ref-{base}"), base=base)  # type: ignore[arg-type]
    return base, with_remote_code(folder, base)


@pytest.mark.slow
def test_native_and_remote_code_give_the_same_twenty_probabilities(
    checkpoint: tuple[str, Path],
) -> None:
    base, folder = checkpoint
    images = [_png((200, 30, 30), (64, 64)), _png((10, 120, 240), (96, 48))]
    native = HoliSafeAuditor(folder, remote_code=False)
    remote = HoliSafeAuditor(folder, remote_code=True)
    try:
        ours = native.classify(images)
        theirs = remote.classify(images)
    finally:
        native.close()
        remote.close()
    for mine, reference in zip(ours, theirs, strict=True):
        assert not isinstance(mine, Exception), mine
        assert not isinstance(reference, Exception), reference
        assert len(mine.probabilities) == 20 == len(reference.probabilities)
        assert mine.labels == reference.labels
        worst = max(
            abs(a - b) for a, b in zip(mine.probabilities, reference.probabilities, strict=True)
        )
        assert worst < 1e-5, f"{base}: native and remote code differ by {worst}"
    # The two images must not score the same: the pooling really reads the image.
    assert ours[0].probabilities != ours[1].probabilities  # type: ignore[union-attr]


@pytest.mark.slow
def test_a_load_that_leaves_weights_random_fails_closed_on_both_paths(
    checkpoint: tuple[str, Path], tmp_path: Path
) -> None:
    # A weight the checkpoint lacks would be left at its random initialisation, silently (it
    # is what transformers 5 does to custom code on checkpoints in the older weight layout,
    # unless the stock renames are shared with it): an error on both paths, never scores.
    import shutil

    from safetensors.torch import load_file, save_file

    base, folder = checkpoint
    broken = tmp_path / "broken"
    shutil.copytree(folder, broken)
    weights = load_file(str(broken / "model.safetensors"))
    dropped = next(k for k in weights if "layers.0" in k and "q_proj.weight" in k)
    del weights[dropped]
    save_file(weights, str(broken / "model.safetensors"), metadata={"format": "pt"})
    image = [_png((200, 30, 30), (64, 64))]
    for remote in (False, True):
        (failed,) = HoliSafeAuditor(broken, remote_code=remote).classify(image)
        assert isinstance(failed, Exception), (base, remote)
        assert "weights missing" in str(failed)


def test_no_remote_code_in_the_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    from traceguard.testing.tiny_models import build_tiny_holisafe

    folder = build_tiny_holisafe(tmp_path / "plain")
    (failed,) = HoliSafeAuditor(folder, remote_code=True).classify([_png((1, 2, 3), (32, 32))])
    assert isinstance(failed, Exception)
    assert "ships no remote code" in str(failed)


@pytest.mark.slow
def test_gemma_requests_carry_token_type_ids_and_qwen_requests_none(
    checkpoint: tuple[str, Path],
) -> None:
    # Gemma-3 attends bidirectionally inside each image only when token_type_ids are passed;
    # dropping them changes every generated answer of SafeGem.
    from traceguard.backends.holisafe_head import HoliSafeHead

    base, folder = checkpoint
    head = HoliSafeHead(folder)
    try:
        rt = head._runtime.get()
        image = [_png((5, 5, 5), (32, 32))]
        inputs = head._encode(rt, [head._messages(image, "q")], [image])
    finally:
        head.close()
    if base == "gemma3":
        types = inputs["token_type_ids"]
        assert int(types.sum()) == int((inputs["input_ids"] == rt.image_token_ids[0]).sum()) > 0
    else:
        assert "token_type_ids" not in inputs
