"""Reading a HoliSafe checkpoint: its folder, config, labels, and the guard head's weights.

The native head is rebuilt from the checkpoint's safetensors. Expected weight names (any prefix
before them is accepted, e.g. ``model.``)::

    img_safety_head.mlp.0.weight   [hidden/2, hidden]     first Linear
    img_safety_head.mlp.0.bias     [hidden/2]
    img_safety_head.mlp.3.weight   [n_classes, hidden/2]  output Linear (GELU, Dropout between)
    img_safety_head.mlp.3.bias     [n_classes]

(more hidden layers continue at indices 3, 6, …; the last Linear is the output). A checkpoint
without them fails with a :class:`~traceguard.ConfigurationError` naming what is missing.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from traceguard._exceptions import ConfigurationError
from traceguard.taxonomy import HOLISAFE_CATEGORIES, holisafe_key

__all__ = [
    "HEAD_WEIGHT_PATTERN",
    "family_of",
    "hidden_size",
    "image_token_ids",
    "load_head",
    "class_count",
    "read_json",
    "resolve_folder",
    "safe_index",
    "safety_labels",
]

HEAD_WEIGHT_PATTERN = re.compile(r"(?:^|\.)img_safety_head\.mlp\.(\d+)\.(weight|bias)$")
"""Names of the guard head's weights in a HoliSafe checkpoint (group 1: module index)."""


def resolve_folder(model: str) -> Path:
    local = Path(model)
    if local.is_dir():
        return local
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(model))
    except Exception as exc:
        raise ConfigurationError(f"cannot find checkpoint {model!r}: {exc}") from exc


def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigurationError(f"cannot read {str(path)!r}: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigurationError(f"{str(path)!r} is not a JSON object")
    return data


def family_of(config: dict[str, Any]) -> str:
    names = [str(config.get("model_type", ""))] + [str(a) for a in config.get("architectures", [])]
    text = " ".join(names).lower()
    if "qwen2_5_vl" in text or "qwen2.5" in text or "safeqwen" in text:
        return "qwen2_5_vl"
    if "gemma3" in text or "safegem" in text:
        return "gemma3"
    raise ConfigurationError(
        f"cannot tell the base architecture from model_type/architectures {names}; "
        "pass base='qwen2_5_vl' or base='gemma3'"
    )


def hidden_size(config: Any) -> int:
    text = getattr(config, "text_config", None)
    size = getattr(text, "hidden_size", None) or getattr(config, "hidden_size", None)
    if not size:
        raise ConfigurationError("the model config has no hidden_size")
    return int(size)


def _weight_files(folder: Path) -> list[Path]:
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        weight_map = read_json(index).get("weight_map", {})
        names = {file for key, file in weight_map.items() if HEAD_WEIGHT_PATTERN.search(str(key))}
        return [folder / name for name in sorted(names)]
    return sorted(folder.glob("*.safetensors"))


def load_head(torch: Any, folder: Path, hidden_size: int) -> Any:
    """Rebuild the guard head MLP from the checkpoint's safetensors."""
    from safetensors import safe_open

    found: dict[int, dict[str, Any]] = {}
    for file in _weight_files(folder):
        with safe_open(str(file), framework="pt") as handle:
            for key in handle.keys():
                match = HEAD_WEIGHT_PATTERN.search(key)
                if match:
                    found.setdefault(int(match.group(1)), {})[match.group(2)] = handle.get_tensor(
                        key
                    )
    if not found:
        raise ConfigurationError(
            f"{str(folder)!r} has no guard head weights: expected img_safety_head.mlp.0.weight, "
            "img_safety_head.mlp.0.bias, …, img_safety_head.mlp.<last>.weight/bias in its "
            "safetensors. Is this a HoliSafe (SafeQwen2.5-VL / SafeGem) checkpoint?"
        )
    layers: list[Any] = []
    width = hidden_size
    indices = sorted(found)
    for position, index in enumerate(indices):
        params = found[index]
        if "weight" not in params or "bias" not in params:
            missing = "weight" if "weight" not in params else "bias"
            raise ConfigurationError(
                f"guard head weight img_safety_head.mlp.{index}.{missing} is missing"
            )
        weight, bias = params["weight"], params["bias"]
        if weight.ndim != 2 or weight.shape[1] != width or bias.shape != (weight.shape[0],):
            raise ConfigurationError(
                f"guard head layer {index} has shape {tuple(weight.shape)}, expected [*, {width}]"
            )
        linear = torch.nn.Linear(width, weight.shape[0])
        with torch.no_grad():
            linear.weight.copy_(weight)
            linear.bias.copy_(bias)
        layers.append(linear)
        if position < len(indices) - 1:
            layers.append(torch.nn.GELU())
        width = weight.shape[0]
    return torch.nn.Sequential(*layers).eval()


def class_count(head: Any | None, config: dict[str, Any]) -> int:
    if head is not None:
        return int(head[-1].out_features)
    declared = config.get("num_safety_categories") or len(config.get("safety_categories") or ())
    return int(declared or len(HOLISAFE_CATEGORIES))


def safety_labels(config: dict[str, Any], n_classes: int) -> tuple[str, ...]:
    labels = config.get("safety_categories")
    if labels is None:
        if n_classes != len(HOLISAFE_CATEGORIES):
            raise ConfigurationError(
                f"config.json has no safety_categories and the head has {n_classes} outputs"
            )
        return HOLISAFE_CATEGORIES
    if not isinstance(labels, list) or len(labels) != n_classes:
        raise ConfigurationError(
            f"config.safety_categories names {len(labels) if isinstance(labels, list) else '?'} "
            f"classes, the head has {n_classes}"
        )
    return tuple(str(label) for label in labels)


def safe_index(labels: tuple[str, ...]) -> int:
    for index, label in enumerate(labels):
        if holisafe_key(label) == "safe":
            return index
    raise ConfigurationError(f"no 'safe' class among the safety categories {labels}")


def image_token_ids(config: Any) -> tuple[int, ...]:
    ids = []
    for key in ("image_token_id", "image_token_index", "video_token_id"):
        value = getattr(config, key, None)
        if isinstance(value, int):
            ids.append(value)
    if not ids:
        raise ConfigurationError("the model config names no image token id")
    return tuple(dict.fromkeys(ids))
